"""Files are picked up without anyone triggering: the inbox watcher, and the day's scheduled run.

Against the shared ``airflow standalone`` stack (real scheduler, triggerer, dag-processor, api-server,
LocalExecutor) and the emulator. Nobody triggers a run in this module.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture
from tests.reliability.support import sent_ids

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]


def _write(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": cid}]},
            }
        )
        for cid in ids
    ]
    tmp = path.with_name(f".{path.name}.tmp")  # written aside, then renamed in: as a careful user does
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)


def _runs(stack: StandaloneStack) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns?limit=200")["dag_runs"]
    return runs


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def test_files_that_land_are_processed_once_without_a_trigger(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    stack.watch_inbox(True)
    try:
        _files_land(stack)
    finally:
        stack.watch_inbox(False)


def _files_land(stack: StandaloneStack) -> None:
    tag = uuid.uuid4().hex[:8]
    runs_before = {r["dag_run_id"] for r in _runs(stack)}
    first = stack.inbox / f"arrive-{tag}-1.jsonl"
    second = stack.inbox / f"arrive-{tag}-2.jsonl"
    late = stack.inbox / stack.yesterday / f"arrive-{tag}-late.jsonl"  # a past day's folder, after its run
    landed: dict[str, float] = {}

    _write(first, [f"{tag}-1a", f"{tag}-1b"])
    landed["first"] = time.time()
    time.sleep(40)
    _write(second, [f"{tag}-2a"])
    landed["second"] = time.time()

    def an_arrival_run_started() -> bool:
        return any(
            r["run_type"] == "asset_triggered"
            and r["dag_run_id"] not in runs_before
            and r["state"] != "queued"
            for r in _runs(stack)
        )

    wait_until("an arrival run", an_arrival_run_started, 240, interval=2, alive=stack.group)
    _write(late, [f"{tag}-late"])  # after a run has started
    landed["late"] = time.time()

    outputs = {
        "first": stack.results / first.stem / "manifest.json",
        "second": stack.results / second.stem / "manifest.json",
        "late": stack.results / stack.yesterday / late.stem / "manifest.json",
    }
    written: dict[str, float] = {}

    def all_written() -> bool:
        for name, path in outputs.items():
            if name not in written and _manifest(path) is not None:
                written[name] = time.time()
        return len(written) == len(outputs)

    try:
        wait_until("results of every file", all_written, 420, interval=1, alive=stack.group)
    except BaseException:
        print(stack.logs())
        raise
    for name, path in outputs.items():
        manifest = _manifest(path)
        assert manifest is not None
        assert manifest["counts"]["succeeded"] == manifest["counts"]["total"] > 0, (name, manifest)
    ids = [i for i in sent_ids(stack.emulator) if i.startswith(tag)]
    assert sorted(ids) == sorted([f"{tag}-1a", f"{tag}-1b", f"{tag}-2a", f"{tag}-late"]), ids  # once each
    new_runs = [r for r in _runs(stack) if r["dag_run_id"] not in runs_before]
    assert new_runs
    assert {r["run_type"] for r in new_runs} <= {"asset_triggered", "scheduled"}, new_runs  # nobody triggered
    for name in outputs:
        print(f"{name}: results {written[name] - landed[name]:.0f}s after it landed")


def test_the_run_for_yesterday_started_after_it_ended_and_took_its_folder(
    standalone: StandaloneStack,  # noqa: F811
) -> None:
    stack = standalone
    day = stack.yesterday
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    (run,) = [
        r for r in _runs(stack) if r["run_type"] == "scheduled" and (r["logical_date"] or "")[:10] == day
    ]
    assert dt.datetime.fromisoformat(run["data_interval_start"]) == today - dt.timedelta(days=1)
    assert dt.datetime.fromisoformat(run["data_interval_end"]) == today
    assert dt.datetime.fromisoformat(run["run_after"]) >= today  # started once the day had ended
    ended = stack.wait_for_run(run["dag_run_id"], timeout=300)
    assert ended["state"] == "success", stack.task_states(run["dag_run_id"])
    sensor = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/wait_for_input")
    assert sensor["state"] == "success", sensor
    for name in stack.SEED_FILES:  # the one written during the day, and the one that landed after it
        manifest = _manifest(stack.results / day / name.removesuffix(".jsonl") / "manifest.json")
        assert manifest is not None, name
        assert manifest["counts"]["succeeded"] == 1, manifest
        assert manifest["input"].endswith(f"{day}/{name}")
    ids = [i for i in sent_ids(stack.emulator) if i.startswith(f"{day}-seed-")]
    assert sorted(ids) == sorted(f"{day}-{n}" for n in stack.SEED_FILES), ids  # each paid once
