"""Backfill three historical partitions against a running scheduler, then again without paying twice."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scripts.backfill import request_backfill
from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1200)]

DATES = ["2024-01-01", "2024-01-02", "2024-01-03"]
EMPTY_DATE = "2024-01-04"  # no input for this date
CONF = {"poll_interval": 1, "input_timeout": 600, "settle_seconds": 0}


def request_line(custom_id: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def wait_for_backfill(stack: StandaloneStack, backfill_id: int) -> dict[str, Any]:
    """Wait until the scheduler has finished a backfill and return its runs by date."""
    wait_until(
        f"backfill {backfill_id}",
        lambda: http_json(f"{stack.api}/backfills/{backfill_id}")["completed_at"],
        480,
        interval=2,
        alive=stack.group,
    )
    runs = http_json(
        f"{stack.api}/dags/{DAG_ID}/dagRuns?logical_date_gte=2024-01-01T00:00:00Z"
        "&logical_date_lte=2024-01-04T23:59:59Z&limit=50"
    )["dag_runs"]
    return {run["logical_date"][:10]: run for run in runs}


def make_backfill(stack: StandaloneStack, conf: dict[str, Any]) -> None:
    """Run the README's command, ``make backfill FROM=... TO=... CONF=...``, against the stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
    env["OPENAI_BATCH_UI_PORT"] = str(stack.port)
    done = subprocess.run(
        ["make", "backfill", f"FROM={DATES[0]}", f"TO={EMPTY_DATE}", f"CONF={json.dumps(conf)}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recorded" in done.stdout, done.stdout


def manifests(results: Path) -> dict[str, dict[str, Any]]:
    return {
        f"{path.parent.parent.name}/{path.parent.name}": json.loads(path.read_text())
        for date in DATES
        for path in (results / date).glob("*/manifest.json")
    }


def test_backfill_three_partitions_then_no_second_payment(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    for number, date in enumerate(DATES, 1):
        (stack.inbox / date).mkdir(exist_ok=True)
        (stack.inbox / date / f"day{number}.jsonl").write_text(
            request_line(f"r{number}a", f"hello {date}") + "\n" + request_line(f"r{number}b", "again") + "\n"
        )
    before = stack.batches_created()

    # POST /api/v2/backfills (what `airflow backfill create` and the UI's Backfill mode do) only records
    # the request; the running scheduler creates and runs the three dated runs.
    # (The CLI writes to the same SQLite file as the running scheduler and can fail with "database is
    # locked" under standalone; the REST API goes through the api-server.)
    make_backfill(stack, CONF)
    backfills = http_json(f"{stack.api}/backfills?dag_id={DAG_ID}")["backfills"]
    assert len(backfills) == 1, backfills
    runs = wait_for_backfill(stack, backfills[0]["id"])
    assert sorted(runs) == [*DATES, EMPTY_DATE], runs
    failed = {d: stack.task_states(r["dag_run_id"]) for d, r in runs.items() if r["state"] != "success"}
    assert not failed, f"{failed}\n{stack.logs()}"
    assert {run["run_type"] for run in runs.values()} == {"backfill"}
    # A past date with no input ends at once, skipped, instead of waiting input_timeout for files.
    empty = stack.task_states(runs[EMPTY_DATE]["dag_run_id"])
    assert empty["wait_for_input[-1]"] == "skipped", empty

    first = manifests(stack.results)
    assert sorted(first) == [f"{date}/day{n}" for n, date in enumerate(DATES, 1)], first
    for key, manifest in first.items():
        assert manifest["counts"]["succeeded"] == 2, (key, manifest)
        assert manifest["input"].endswith(f"{key}.jsonl")
        assert (stack.results / key / "results.jsonl").exists()
    after_first = stack.batches_created()
    assert after_first == before + 3

    # The same dates again (completed runs re-run): results exist for the same content, no new batch.
    second = request_backfill(stack.api, DATES[0], EMPTY_DATE, CONF, reprocess="completed")
    runs = wait_for_backfill(stack, second["id"])
    assert {run["state"] for run in runs.values()} == {"success"}, runs
    assert stack.batches_created() == after_first
    assert manifests(stack.results) == first
    # (A reprocessed run is the old run cleared, so it keeps its first conf: `force` has to come with a
    # new run, not with a backfill over completed dates.)
