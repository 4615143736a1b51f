"""The fast paths of ``prepare_requests`` give the same bytes as the plain stdlib path.

Common lines are decoded from bytes by msgspec and duplicate ids across chunks are found by
in-memory fingerprints; the reference is the same function with every line sent through the
stdlib path and every fingerprint colliding, so every duplicate check is answered by the exact
SQLite table. Shards, ``order.txt``, ``rejects.jsonl``, ``requests.idx`` and the result must match
byte for byte on a corpus of common and odd lines.
"""

from __future__ import annotations

import builtins
import gc
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prepare_corpus import write_corpus

from openai_batch import prepare as prepare_module
from openai_batch.limits import BatchLimits
from openai_batch.prepare import prepare_requests

PREFIX = "corpus-0000"


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return write_corpus(30000, prefix=PREFIX)


def _prepare(data: bytes, work: Path, **kwargs: Any) -> dict[str, bytes]:
    """Prepare ``data`` fed in uneven pieces; return every output file and the result, by name."""
    pieces = [data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003)]
    result = prepare_requests(
        iter(pieces), source_name="corpus.jsonl", work_dir=work, id_prefix=PREFIX, **kwargs
    )
    files = {p.name: p.read_bytes() for p in sorted(work.iterdir())}
    files["result"] = json.dumps(result.to_dict()).replace(str(work), "WORK").encode()
    return files


def _stdlib_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: bytes) -> Any:
        raise ValueError("reference run: stdlib path only")

    monkeypatch.setattr(prepare_module, "_FAST_DECODE", refuse)
    # 256 hash values with the same fingerprint: every id after the first few is a candidate.
    monkeypatch.setattr(prepare_module, "hash", lambda value: builtins.hash(value) & 0xFF, raising=False)


@pytest.fixture(params=["c-table", "python-buckets"])
def fingerprint_table(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each keeper of the fingerprints: the C table (``native/``) and the Python buckets."""
    if request.param == "python-buckets":
        monkeypatch.setattr(prepare_module, "_NATIVE_FINGERPRINTS", None)
    else:
        request.getfixturevalue("native_fingerprints")  # built, or the test fails in CI (skips elsewhere)
    return str(request.param)


SETTINGS = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"limits": BatchLimits(max_requests=777, max_bytes=400_000, max_request_bytes=3_000)},
        id="small-limits",
    ),
    pytest.param({"model": "gpt-x"}, id="model-override"),
    pytest.param({"endpoint": "/v1/embeddings"}, id="embeddings-default-endpoint"),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_fast_paths_write_the_same_bytes_as_the_stdlib_path(
    corpus: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
    fingerprint_table: str,
) -> None:
    fast = _prepare(corpus, tmp_path / "fast", **settings)
    with monkeypatch.context() as patch:
        _stdlib_only(patch)
        reference = _prepare(corpus, tmp_path / "reference", **settings)
    assert sorted(fast) == sorted(reference)
    for name in reference:
        assert fast[name] == reference[name], name
    assert not any(name.startswith(".seen") for name in fast)  # scratch files are removed


def test_the_corpus_reaches_every_kind_of_outcome(corpus: bytes, tmp_path: Path) -> None:
    files = _prepare(corpus, tmp_path / "work")
    reasons = Counter(
        json.loads(line)["reason"].split(" (")[0].split(":")[0]
        for line in files["rejects.jsonl"].splitlines()
    )
    for expected in (
        "invalid JSON",
        "not valid UTF-8",
        "duplicate custom_id 'req-",
        "generated custom_id 'corpus-0000-",
        "custom_id contains a lone surrogate",
        "custom_id contains a NUL character",
        "body.stream is true; the Batch API does not support streaming",
        "body.messages must be a non-empty list",
        "expected a JSON object, got an array",
    ):
        assert any(reason.startswith(expected) for reason in reasons), expected
    rejects = files["rejects.jsonl"].decode()
    assert "Exceeds the limit" in rejects  # an integer above int()'s digit limit
    assert '"line": 1,' not in rejects  # the byte order mark of line 1 is dropped
    order = files["order.txt"].decode().splitlines()
    assert '"odd-\\u00e9997-"' in order
    assert '"odd-997-caf\\u00e9"' in order
    assert '"odd-997-big"' in order
    assert '"odd-997-dupkey"' in order
    assert '"shadowed"' not in order


def test_most_lines_take_the_fast_path_and_a_file_without_duplicates_needs_no_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fingerprint_table: str
) -> None:
    calls = Counter[str]()
    feed, build = prepare_module._Preparer.feed, prepare_module._SeenIds._build

    def counting_feed(self: Any, line_no: int, raw: bytes) -> None:
        calls["feed"] += 1
        feed(self, line_no, raw)

    def counting_build(self: Any) -> Any:
        calls["build"] += 1
        return build(self)

    monkeypatch.setattr(prepare_module._Preparer, "feed", counting_feed)
    monkeypatch.setattr(prepare_module._SeenIds, "_build", counting_build)
    lines = [
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        if i % 3
        else json.dumps(body)
        for i in range(20000)
        for body in [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}]
    ]
    data = "\r\n".join(lines).encode()
    result = prepare_requests([data], source_name="a.jsonl", work_dir=tmp_path / "a")
    assert (result.valid, result.rejected) == (20000, 0)
    assert calls == {"feed": 2}  # line 1 and the last line without a line break
    data += b"\n" + lines[1].encode() + b"\n"  # r1 again, in a later chunk
    result = prepare_requests([data], source_name="a.jsonl", work_dir=tmp_path / "b")
    assert (result.valid, result.rejected) == (20000, 1)
    assert calls["build"] == 1
    reject = json.loads(Path(result.rejects_path).read_text())
    assert reject["line"] == 20001
    assert reject["reason"] == "duplicate custom_id 'r1' (first seen on line 2)"


@pytest.mark.parametrize("collide", [False, True], ids=["fingerprints", "all-fingerprints-collide"])
def test_duplicates_across_chunks_match_a_plain_first_seen_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collide: bool, fingerprint_table: str
) -> None:
    if collide:
        monkeypatch.setattr(prepare_module, "hash", lambda value: builtins.hash(value) & 0xFF, raising=False)
    # Each id at most once per chunk of lines, so every duplicate is found across chunks. (A repeat
    # within a chunk cites the line of the chunk's first one, even when that one repeats an earlier
    # chunk's: a long-standing wording, left as it is.)
    rng = random.Random(5)
    chunk = prepare_module._FLUSH_LINES
    ids = [f"id-{n}" for _ in range(4) for n in rng.sample(range(12000), chunk)][:30000]
    body = {"model": "gpt-4o-mini", "messages": [1]}
    data = "".join(
        json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
        for cid in ids
    ).encode()
    result = prepare_requests([data], source_name="a.jsonl", work_dir=tmp_path / "work")
    first: dict[str, int] = {}
    expected = []
    for line, cid in enumerate(ids, start=1):
        if cid in first:
            expected.append(
                {"line": line, "reason": f"duplicate custom_id '{cid}' (first seen on line {first[cid]})"}
            )
        else:
            first[cid] = line
    rejects = [
        {k: r[k] for k in ("line", "reason")} for r in map(json.loads, Path(result.rejects_path).open())
    ]
    assert rejects == expected
    assert Path(result.order_path).read_text().split() == [json.dumps(cid) for cid in first]


def test_the_cyclic_collector_is_paused_only_during_the_pass(tmp_path: Path) -> None:
    seen: list[bool] = []

    def lines() -> Any:
        yield b'{"model":"gpt-4o-mini","messages":[1]}\n'
        seen.append(gc.isenabled())
        raise OSError("read failed")

    assert gc.isenabled()
    with pytest.raises(OSError, match="read failed"):
        prepare_requests(lines(), source_name="a.jsonl", work_dir=tmp_path / "a")
    assert seen == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        prepare_requests(
            [b'{"model":"gpt-4o-mini","messages":[1]}\n'], source_name="a.jsonl", work_dir=tmp_path / "b"
        )
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
