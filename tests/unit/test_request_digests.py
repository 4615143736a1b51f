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
