"""A submit that dies between a create (or an upload) and its state write re-attaches however busy the API is.

The state record keeps the intent (its time) before each upload and create; the retried submit looks
the object up by scanning the listing back to that time, not only the 1,000 newest objects.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.operators import load_state
from openai_batch.state import META_SHARD
from openai_batch.storage import to_path
from tests.reliability.support import ROOT, batches_created, chat_line, prepare, submit, write_input

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import openai

#: More unrelated objects than the bounded fallback scan (1,000) reads.
NOISE = 1_500
NOISE_LINE = json.dumps(chat_line("noise", "unrelated")).encode() + b"\n"


class Killed(BaseException):
    """Stands for the process dying: no ``except Exception`` on the way up catches it."""


def _client(server: Any) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def _all(list_page: Callable[..., Any]) -> Iterator[Any]:
    """Yield every object of a paged listing (``after`` cursor)."""
    after: str | None = None
    while True:
        page = list_page(**({"after": after} if after else {}))
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


def _batches_of(server: Any, identity: str) -> list[Any]:
    client = _client(server)
    return [
        b
        for b in _all(lambda **kw: client.batches.list(limit=100, **kw))
        if (b.metadata or {}).get(META_SHARD) == identity
    ]


def _batch_files_named(server: Any, filename: str) -> list[Any]:
    client = _client(server)
    files = _all(lambda **kw: client.files.list(purpose="batch", limit=1000, **kw))
    return [f for f in files if f.filename == filename]


def _create_unrelated_batches(server: Any, count: int) -> None:
    """Create ``count`` batches of another workload, newer than the shard's (one small file reused)."""
    client = _client(server)
    noise = client.files.create(file=("noise.jsonl", io.BytesIO(NOISE_LINE)), purpose="batch")

    def create(i: int) -> None:
        client.batches.create(
            input_file_id=noise.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"workload": f"other-{i}"},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))


def _upload_unrelated_files(server: Any, count: int) -> None:
    """Upload ``count`` small batch input files of another workload."""
    client = _client(server)

    def upload(i: int) -> None:
        client.files.create(file=(f"other-{i:05d}.jsonl", io.BytesIO(NOISE_LINE)), purpose="batch")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(count)))


def _one_shard(pipeline: dict[str, Any], name: str) -> dict[str, Any]:
    source = write_input(pipeline["inbox"] / name, [chat_line(f"req-{i}", f"question {i}") for i in range(3)])
    (shard,) = prepare(source, pipeline["results"])["shards"]
    return dict(shard)


def _die_on_save(monkeypatch: pytest.MonkeyPatch, when: Callable[[Any], bool]) -> None:
    """Make ``save_state`` kill the submit (once) at the first write where ``when(state.current)``."""
    import openai_batch.service as service

    real_save = service.save_state

    def save_or_die(state_dir: Any, state: Any) -> None:
        if when(state.current):
            monkeypatch.setattr(service, "save_state", real_save)
            raise Killed
        real_save(state_dir, state)

    monkeypatch.setattr(service, "save_state", save_or_die)


def test_crash_after_create_then_1500_other_batches_reattaches_to_the_one_batch(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pipeline["emulator"]
    shard = _one_shard(pipeline, "busy.jsonl")

    # The create answered; the process dies before the batch id is written.
    _die_on_save(monkeypatch, lambda rnd: rnd.batch_id is not None)
    with pytest.raises(Killed):
        submit(shard)
    (created,) = _batches_of(server, shard["identity"])
    recorded = load_state(to_path(shard["state_dir"]), shard).current
    assert recorded.batch_id is None

    # A busy organisation: more batches than the bounded scan reads arrive before the retry.
    _create_unrelated_batches(server, NOISE)
    assert batches_created(server) == NOISE + 1

    assert submit(shard)["batch_id"] == created.id
    assert [b.id for b in _batches_of(server, shard["identity"])] == [created.id]
    assert batches_created(server) == NOISE + 1
    assert server.stats()["files_uploaded"] == 2  # the shard's file and the one reused by the others
    final = load_state(to_path(shard["state_dir"]), shard).current
    assert final.batch_id == created.id
    assert final.create_started_at is not None
    assert final.create_started_at <= created.created_at + 1  # the intent was written before the create


def test_crash_between_upload_and_state_write_then_1500_other_files_uploads_once(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pipeline["emulator"]
    shard = _one_shard(pipeline, "upload.jsonl")

    # The upload answered; the process dies before the file id is written.
    _die_on_save(monkeypatch, lambda rnd: rnd.input_file_id is not None)
    with pytest.raises(Killed):
        submit(shard)
    assert load_state(to_path(shard["state_dir"]), shard).current.input_file_id is None
    filename = f"{shard['identity']}-r0a0.jsonl"
    (stored,) = _batch_files_named(server, filename)
    assert batches_created(server) == 0

    # More files than the bounded scan reads arrive before the retry (two pages of the listing).
    _upload_unrelated_files(server, NOISE)

    batch_id = submit(shard)["batch_id"]
    assert [f.id for f in _batch_files_named(server, filename)] == [stored.id]
    assert server.stats()["files_uploaded"] == NOISE + 1
    (batch,) = _batches_of(server, shard["identity"])
    assert batch.id == batch_id
    assert batch.input_file_id == stored.id
    final = load_state(to_path(shard["state_dir"]), shard).current
    assert final.input_file_id == stored.id
    assert final.upload_filename == filename
    assert final.upload_started_at is not None
    assert final.upload_started_at <= stored.created_at + 1  # the intent was written before the upload


def test_crash_between_upload_and_state_write_uploads_once_on_a_quiet_api(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup before the upload runs on the retry's first attempt, not only after a failed one."""
    server = pipeline["emulator"]
    shard = _one_shard(pipeline, "quiet.jsonl")

    _die_on_save(monkeypatch, lambda rnd: rnd.input_file_id is not None)
    with pytest.raises(Killed):
        submit(shard)
    assert server.stats()["files_uploaded"] == 1

    submit(shard)
    assert server.stats()["files_uploaded"] == 1
    (batch,) = _batches_of(server, shard["identity"])
    assert load_state(to_path(shard["state_dir"]), shard).current.input_file_id == batch.input_file_id


def test_record_without_intent_fields_loads_and_reattaches_through_the_bounded_scan(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record from before intents (no ``*_started_at``) loads; the bounded scan finds the batch."""
    server = pipeline["emulator"]
    shard = _one_shard(pipeline, "legacy.jsonl")

    _die_on_save(monkeypatch, lambda rnd: rnd.batch_id is not None)
    with pytest.raises(Killed):
        submit(shard)
    (created,) = _batches_of(server, shard["identity"])

    # Rewrite the record as the code before intents wrote it.
    path = to_path(shard["state_dir"]) / f"shard-{shard['index']:05d}.state.json"
    record = json.loads(path.read_text())
    for rnd in record["rounds"]:
        for key in ("upload_started_at", "upload_filename", "create_started_at"):
            rnd.pop(key, None)
    path.write_text(json.dumps(record))

    assert submit(shard)["batch_id"] == created.id
    assert [b.id for b in _batches_of(server, shard["identity"])] == [created.id]
    assert server.stats()["files_uploaded"] == 1


KILL_AFTER_UPLOAD = r"""
import json, os, sys
import openai_batch.service as service
from openai_batch.operators import OpenAIBatchSubmitOperator

real_save = service.save_state

def save_or_die(state_dir, state):
    if state.current.input_file_id:  # the upload returned: die before its file id is recorded
        os.kill(os.getpid(), 9)
    real_save(state_dir, state)

service.save_state = save_or_die
OpenAIBatchSubmitOperator(task_id="submit", shard=json.loads(sys.argv[1])).execute({})
"""


def test_task_process_killed_9_between_upload_and_state_write_uploads_once(pipeline: dict[str, Any]) -> None:
    """A real ``kill -9``: the intent written before the upload is on disk when the process dies."""
    server = pipeline["emulator"]
    shard = _one_shard(pipeline, "killed-upload.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_UPLOAD, json.dumps(shard)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert server.stats()["files_uploaded"] == 1
    assert load_state(to_path(shard["state_dir"]), shard).current.input_file_id is None

    batch_id = submit(shard)["batch_id"]
    assert server.stats()["files_uploaded"] == 1
    (batch,) = _batches_of(server, shard["identity"])
    assert batch.id == batch_id
    assert batches_created(server) == 1
