"""Distributed mode without containers, as docker-compose.yaml lays it out.

Postgres metadata database, Redis broker, CeleryExecutor, and the api-server, scheduler, dag-processor,
triggerer and Celery worker as separate processes sharing one JWT secret and one execution API URL.
The DAG is triggered through the REST API and must succeed and write its results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.processes import (
    INIT_COMMAND,
    JWT_SECRET,
    ProcessGroup,
    airflow_commands,
    distributed_env,
    emulator_command,
    free_port,
    http_json,
    wait_until,
)

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

DAG_ID = "openai_batch"
RUN_TIMEOUT = 300
TERMINAL = {"success", "failed"}


def chat(text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


INPUT_LINES: list[dict[str, Any]] = [
    chat("Write a haiku about spring."),
    {"custom_id": "full-1", "method": "POST", "url": "/v1/chat/completions", "body": chat("hello")},
    chat("Explain a batch API in one sentence."),
    {"custom_id": "full-2", "method": "POST", "url": "/v1/chat/completions", "body": chat("hi", "gpt-4o")},
    chat("Name three colours."),
]


def test_dag_runs_on_celery_with_separate_components(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    home, inbox, results = tmp_path / "airflow", tmp_path / "inbox", tmp_path / "results"
    for directory in (home, inbox, results):
        directory.mkdir()
    api_port, emulator_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}/api/v2"
    env = distributed_env(
        home=home,
        database_url=postgres_url,
        broker_url=redis_url,
        api_port=api_port,
        emulator_base_url=f"http://127.0.0.1:{emulator_port}/v1",
        inbox=inbox,
        results=results,
    )
    group = ProcessGroup(tmp_path / "logs")
    started = time.monotonic()
    try:
        # Batches stay `validating` for 10 s and then in progress until both waits are deferred (the
        # emulator's hold_in_progress), so the batch sensors find them unfinished and defer to the
        # triggerer however slow the machine (a batch already done when a sensor first looks needs
        # no trigger).
        receiver = f"http://127.0.0.1:{api_port}/openai-batch/webhooks/openai"
        emulator = emulator_command(
            emulator_port, tmp_path / "emulator", validating_seconds=10, webhook_url=receiver
        )
        group.start("openai-emulator", emulator, env)
        group.run("airflow-init", INIT_COMMAND, env, timeout=300)
        migrated = time.monotonic()
        for name, argv in airflow_commands(api_port).items():
            group.start(name, argv, env)
        run = _trigger_and_wait(api, group, inbox, f"http://127.0.0.1:{emulator_port}")
        finished = time.monotonic()
        ran_for = {"migrate": migrated - started, "run": finished - migrated}
        print(f"\ndistributed run: migrate {ran_for['migrate']:.0f}s, start+run {ran_for['run']:.0f}s")

        assert run["state"] == "success", _states(api, run["dag_run_id"])
        _assert_results(results, run)
        _assert_ran_distributed(api, run, group, env, home)
    except BaseException:
        print(group.dump_logs())
        _print_task_logs(home)
        raise
    finally:
        survivors = group.stop()
    assert not survivors, f"process groups still alive after SIGKILL: {survivors}"


def _trigger_and_wait(api: str, group: ProcessGroup, inbox: Path, emulator: str) -> dict[str, Any]:
    health = wait_until(
        "api-server, scheduler, triggerer and dag-processor health",
        lambda: _all_healthy(http_json(f"{api}/monitor/health")),
        timeout=180,
        alive=group,
    )
    print(f"\nhealth: {health}")
    wait_until("the DAG to be parsed", lambda: http_json(f"{api}/dags/{DAG_ID}"), timeout=120, alive=group)
    dag = http_json(f"{api}/dags/{DAG_ID}", "PATCH", {"is_paused": False})
    assert dag["is_paused"] is False

    (inbox / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in INPUT_LINES))
    http_json(f"{emulator}/_emulator/faults", "PUT", {"hold_in_progress": True})
    run = http_json(
        f"{api}/dags/{DAG_ID}/dagRuns",
        "POST",
        {"logical_date": None, "conf": {"input": "requests.jsonl", "poll_interval": 1, "settle_seconds": 0}},
    )
    run_url = f"{api}/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"

    def both_waits_deferred() -> bool:
        states = _states(api, run["dag_run_id"])
        return [v for k, v in states.items() if k.startswith("wait_for_batch[")] == ["deferred"] * 2

    try:
        wait_until("both batch waits to be deferred", both_waits_deferred, timeout=RUN_TIMEOUT, alive=group)
    finally:
        http_json(f"{emulator}/_emulator/faults", "PUT", {"hold_in_progress": False})
    finished: dict[str, Any] = wait_until(
        f"run {run['dag_run_id']} to finish",
        lambda: (lambda r: r if r["state"] in TERMINAL else None)(http_json(run_url)),
        timeout=RUN_TIMEOUT,
        interval=2,
        alive=group,
    )
    return finished


def _all_healthy(health: dict[str, Any]) -> dict[str, Any] | None:
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return health if all(health.get(p, {}).get("status") == "healthy" for p in parts) else None


def _task_instances(api: str, run_id: str) -> list[dict[str, Any]]:
    answer = http_json(f"{api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    tis: list[dict[str, Any]] = answer["task_instances"]
    return tis


def _states(api: str, run_id: str) -> dict[str, Any]:
    return {f"{ti['task_id']}[{ti['map_index']}]": ti["state"] for ti in _task_instances(api, run_id)}


def _assert_results(results: Path, run: dict[str, Any]) -> None:
    out = results / "requests"  # <results>/<path of the file in the inbox>
    assert sorted(p.name for p in results.iterdir() if not p.name.startswith("_")) == ["requests"]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(lines) == len(INPUT_LINES)
    assert [r["custom_id"] for r in lines][1::2] == ["full-1", "full-2"]
    assert all(r["status"] == "succeeded" for r in lines), lines
    assert manifest["counts"] == {
        "total": 5,
        "succeeded": 5,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "rejected": 0,
        "reused": 0,
        "borrowed": 0,
        "from_cache": 0,
    }
    # Two models, two shards: two batches, submitted and awaited as two mapped task instances.
    assert len(manifest["batches"]) == 2
    assert {b["status"] for b in manifest["batches"]} == {"completed"}


def _assert_ran_distributed(
    api: str, run: dict[str, Any], group: ProcessGroup, env: dict[str, str], home: Path
) -> None:
    tis = _task_instances(api, run["dag_run_id"])
    assert {ti["task_id"] for ti in tis} == {
        "wait_for_input",
        "prepare",
        "check_budget",
        "list_shards",
        "submit",
        "wait_for_batch",
        "write_results",
    }
    assert all(ti["state"] == "success" for ti in tis), _states(api, run["dag_run_id"])
    assert all(ti["queue"] == "default" and ti["hostname"] for ti in tis), tis
    # Every task instance went through Celery: the worker received and ran each one.
    worker_log = group.log_path("airflow-worker").read_text(errors="replace")
    for ti in tis:
        assert ti["id"] in worker_log, f"{ti['task_id']}[{ti['map_index']}] not in the worker log"
    # The batch waits were deferred to the triggerer process, whose job id names each trigger log file.
    jobs = http_json(f"{api}/jobs?job_type=TriggererJob")["jobs"]
    assert len(jobs) == 1, jobs
    waits = [ti for ti in tis if ti["task_id"] == "wait_for_batch"]
    assert len(waits) == 2
    for ti in waits:
        task_log = home / "logs" / ti_log_path(ti, run["dag_run_id"])
        trigger_log = task_log.with_name(f"{task_log.name}.trigger.{jobs[0]['id']}.log")
        text = trigger_log.read_text()
        assert "openai_batch.progress.OpenAIBatchProgressTrigger" in text, text
        assert "trigger completed" in text, text
    assert all(ti["try_number"] == 1 for ti in tis), _states(api, run["dag_run_id"])
    # One secret, one execution API for every component.
    for name, component_env in group.envs.items():
        assert component_env["AIRFLOW__API_AUTH__JWT_SECRET"] == JWT_SECRET, name
        assert (
            component_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
            == (env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        ), name


def ti_log_path(ti: dict[str, Any], run_id: str) -> Path:
    """Return the relative log path of a task instance's attempt, as the default log template builds it."""
    parts = [f"dag_id={DAG_ID}", f"run_id={run_id}", f"task_id={ti['task_id']}"]
    if ti["map_index"] >= 0:
        parts.append(f"map_index={ti['map_index']}")
    return Path(*parts, f"attempt={ti['try_number']}.log")


def _print_task_logs(home: Path, lines: int = 60) -> None:
    for path in sorted((home / "logs").glob("dag_id=*/**/*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"===== task log {path.relative_to(home)} =====\n" + "\n".join(text))
