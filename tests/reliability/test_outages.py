"""Outages: the emulator killed and restarted mid-run, the deferred wait killed, the token budget."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import openai
import pytest

from openai_batch.triggers import OpenAIBatchTrigger
from tests.reliability.support import chat_line, read_jsonl, result_dir, run_dag, task_states, write_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - the server may be down or starting: keep polling
            pass
        time.sleep(step)
    return False


def test_emulator_killed_9_and_restarted_mid_batch(
    tmp_path: Path, point_pipeline: Callable[..., dict[str, Any]]
) -> None:
    from openai_emulator.testing import EmulatorProcess

    slow = ["--requests-per-second", "5", "--validating-seconds", "0.1", "--finalizing-seconds", "0.1"]
    server = EmulatorProcess(tmp_path / "emulator", extra_args=slow).start()
    try:
        paths = point_pipeline(server.base_url)
        write_input(paths["inbox"] / "outage.jsonl", [chat_line(f"req-{i}", f"q {i}") for i in range(12)])
        seen: dict[str, Any] = {}

        def crash_and_restart() -> None:
            client = _client(server.base_url)

            def in_progress() -> bool:
                batches = client.batches.list().data
                if not batches or batches[0].status != "in_progress":
                    return False
                if batches[0].request_counts is None or batches[0].request_counts.completed < 2:
                    return False
                seen["before"] = batches[0].model_dump()
                return True

            if _wait_for(in_progress):
                server.kill9()
                seen["killed_at"] = time.monotonic()
                time.sleep(2.0)
                server.start()
                seen["restarted_at"] = time.monotonic()

        chaos = threading.Thread(target=crash_and_restart, daemon=True)
        chaos.start()
        dag_run = run_dag({"input": "outage.jsonl"})
        chaos.join(timeout=30)

        assert "restarted_at" in seen, "the emulator was never killed mid-batch"
        assert seen["before"]["request_counts"]["completed"] < 12
        assert dag_run.state == "success", task_states(dag_run)
        results = read_jsonl(result_dir(paths["results"], "outage") / "results.jsonl")
        assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(12)]
        assert all(r["status"] == "succeeded" for r in results)
        batches = _client(server.base_url).batches.list().data
        assert [b.id for b in batches] == [seen["before"]["id"]]  # the same batch, never created again
        assert batches[0].status == "completed"
    finally:
        server.stop()


async def _start_wait(emulator_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    from airflow.jobs.triggerer_job_runner import TriggerRunner

    server = emulator_with(requests_per_second=2)
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": "test", "host": server.base_url}),
    )
    client = _client(server.base_url)
    data = "".join(json.dumps(chat_line(f"r{i}", "hi")) + "\n" for i in range(40)).encode()
    uploaded = await asyncio.to_thread(client.files.create, file=("in.jsonl", data), purpose="batch")
    batch = await asyncio.to_thread(
        client.batches.create,
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    trigger = OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch.id, poll_interval=0.2)
    # The triggerer's own runner: run_trigger() decides whether a cancellation calls on_kill().
    runner = TriggerRunner()
    runner.triggers[1] = {
        "task": asyncio.create_task(runner.run_trigger(1, trigger)),
        "name": "wait_for_batch",
        "events": 0,
        "is_watcher": False,
    }
    await asyncio.sleep(1.0)  # a few polls while the batch runs
    return server, runner


async def test_user_killing_the_deferred_wait_cancels_the_batch(
    emulator_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, runner = await _start_wait(emulator_with, monkeypatch)
    # What the triggerer does when a user marks the deferred task failed, or clears it.
    runner.to_cancel.append(1)
    await runner.cancel_triggers()
    with pytest.raises(asyncio.CancelledError):
        await runner.triggers[1]["task"]
    (batch,) = (await asyncio.to_thread(_client(server.base_url).batches.list)).data
    assert batch.status in ("cancelling", "cancelled")
    assert batch.request_counts.completed < 40
    assert server.stats()["batches_cancel_requested"] == 1


async def test_triggerer_shutdown_leaves_the_batch_running(
    emulator_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, runner = await _start_wait(emulator_with, monkeypatch)
    # A triggerer restart cancels its tasks without the user-action message: the batch must live on
    # (another triggerer resumes the wait).
    runner.triggers[1]["task"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner.triggers[1]["task"]
    (batch,) = (await asyncio.to_thread(_client(server.base_url).batches.list)).data
    assert batch.status == "in_progress"
    assert "batches_cancel_requested" not in server.stats()


def test_token_limit_exceeded_waits_deferred_and_resubmits(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pipeline["emulator"]
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__TOKEN_LIMIT_WAIT", "1")
    server.set_faults(token_limit=1)  # every batch is over the enqueued-token cap
    write_input(pipeline["inbox"] / "budget.jsonl", [chat_line(f"req-{i}", f"q {i}") for i in range(3)])

    def lift_after_first_failure() -> None:
        if _wait_for(lambda: server.stats().get("batches_failed", 0) >= 1):
            server.set_faults(token_limit=None)

    lifter = threading.Thread(target=lift_after_first_failure, daemon=True)
    lifter.start()
    dag_run = run_dag({"input": "budget.jsonl"})
    lifter.join(timeout=10)

    assert dag_run.state == "success", task_states(dag_run)
    out = result_dir(pipeline["results"], "budget")
    results = read_jsonl(out / "results.jsonl")
    assert [r["status"] for r in results] == ["succeeded"] * 3
    manifest = json.loads((out / "manifest.json").read_text())
    failed, resubmitted = manifest["batches"]
    assert (failed["round"], failed["attempt"], failed["status"]) == (0, 0, "failed")
    assert [e["code"] for e in failed["errors"]] == ["token_limit_exceeded"]
    assert (resubmitted["round"], resubmitted["attempt"], resubmitted["status"]) == (0, 1, "completed")
    assert {r["batch_id"] for r in results} == {resubmitted["batch_id"]}
    assert manifest["counts"]["failed"] == 0
    assert server.stats()["batches_created"] == 2
