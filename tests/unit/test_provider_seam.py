"""The provider seam: the submission service drives any batch API that implements BatchProvider.

The provider here is an in-memory batch API that is not OpenAI's: no openai SDK, no HTTP. The
service (the same function every round of every shard goes through) submits through it, and keeps
its promises: one upload and one batch per round, re-attachment after a crash between create and
the state write, and nothing sent again for a round that already has its batch.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import pytest

from openai_batch.provider import NOT_FOUND, BatchProvider
from openai_batch.service import load_state, save_state, submit_round

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractContextManager
    from pathlib import Path


@dataclass
class _Batch:
    id: str
    status: str
    input_file_id: str
    metadata: dict[str, str]
    created_at: float


@dataclass
class _File:
    id: str
    filename: str
    content: bytes


class MemoryBatchAPI:
    """A batch API held in memory, implementing the seam and nothing else."""

    def __init__(self) -> None:
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.crash_after_create = False
        self.log = logging.getLogger("memory-batch-api")

    def find_batch(
        self,
        metadata: Mapping[str, str],
        max_scan: int = 1000,
        since: float | None = None,
        *,
        requests: int | None = None,
        open_stream: Any = None,
        taken: Any = None,
    ) -> _Batch | None:
        for batch in sorted(self.batches.values(), key=lambda b: -b.created_at):
            if all(batch.metadata.get(k) == v for k, v in metadata.items()) and batch.status != "failed":
                return batch
        return None

    def upload_batch_file_once(
        self,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]],
        filename: str,
        size: int,
        *,
        since: float | None = None,
        maybe_stored: bool = False,
    ) -> _File:
        if maybe_stored:
            for found in self.files.values():
                if found.filename == filename and len(found.content) == size:
                    return found
        with open_stream() as stream:
            stored = _File(f"file-{len(self.files) + 1}", filename, stream.read())
        self.files[stored.id] = stored
        return stored

    def create_batch_once(
        self,
        file_id: str,
        endpoint: str,
        metadata: dict[str, str],
        *,
        output_expires_after: dict[str, Any] | None = None,
        since: float | None = None,
        requests: int | None = None,
        open_stream: Any = None,
        taken: Any = None,
    ) -> _Batch:
        n = len(self.batches)
        batch = _Batch(f"mb-{n + 1}", "validating", file_id, dict(metadata), n)
        self.batches[batch.id] = batch
        if self.crash_after_create:
            raise KeyboardInterrupt("the process died after the create, before the state write")
        return batch

    def get_batch(self, batch_id: str) -> _Batch:
        return self.batches[batch_id]

    def cancel_batch(self, batch_id: str) -> _Batch:
        self.batches[batch_id].status = "cancelled"
        return self.batches[batch_id]

    def download_file(self, file_id: str, out: IO[bytes], chunk_size: int = 1 << 20) -> int:
        data = self.files[file_id].content
        out.write(data)
        return len(data)

    def batch_status(self, batch_id: str) -> str | None:
        batch = self.batches.get(batch_id)
        return NOT_FOUND if batch is None else batch.status


def _shard(tmp_path: Path) -> dict[str, Any]:
    lines = b"".join(
        b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\n' % i
        for i in range(3)
    )
    (tmp_path / "shard-00000.jsonl").write_bytes(lines)
    return {
        "identity": "a" * 16,
        "index": 0,
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "file": "shard-00000.jsonl",
        "requests": 3,
    }


def test_the_service_submits_through_any_provider_once(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    api = MemoryBatchAPI()
    provider: BatchProvider = api  # the seam, checked by mypy's structural typing too
    state_dir = ObjectStoragePath(f"file://{tmp_path}")
    shard = _shard(tmp_path)
    state = load_state(state_dir, shard)
    batch_id = submit_round(provider, state_dir, state, "/in/x.jsonl")
    assert list(api.batches) == [batch_id]
    assert len(api.files) == 1
    uploaded = next(iter(api.files.values()))
    assert uploaded.content == (tmp_path / "shard-00000.jsonl").read_bytes()
    # Again, from the state record: nothing more is uploaded or created.
    again = load_state(state_dir, shard)
    assert submit_round(provider, state_dir, again, "/in/x.jsonl") == batch_id
    assert len(api.batches) == 1
    assert len(api.files) == 1


def test_a_crash_between_create_and_state_write_reattaches_through_the_provider(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    api = MemoryBatchAPI()
    state_dir = ObjectStoragePath(f"file://{tmp_path}")
    shard = _shard(tmp_path)
    api.crash_after_create = True
    with pytest.raises(KeyboardInterrupt):
        submit_round(api, state_dir, load_state(state_dir, shard), "/in/x.jsonl")
    api.crash_after_create = False
    state = load_state(state_dir, shard)
    assert state.current.batch_id is None  # the crash came before the state write
    batch_id = submit_round(api, state_dir, state, "/in/x.jsonl")
    assert list(api.batches) == [batch_id]  # re-attached: no second batch
    assert len(api.files) == 1
    save_state(state_dir, state)
    assert load_state(state_dir, shard).current.batch_id == batch_id


def test_the_download_goes_through_the_provider(tmp_path: Path) -> None:
    from openai_batch.provider import BatchProvider as Seam

    api: Seam = MemoryBatchAPI()
    out = io.BytesIO()
    stored = api.upload_batch_file_once(lambda: io.BytesIO(b"abc\n"), "f.jsonl", 4)
    assert api.download_file(stored.id, out) == 4
    assert out.getvalue() == b"abc\n"
    assert api.batch_status("nope") == NOT_FOUND
