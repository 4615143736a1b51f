"""Unchanged requests of a file that comes back changed are not sent again, with older indexes too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openai_batch.prepare import prepare_requests
from openai_batch.reuse import ReuseIndex, legacy_request_digest, request_digest

CHAT = "/v1/chat/completions"


def _line(custom_id: str, text: str) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}).encode()


def _results(order: Path) -> list[bytes]:
    return [
        json.dumps({"custom_id": json.loads(cid), "status": "succeeded", "response": {"n": n}}).encode()
        + b"\n"
        for n, cid in enumerate(order.read_text().splitlines())
    ]


@pytest.mark.parametrize("legacy", [False, True], ids=["sha256-index", "older-blake2b-index"])
def test_unchanged_requests_are_reused_and_changed_ones_sent(tmp_path: Path, legacy: bool) -> None:
    first = [_line(f"r{i}", f"question {i}") for i in range(20000)]
    earlier = prepare_requests([b"\n".join(first) + b"\n"], source_name="a.jsonl", work_dir=tmp_path / "a")
    index = tmp_path / "a" / "requests.idx"
    digests = index.read_text().split()
    assert digests[:2] == [request_digest(first[0]), request_digest(first[1])]
    if legacy:  # the index as prepared before SHA-256
        index.write_text("".join(legacy_request_digest(line) + "\n" for line in first))
    second = [*first, _line("r20000", "new")]
    second[7] = _line("r7", "changed")
    reuse = ReuseIndex(tmp_path / "reuse.sqlite")
    try:
        assert reuse.load(index.read_bytes().splitlines(), _results(Path(earlier.order_path))) == 20000
        result = prepare_requests(
            [b"\n".join(second) + b"\n"], source_name="a.jsonl", work_dir=tmp_path / "b", reuse=reuse
        )
    finally:
        reuse.close()
    assert (result.valid, result.reused) == (20001, 19999)
    sent = [line for shard in result.shards for line in Path(shard.path).read_bytes().splitlines()]
    assert sent == [second[7], second[20000]]
    reused = [
        json.loads(line)["custom_id"] for line in (tmp_path / "b" / "reused.jsonl").read_bytes().splitlines()
    ]
    assert reused == [f"r{i}" for i in range(20000) if i != 7]
    new_index = (tmp_path / "b" / "requests.idx").read_text().split()
    assert new_index == [request_digest(line) for line in second]
