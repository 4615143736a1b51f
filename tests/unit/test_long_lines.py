"""A line above the per-request limit is rejected without ever being held whole in memory."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from typing import TYPE_CHECKING

from openai_batch.limits import DEFAULT_LIMITS, BatchLimits
from openai_batch.prepare import RAW_HEAD_BYTES, prepare_requests

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def chat_line(custom_id: str, text: str) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


def long_input(size: int, piece: int = 1 << 20, *, crlf: bool = False) -> Iterator[bytes]:
    """Yield a good line, a line of ``size`` bytes (not counting its line ending), a good line."""
    yield chat_line("before", "hi")
    yield b'{"custom_id": "huge", "body": "'
    left = size - len(b'{"custom_id": "huge", "body": "') - 2
    while left > 0:
        n = min(piece, left)
        yield b"x" * n
        left -= n
    yield b'"}' + (b"\r\n" if crlf else b"\n")
    yield chat_line("after", "there")


def rejects_of(work: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (work / "rejects.jsonl").read_text().splitlines()]


def accepted_ids(work: Path) -> list[str]:
    return [json.loads(line) for line in (work / "order.txt").read_text().splitlines()]


def test_a_line_above_the_limit_gives_one_bounded_reject_and_the_next_lines_go(tmp_path: Path) -> None:
    limits = BatchLimits(max_request_bytes=50_000)
    size = 3_000_000
    source = long_input(size, 7_001)
    result = prepare_requests(source, source_name="a.jsonl", work_dir=tmp_path, limits=limits)

    [reject] = rejects_of(tmp_path)
    assert reject["line"] == 2
    assert f"request is {size} bytes" in str(reject["reason"])
    assert reject["raw_truncated"] is True
    assert isinstance(reject["raw"], str)
    assert len(reject["raw"]) == RAW_HEAD_BYTES
    assert reject["raw"].startswith('{"custom_id": "huge"')
    assert accepted_ids(tmp_path) == ["before", "after"]
    assert (result.lines, result.valid, result.rejected) == (3, 2, 1)
    # The digest is of every byte, the dropped ones too.
    assert result.input_sha256 == hashlib.sha256(b"".join(long_input(size, 7_001))).hexdigest()


def test_a_crlf_line_above_the_limit_counts_its_request_bytes_only(tmp_path: Path) -> None:
    limits = BatchLimits(max_request_bytes=50_000)
    prepare_requests(long_input(200_000, crlf=True), source_name="a.jsonl", work_dir=tmp_path, limits=limits)
    [reject] = rejects_of(tmp_path)
    assert "request is 200000 bytes" in str(reject["reason"])


def test_a_line_just_above_the_limit_in_one_block_is_bounded_too(tmp_path: Path) -> None:
    limits = BatchLimits(max_request_bytes=50_000)
    data = b"".join(long_input(50_001))
    prepare_requests([data], source_name="a.jsonl", work_dir=tmp_path, limits=limits)
    [reject] = rejects_of(tmp_path)
    assert reject["line"] == 2
    assert "request is 50001 bytes" in str(reject["reason"])
    assert reject["raw_truncated"] is True
    assert len(str(reject["raw"])) == RAW_HEAD_BYTES
    assert accepted_ids(tmp_path) == ["before", "after"]


def test_memory_stays_bounded_for_a_200_mb_line(tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    tracemalloc.start()
    try:
        result = prepare_requests(long_input(size), source_name="a.jsonl", work_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.rejected == 1
    assert accepted_ids(tmp_path) == ["before", "after"]
    # The limit (10 MiB) and a few read blocks, far below the line's 200 MiB.
    assert peak < 4 * DEFAULT_LIMITS.max_request_bytes, peak
    assert (tmp_path / "rejects.jsonl").stat().st_size < 2 * RAW_HEAD_BYTES
