"""A request file's digests: computed once, kept beside the file, trusted only while they match it."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from openai_batch import claims
from openai_batch.layout import digests_file


def _line(i: int) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
    line = {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode()


def _write(path: Path, ids: list[int]) -> dict[str, str]:
    path.write_bytes(b"".join(_line(i) + b"\n" for i in ids))
    return {f"c-{i}": hashlib.sha256(_line(i)).hexdigest() for i in ids}


def _no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(line: bytes) -> str:
        raise AssertionError("the request file was hashed line by line again")

    monkeypatch.setattr(claims, "request_digest", refuse)


def test_digests_are_kept_beside_the_file_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _write(tmp_path / "shard-00000.jsonl", [0, 1, 2])
    path = ObjectStoragePath(f"file://{tmp_path}/shard-00000.jsonl")
    assert claims.digests_of(path) == expected
    assert (tmp_path / digests_file("shard-00000.jsonl")).name == "shard-00000.digests.json"
    assert (tmp_path / "shard-00000.digests.json").exists()
    _no_hashing(monkeypatch)
    assert claims.digests_of(path) == expected


def test_a_file_rewritten_after_its_digests_is_hashed_again(tmp_path: Path) -> None:
    # As when claiming takes borrowed requests out of a shard: same name, fewer lines.
    _write(tmp_path / "shard-00000.jsonl", [0, 1, 2])
    path = ObjectStoragePath(f"file://{tmp_path}/shard-00000.jsonl")
    claims.digests_of(path)
    expected = _write(tmp_path / "shard-00000.jsonl", [0, 2])
    assert claims.digests_of(path) == expected
    assert claims.digests_of(path) == expected  # and the digests kept now are the new ones


@pytest.mark.parametrize("damage", ["cut short", "ids dropped", "not json", "empty"])
def test_damaged_digests_are_not_trusted(tmp_path: Path, damage: str) -> None:
    expected = _write(tmp_path / "shard-00000.round1.jsonl", [3, 4, 5])
    path = ObjectStoragePath(f"file://{tmp_path}/shard-00000.round1.jsonl")
    claims.digests_of(path)
    side = tmp_path / "shard-00000.round1.digests.json"
    kept: dict[str, Any] = json.loads(side.read_bytes())
    if damage == "cut short":
        side.write_bytes(side.read_bytes()[:-40])
    elif damage == "ids dropped":  # the file's hash still matches, but not every id is there
        kept["ids"].pop("c-4")
        side.write_text(json.dumps(kept))
    elif damage == "not json":
        side.write_bytes(b"\x00" * 64)
    else:
        side.write_bytes(b"")
    assert claims.digests_of(path) == expected


def test_a_folder_that_cannot_take_the_digests_still_gets_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _write(tmp_path / "borrowed-0123456789abcdef.jsonl", [7, 8])
    path = ObjectStoragePath(f"file://{tmp_path}/borrowed-0123456789abcdef.jsonl")

    real_open = Path.open

    def full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    assert claims.digests_of(path) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["borrowed-0123456789abcdef.jsonl"]


def _prepared(tmp_path: Path, **kwargs: Any) -> tuple[Path, list[Any]]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from prepare_corpus import write_corpus

    from openai_batch.prepare import prepare_requests

    work = tmp_path / "work"
    data = write_corpus(3000, prefix="corpus-0000")
    result = prepare_requests(
        iter([data]), source_name="corpus.jsonl", work_dir=work, id_prefix="corpus-0000", **kwargs
    )
    return work, result.shards


def _hashed_again(shard_path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    with shard_path.open("rb") as fin:
        for _ in claims._digested(fin, found):
            pass
    return found


@pytest.mark.parametrize("max_requests", [50_000, 97])
def test_prepare_writes_each_shards_digests_as_hashing_its_lines_again_would(
    tmp_path: Path, max_requests: int
) -> None:
    from openai_batch.limits import DEFAULT_LIMITS

    limits = DEFAULT_LIMITS.__class__(**{**DEFAULT_LIMITS.__dict__, "max_requests": max_requests})
    work, shards = _prepared(tmp_path, limits=limits)
    assert len(shards) > (20 if max_requests == 97 else 1)  # shards closed on a limit, and by model
    for shard in shards:
        path = Path(shard.path)
        kept = json.loads((work / digests_file(path.name)).read_bytes())
        assert kept["sha256"] == shard.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert kept["count"] == shard.requests
        assert list(kept["ids"].items()) == list(_hashed_again(path).items())  # same ids, same order


def test_claiming_takes_prepares_digests_without_hashing_the_shards_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.records import RequestRecord

    work, shards = _prepared(tmp_path)
    expected = {d: cid for s in shards for cid, d in _hashed_again(Path(s.path)).items()}
    _no_hashing(monkeypatch)
    record = RequestRecord(tmp_path / "record.sqlite")
    assert claims.claim_shards(record, "owner-a", shards, work).kept == {}
    entries = record.entries(sorted(expected))
    assert {d: e.custom_id for d, e in entries.items()} == expected
    assert {e.owner for e in entries.values()} == {"owner-a"}


@pytest.mark.parametrize("damage", ["another sha256", "a request short", "missing"])
def test_claiming_hashes_a_shard_whose_prepared_digests_do_not_match_it(tmp_path: Path, damage: str) -> None:
    from openai_batch.records import RequestRecord

    work, shards = _prepared(tmp_path)
    shard = shards[0]
    side = work / digests_file(Path(shard.path).name)
    kept = json.loads(side.read_bytes())
    truth = dict(kept["ids"])
    if damage == "another sha256":  # digests of some other file: trusted only for the shard prepare wrote
        first = next(iter(kept["ids"]))
        kept["ids"][first] = "0" * 64
        kept["sha256"] = "f" * 64
        side.write_text(json.dumps(kept))
    elif damage == "a request short":
        kept["ids"].pop(next(iter(kept["ids"])))
        kept["count"] -= 1
        side.write_text(json.dumps(kept))
    else:
        side.unlink()
    record = RequestRecord(tmp_path / "record.sqlite")
    claims.claim_shards(record, "owner-a", shards, work)
    entries = record.entries(sorted(truth.values()))
    assert {e.custom_id for e in entries.values()} == set(truth)  # every request claimed, by its digest
    assert json.loads(side.read_bytes())["ids"] == truth  # and the digests kept are the shard's own


def test_a_shard_line_with_a_lone_surrogate_in_its_body_has_its_custom_id_read(tmp_path: Path) -> None:
    # prepare keeps such a line (the stdlib reads it; msgspec refuses it), so every later read must too.
    from openai_batch.results import request_id

    line = b'{"custom_id":"c-9","method":"POST","url":"/v1/chat/completions","body":{"messages":["\\udc00"]}}'
    assert request_id(line) == "c-9"
    (tmp_path / "shard-00000.jsonl").write_bytes(line + b"\n")
    path = ObjectStoragePath(f"file://{tmp_path}/shard-00000.jsonl")
    assert claims.digests_of(path) == {"c-9": hashlib.sha256(line).hexdigest()}
    with pytest.raises(ValueError, match="without a custom_id"):
        request_id(b'{"id":"c-9"}')
