"""A part of the local stack that dies is started again: the stack does not look alive while running nothing.

``airflow standalone`` never checks its parts once started. Airflow 3.3.2's scheduler stops on an error
when the API server deletes a backfill's half-created runs after SQLite answered "database is locked";
the UI kept answering and no run ever moved again. `make run` starts each part under a supervisor
(``scripts/airflow_local.py``), as this shared stack does.
"""

from __future__ import annotations

import uuid

import pytest

from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


def test_a_scheduler_that_dies_is_started_again_and_runs_go_on(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    dead = stack.part("scheduler")
    dead.kill()  # as a crash: no stop signal reached its supervisor
    dead.wait(timeout=30)

    def restarted() -> bool:
        try:
            return bool(stack.part("scheduler").pid != dead.pid)
        except (LookupError, ValueError):
            return False

    wait_until("a new scheduler", restarted, 60, interval=0.5, alive=stack.group)
    log = stack.group.log_path("standalone").read_text(errors="replace")
    assert "scheduler exited with code -9; starting it again" in log

    tag = uuid.uuid4().hex[:8]
    folder = f"recovers-{tag}"
    stack.write_requests(stack.inbox / folder / "after.jsonl", tag, "gpt-4o-mini")
    conf = {"input": f"{folder}/*.jsonl", "poll_interval": 1, "settle_seconds": 0}
    run = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns", "POST", {"logical_date": None, "conf": conf})
    ended = stack.wait_for_run(run["dag_run_id"], timeout=300)
    assert ended["state"] == "success", stack.task_states(run["dag_run_id"])
    assert (stack.results / folder / "after" / "manifest.json").exists()
