"""Calls that take effect and lose their answer, concurrent runs, and an outage longer than a wait tolerates.

The emulator's ``lost_response_*`` fault runs the route (the file is stored, the batch created) and then
answers 502 or cuts the connection, so a client that simply retries pays twice and these tests see it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowException

from openai_batch.operators import load_state
from openai_batch.storage import to_path
from tests.reliability.support import (
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


def _lines(n: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"question {i}") for i in range(n)]


@pytest.mark.parametrize("code", [pytest.param(502, id="502"), pytest.param(0, id="connection-cut")])
def test_lost_answers_to_upload_and_create_never_pay_twice(pipeline: dict[str, Any], code: int) -> None:
    server = pipeline["emulator"]
    # Every upload and every create takes effect and loses its answer; retries must find what was made.
    server.set_faults(
        lost_response_rate=1.0,
        lost_response_routes=["POST /v1/files", "POST /v1/batches"],
        lost_response_code=code,
    )
    write_input(pipeline["inbox"] / "lossy.jsonl", _lines(6))

    dag_run = run_dag({"input": "lossy.jsonl", "max_requests_per_batch": 2})

    assert dag_run.state == "success", task_states(dag_run)
    stats = server.stats()
    assert stats["lost_responses"] >= 6, stats  # three uploads and three creates lost their answer
    assert stats["batches_created"] == 3, stats  # one per shard
    assert stats["files_uploaded"] == 3, stats  # no orphaned second copy either
    results = read_jsonl(result_dir(pipeline["results"], "lossy") / "results.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(6)]
    assert all(r["status"] == "succeeded" for r in results)


def test_overlapping_runs_submitting_at_the_same_time_share_one_batch_per_shard(
    pipeline: dict[str, Any],
) -> None:
    """Two runs with separate state submit every shard of the same file concurrently."""
    server = pipeline["emulator"]
    source = write_input(pipeline["inbox"] / "shared.jsonl", _lines(6))
    plans = [prepare(source, pipeline["results"] / run, max_requests_per_batch=2) for run in ("a", "b")]
    got: dict[tuple[int, int], str] = {}
    start = threading.Barrier(6, timeout=30)

    def run(plan_no: int, shard: dict[str, Any]) -> None:
        start.wait()
        got[plan_no, shard["index"]] = submit(shard)["batch_id"]

    threads = [
        threading.Thread(target=run, args=(plan_no, shard))
        for plan_no, plan in enumerate(plans)
        for shard in plan["shards"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(got) == 6
    for index in range(3):
        assert got[0, index] == got[1, index]  # both runs wait on the same batch of each shard
    assert len({got[0, i] for i in range(3)}) == 3
    live = [b for b in _batches(server) if b.status not in ("cancelling", "cancelled")]
    assert sorted(b.id for b in live) == sorted(got[0, i] for i in range(3))  # any duplicate was cancelled
    assert batches_created(server) - len(live) <= 3
    for plan_no, plan in enumerate(plans):
        for shard in plan["shards"]:
            assert (
                load_state(to_path(shard["state_dir"]), shard).current.batch_id
                == got[plan_no, shard["index"]]
            )


def _batches(server: Any) -> list[Any]:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return list(client.batches.list(limit=100).data)


def test_outage_longer_than_the_wait_tolerates_fails_the_try_and_the_retry_reattaches(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    from openai_batch.sensors import OpenAIBatchSensor
    from openai_batch.triggers import OpenAIBatchTrigger

    server = pipeline["emulator"]
    plan = prepare(write_input(pipeline["inbox"] / "outage.jsonl", _lines(3)), pipeline["results"])
    (shard,) = plan["shards"]
    shard = submit(shard)

    # The service stops answering status polls for longer than the trigger's error tolerance.
    server.set_faults(error_rate=1.0, error_routes=["GET /v1/batches/*"], error_codes=[503])
    trigger = OpenAIBatchTrigger(conn_id="openai_default", batch_id=shard["batch_id"], poll_interval=0.1)

    async def first_event() -> dict[str, Any]:
        event = await asyncio.wait_for(anext(trigger.run()), timeout=120)
        return dict(event.payload)

    event = asyncio.run(first_event())
    assert event["status"] == "error", event
    first_try = OpenAIBatchSensor(task_id="wait_for_batch", shard=shard, poll_interval=1)
    with pytest.raises(AirflowException):
        first_try.execute_complete({}, event)  # type: ignore[arg-type]

    # The outage ends; Airflow retries the task: it re-attaches to the same batch and finishes.
    server.set_faults(error_rate=0.0)
    retry = OpenAIBatchSensor(task_id="wait_for_batch", shard=shard, poll_interval=1)
    for _ in range(600):
        try:
            done = retry.execute({})  # type: ignore[arg-type]
            break
        except Exception as deferred:  # noqa: BLE001 - TaskDeferred while the batch still runs
            if type(deferred).__name__ != "TaskDeferred":
                raise
            asyncio.run(asyncio.sleep(0.2))
    else:
        raise AssertionError("the retried wait never finished")
    assert [r["batch_id"] for r in done["rounds"]] == [shard["batch_id"]]
    assert batches_created(server) == 1


def test_a_file_changed_after_it_was_taken_is_reported(pipeline: dict[str, Any]) -> None:
    import json
    import os

    from openai_batch.operators import OpenAIBatchWriteResultsOperator

    source = write_input(pipeline["inbox"] / "moving.jsonl", _lines(2))
    plan = prepare(source, pipeline["results"])
    plan["shards"] = [submit(shard) for shard in plan["shards"]]
    with source.open("a") as fout:  # someone appends while the batch runs
        fout.write(json.dumps(chat_line("late", "appended")) + "\n")
    os.utime(source, (1, 1))

    OpenAIBatchWriteResultsOperator(task_id="write_results", plan=plan).execute({})  # type: ignore[arg-type]

    manifest = json.loads((result_dir(pipeline["results"], "moving") / "manifest.json").read_text())
    assert manifest["input_changed_after_taken"] is True
    assert manifest["input_sha256"] == plan["input_sha256"]  # the results are for what was taken
