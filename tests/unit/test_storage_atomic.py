"""Writes a later run trusts are all or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from airflow.sdk import ObjectStoragePath

from openai_batch.storage import open_atomic

if TYPE_CHECKING:
    from pathlib import Path


def test_a_write_that_fails_half_way_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "results.jsonl"
    target.write_bytes(b"old complete content\n")

    def write_until_the_disk_is_full() -> None:
        with open_atomic(ObjectStoragePath(str(target))) as out:
            out.write(b"new partial")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_until_the_disk_is_full()
    assert target.read_bytes() == b"old complete content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no temporary file left


def test_a_write_that_completes_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.jsonl"
    with open_atomic(ObjectStoragePath(str(target))) as out:
        out.write(b"new\n")
    assert target.read_bytes() == b"new\n"
