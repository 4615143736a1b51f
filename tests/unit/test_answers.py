"""The opt-in answer cache: keys by content, storage, recovery, and its place in claiming."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.answers import AnswerCache, answer_key, reuse_identical

if TYPE_CHECKING:
    from pathlib import Path


def _line(custom_id: str, content: str, **extra: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


def test_the_variable_takes_true_and_false_and_names_itself_otherwise() -> None:
    assert [reuse_identical(v) for v in ("true", "True", "1", " yes ", "on", True)] == [True] * 6
    assert [reuse_identical(v) for v in ("", None, "false", "0", "no", "off", False)] == [False] * 7
    with pytest.raises(ValueError, match="openai_batch_reuse_identical"):
        reuse_identical("maybe")


def test_the_key_is_the_request_without_its_custom_id() -> None:
    a = _line("a-1", "hello")
    reordered = json.dumps(
        {
            "body": {"messages": [{"content": "hello", "role": "user"}], "model": "gpt-4o-mini"},
            "url": "/v1/chat/completions",
            "method": "POST",
            "custom_id": "other",
        }
    ).encode()
    assert answer_key(a) == answer_key(_line("b-9", "hello")) == answer_key(reordered)
    assert answer_key(a) != answer_key(_line("a-1", "hello!"))
    assert answer_key(a) != answer_key(_line("a-1", "hello", temperature=0))
    other_url = a.replace(b"/v1/chat/completions", b"/v1/responses")
    assert answer_key(a) != answer_key(other_url)


def test_store_keeps_the_first_answer_and_lookup_returns_only_stored_keys(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "answers.sqlite")
    k1, k2 = answer_key(_line("x", "1")), answer_key(_line("x", "2"))
    assert cache.store([(k1, b'{"id":"first"}', "batch_a", "s#x")]) == 1
    assert cache.store([(k1, b'{"id":"second"}', "batch_b", "s#y")]) == 0
    found = cache.lookup([k1, k2])
    assert list(found) == [k1]
    assert found[k1].response == b'{"id":"first"}'
    assert found[k1].batch_id == "batch_a"


def test_an_unreadable_cache_is_set_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    path.write_bytes(b"this is not a database, a torn write left it" * 100)
    cache = AnswerCache(path)
    key = answer_key(_line("x", "1"))
    assert cache.lookup([key]) == {}
    assert cache.set_aside is not None
    assert cache.set_aside.exists()
    assert cache.set_aside.read_bytes().startswith(b"this is not a database")
    assert cache.store([(key, b"{}", "batch_a", "s#x")]) == 1


def _shard_files(tmp_path: Path, lines: list[bytes]) -> tuple[list[Any], Path]:
    from openai_batch.prepare import Shard

    work = tmp_path / "work"
    work.mkdir(parents=True)
    path = work / "shard-00000.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    shard = Shard(0, "/v1/chat/completions", "gpt-4o-mini", str(path))
    shard.requests = len(lines)
    return [shard], work


def test_claiming_takes_cached_requests_out_without_claiming_them(tmp_path: Path) -> None:
    from openai_batch.claims import claim_shards
    from openai_batch.records import RequestRecord
    from openai_batch.reuse import request_digest

    cache = AnswerCache(tmp_path / "ledger" / "answers.sqlite")
    cache.store(
        [(answer_key(_line("old-7", "known")), b'{"id":"chatcmpl-old","n":1}', "batch_old", "s#old-7")]
    )
    lines = [_line("new-1", "known"), _line("new-2", "unknown")]
    shards, work = _shard_files(tmp_path, lines)
    record = RequestRecord(tmp_path / "ledger" / "requests.sqlite")

    outcome = claim_shards(record, "owner-a", shards, work, cache=cache)

    assert outcome.cached == 1
    assert outcome.requests(shards[0]) == 1
    assert (work / "shard-00000.jsonl").read_bytes() == lines[1] + b"\n"
    (cached,) = [json.loads(x) for x in (work / "cached.jsonl").read_bytes().splitlines()]
    assert cached == {
        "custom_id": "new-1",
        "status": "succeeded",
        "response": {"id": "chatcmpl-old", "n": 1},
        "error": None,
        "batch_id": "batch_old",
    }
    # The cached request is not in the record: no other run waits on this owner for it.
    entries = record.entries([request_digest(line) for line in lines])
    assert sorted(e.custom_id for e in entries.values()) == ["new-2"]

    # force sends everything again: the cache is not consulted.
    shards, work = _shard_files(tmp_path / "forced", lines)
    forced = claim_shards(record, "owner-b", shards, work, force=True, cache=cache)
    assert forced.cached == 0
    assert forced.requests(shards[0]) == 2
    assert (work / "cached.jsonl").read_bytes() == b""


def test_only_answers_to_ids_sent_once_in_the_round_are_stored(tmp_path: Path) -> None:
    from openai_batch.claims import store_round_answers
    from openai_batch.state import Round
    from openai_batch.storage import to_path

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    sent = [_line("ok", "a"), _line("dup", "b"), _line("bad", "c"), _line("silent", "d")]
    (state_dir / "shard-00000.jsonl").write_bytes(b"".join(x + b"\n" for x in sent))

    def out(custom_id: str, status: int, body: dict[str, Any]) -> str:
        return json.dumps(
            {"id": "r", "custom_id": custom_id, "response": {"status_code": status, "body": body}}
        )

    output = [
        out("ok", 200, {"id": "good"}),
        out("dup", 200, {"id": "dup-1"}),
        out("dup", 200, {"id": "dup-2"}),  # answered twice: neither is trusted
        out("bad", 400, {"error": {"message": "no"}}),  # a failure is no answer to cache
        out("foreign", 200, {"id": "not-sent"}),  # an id never sent
        "not json",
    ]
    (state_dir / "batches").mkdir()
    (state_dir / "batches" / "batch_1.output.jsonl").write_text("\n".join(output) + "\n")
    rnd = Round(round=0, file="shard-00000.jsonl", requests=4, batch_id="batch_1", output_file_id="file-out")
    cache = AnswerCache(tmp_path / "answers.sqlite")

    assert store_round_answers(cache, "owner", to_path(str(state_dir)), rnd) == 1
    keys = [answer_key(x) for x in sent] + [answer_key(_line("foreign", "x"))]
    found = cache.lookup(keys)
    assert list(found) == [answer_key(sent[0])]
    assert json.loads(found[answer_key(sent[0])].response) == {"id": "good"}
