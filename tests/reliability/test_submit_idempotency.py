"""Never pay twice: every way a submission can run again re-attaches to the one batch of its shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.operators import load_state
from openai_batch.storage import to_path
from tests.reliability.support import (
    ROOT,
    batches_created,
    chat_line,
    prepare,
    read_jsonl,
    result_dir,
    run_dag,
    submit,
    task_states,
    write_input,
)

if TYPE_CHECKING:
    from pathlib import Path


def _emulator_batches(server: Any) -> list[Any]:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return list(client.batches.list(limit=100).data)


def _input(inbox: Path, name: str = "idem.jsonl", n: int = 5) -> Path:
    return write_input(inbox / name, [chat_line(f"req-{i}", f"question {i}") for i in range(n)])


def test_retried_submit_after_a_failure_past_create_creates_one_batch(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_batch.service as service

    server = pipeline["emulator"]
    plan = prepare(_input(pipeline["inbox"]), pipeline["results"], max_requests_per_batch=2)
    shards = plan["shards"]
    assert len(shards) == 3

    # First attempt of shard 0: the batch is created, then writing the state record fails (disk full,
    # worker lost...), so the task fails without having recorded its batch id.
    real_save = service.save_state

    def fail_after_create(state_dir: Any, state: Any) -> None:
        if state.current.batch_id:
            raise OSError("disk full")
        real_save(state_dir, state)

    monkeypatch.setattr(service, "save_state", fail_after_create)
    with pytest.raises(OSError, match="disk full"):
        submit(shards[0])
    monkeypatch.setattr(service, "save_state", real_save)
    assert batches_created(server) == 1
    assert load_state(to_path(shards[0]["state_dir"]), shards[0]).current.batch_id is None

    # The retry finds the batch by its metadata; a further retry finds it in the state record.
    first = submit(shards[0])["batch_id"]
    assert submit(shards[0])["batch_id"] == first
    for shard in shards[1:]:
        assert submit(shard)["batch_id"] == submit(shard)["batch_id"]

    stats = server.stats()
    assert stats["batches_created"] == 3
    assert stats["files_uploaded"] == 3
    assert {b.id for b in _emulator_batches(server)} == {
        load_state(to_path(s["state_dir"]), s).current.batch_id for s in shards
    }


def test_second_run_of_a_finished_file_reattaches_through_the_state_record(pipeline: dict[str, Any]) -> None:
    server = pipeline["emulator"]
    _input(pipeline["inbox"], "cleared.jsonl", n=4)
    conf = {"input": "cleared.jsonl", "max_requests_per_batch": 2}
    dag_run = run_dag(conf)
    assert dag_run.state == "success", task_states(dag_run)
    assert batches_created(server) == 2
    out = result_dir(pipeline["results"], "cleared")
    before = read_jsonl(out / "results.jsonl")

    # Clearing the run (or re-running it) after the outputs went missing: prepare no longer
    # skips the file, submit and wait run again on the same state records.
    (out / "manifest.json").unlink()
    (out / "results.jsonl").unlink()
    dag_run = run_dag(conf)
    assert dag_run.state == "success", task_states(dag_run)
    assert batches_created(server) == 2
    assert server.stats()["files_uploaded"] == 2
    assert read_jsonl(out / "results.jsonl") == before
    assert all(r["status"] == "succeeded" for r in before)


KILL_AFTER_CREATE = r"""
import json, os, sys
import openai_batch.service as service
from openai_batch.operators import OpenAIBatchSubmitOperator

real_save = service.save_state

def save_or_die(state_dir, state):
    if state.current.batch_id:  # the create call returned: die before the batch id is recorded
        os.kill(os.getpid(), 9)
    real_save(state_dir, state)

service.save_state = save_or_die
OpenAIBatchSubmitOperator(task_id="submit", shard=json.loads(sys.argv[1])).execute({})
"""


def test_task_process_killed_9_right_after_create_reattaches(pipeline: dict[str, Any]) -> None:
    server = pipeline["emulator"]
    plan = prepare(_input(pipeline["inbox"], "killed.jsonl"), pipeline["results"])
    (shard,) = plan["shards"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CREATE, json.dumps(shard)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert batches_created(server) == 1
    recorded = load_state(to_path(shard["state_dir"]), shard).current
    assert recorded.input_file_id  # the upload was recorded ...
    assert recorded.batch_id is None  # ... the batch was not

    (created,) = _emulator_batches(server)
    assert submit(shard)["batch_id"] == created.id
    assert batches_created(server) == 1
    assert server.stats()["files_uploaded"] == 1
    assert load_state(to_path(shard["state_dir"]), shard).current.batch_id == created.id


def test_overlapping_runs_on_one_file_share_its_batches(pipeline: dict[str, Any]) -> None:
    """Two runs with separate state (a lost results folder) take the same file one after the other.

    The second run has no state record of its own; the metadata scan finds the first run's batches.
    Two submits that both scan before either creates: see the next test.
    """
    server = pipeline["emulator"]
    source = _input(pipeline["inbox"], "shared.jsonl", n=6)
    plan_a = prepare(source, pipeline["results"], max_requests_per_batch=3)
    plan_b = prepare(source, pipeline["results"] / "lost", max_requests_per_batch=3)
    assert plan_a["state_dir"] != plan_b["state_dir"]
    ids_a = [submit(s)["batch_id"] for s in plan_a["shards"]]
    ids_b = [submit(s)["batch_id"] for s in plan_b["shards"]]
    assert ids_a == ids_b
    assert len(set(ids_a)) == 2
    assert batches_created(server) == 2
    assert server.stats()["files_uploaded"] == 2


def test_two_submits_racing_past_the_scan_keep_one_live_batch(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two overlapping runs scan at the same moment, find nothing, and both create: the newer is cancelled."""
    import threading

    from openai_batch.hooks import OpenAIBatchHook

    server = pipeline["emulator"]
    source = _input(pipeline["inbox"], "race.jsonl", n=4)
    shards = [prepare(source, pipeline["results"] / run)["shards"][0] for run in ("run-a", "run-b")]
    both_scanned = threading.Barrier(2, timeout=30)
    real_find = OpenAIBatchHook.find_batch

    def find_then_wait(self: OpenAIBatchHook, metadata: Any, *args: Any, **kwargs: Any) -> Any:
        found = real_find(self, metadata, *args, **kwargs)
        both_scanned.wait()  # neither has created yet: the race window, held open
        return found

    monkeypatch.setattr(OpenAIBatchHook, "find_batch", find_then_wait)
    got: dict[int, str] = {}

    def run(i: int) -> None:
        got[i] = submit(shards[i])["batch_id"]

    racers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)

    assert got[0] == got[1]  # both runs wait on the same batch
    assert batches_created(server) == 2  # both did create ...
    batches = {b.id: b for b in _emulator_batches(server)}
    live = [b for b in batches.values() if b.status not in ("cancelling", "cancelled")]
    assert [b.id for b in live] == [got[0]]  # ... but only the oldest lives on
    (duplicate,) = [b for b in batches.values() if b.id != got[0]]
    assert duplicate.status in ("cancelling", "cancelled")
    assert duplicate.request_counts is None or duplicate.request_counts.completed == 0  # nothing billed
    for shard in shards:
        assert load_state(to_path(shard["state_dir"]), shard).current.batch_id == got[0]
