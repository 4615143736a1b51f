"""One ``airflow standalone`` stack (SQLite, LocalExecutor) and an emulator, shared by the tests that need it.

The environment comes from ``scripts/run_local.py`` (what ``make run`` starts), with free ports and a
temporary home, inbox and results. The stack starts once per test session, on first use, and stops
when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from scripts.run_local import (
    WEBHOOK_ROUTE,
    airflow_env,
    emulator_connection,
    webhook_secret,
    write_airflow_command,
)
from tests.deploy.processes import ProcessGroup, free_port, http_json, wait_until

DAG_ID = "openai_batch"
#: A model the tests hold in progress (the emulator's ``hold_models``) until they release it.
HELD_MODEL = "gpt-4.1-nano"


class StandaloneStack:
    """``airflow standalone`` plus an in-process emulator, in a temporary folder."""

    def __init__(self, base: Path) -> None:
        from openai_emulator.testing import EmulatorServer

        self.base = base
        #: Set when a test that used the stack failed: its folder (logs, home, results) is then kept.
        self.failed = False
        self.home = base / "airflow"
        self.inbox = base / "inbox"
        self.results = base / "results"
        for folder in (self.home, self.inbox, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.seed_yesterday()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v2"
        # Webhooks first, as make run wires them: the emulator signs each batch's end and posts it to
        # the stack's receiver, which verifies it with OPENAI_WEBHOOK_SECRET.
        self.webhook_secret = webhook_secret(base / "webhook-secret")
        self.webhook_url = f"{self.url}{WEBHOOK_ROUTE}"
        self.emulator = EmulatorServer(
            base / "emulator",
            validating_seconds=0.1,
            finalizing_seconds=0.1,
            webhook_urls=[self.webhook_url],
            webhook_secret=self.webhook_secret,
            webhook_retry_seconds=0.5,
        )
        self.group = ProcessGroup(base / "logs")
        clean = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW", "OPENAI_", "PYTEST_")) and key != "PYTHONPATH"
        }
        self.env = airflow_env(
            clean, home=self.home, ui_port=self.port, inbox=self.inbox, results=self.results
        )
        self.env.update(
            {
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "PYTHONUNBUFFERED": "1",
                "OPENAI_WEBHOOK_SECRET": self.webhook_secret,
            }
        )

    #: Yesterday's folder, seeded before the stack starts: the scheduled run for yesterday, created
    #: when the DAG is unpaused, takes it (see tests/deploy/test_arrival.py).
    SEED_FILES = ("seed-early.jsonl", "seed-late.jsonl")

    def seed_yesterday(self) -> None:
        """Put a file into yesterday's folder during yesterday, and one that landed after it ended."""
        import datetime as dt
        import json

        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.yesterday = (today - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        folder = self.inbox / self.yesterday
        folder.mkdir(parents=True, exist_ok=True)
        for name, mtime in zip(self.SEED_FILES, (today.timestamp() - 3600, time.time() - 120), strict=True):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": name}]}
            line = {"custom_id": f"{self.yesterday}-{name}", "method": "POST", "url": "/v1/chat/completions"}
            (folder / name).write_text(json.dumps({**line, "body": body}) + "\n")
            os.utime(folder / name, (mtime, mtime))

    def start(self) -> StandaloneStack:
        """Start the emulator and ``airflow standalone``; wait until the DAG is parsed, then unpause it."""
        self.emulator.start()
        self.env["AIRFLOW_CONN_OPENAI_DEFAULT"] = emulator_connection(
            self.emulator.base_url.removesuffix("/v1")
        )
        # As make run: standalone starts its parts through this airflow command, which supervises them.
        write_airflow_command(self.home)
        self.group.start("standalone", ["airflow", "standalone"], self.env)
        try:
            wait_until(
                "the Airflow API",
                lambda: http_json(f"{self.api}/monitor/health")["metadatabase"]["status"] == "healthy",
                240,
                alive=self.group,
            )
            wait_until(
                f"the {DAG_ID} DAG", lambda: http_json(f"{self.api}/dags/{DAG_ID}"), 240, alive=self.group
            )
            # The tests that share the stack trigger their own runs on their own files: the inbox
            # watcher is off but for tests/deploy/test_arrival.py, which turns it on (watch_inbox).
            self.watch_inbox(False)
            http_json(f"{self.api}/dags/{DAG_ID}", "PATCH", {"is_paused": False})
        except BaseException:
            self.stop()
            raise
        return self

    def watch_inbox(self, on: bool) -> None:
        """Turn the inbox watcher on or off (the Variable ``openai_batch_watch_inbox``)."""
        key = "openai_batch_watch_inbox"
        body = {"key": key, "value": "true" if on else "false"}
        try:
            http_json(f"{self.api}/variables/{key}", "PATCH", body)
        except urllib.error.HTTPError:  # not set yet
            http_json(f"{self.api}/variables", "POST", body)

    def stop(self) -> None:
        """Stop every process and the emulator."""
        self.group.stop()
        self.emulator.stop()

    def logs(self) -> str:
        """Return the end of every log, for a failure message."""
        return self.group.dump_logs()

    def wait_idle(self, timeout: float = 240) -> None:
        """Wait until no run of the DAG is queued or running (yesterday's scheduled run included)."""

        def idle() -> bool:
            runs = http_json(f"{self.api}/dags/{DAG_ID}/dagRuns?state=queued&state=running&limit=1")
            return int(runs["total_entries"]) == 0

        wait_until("no run in progress", idle, timeout, alive=self.group)

    def diagnose(self) -> str:
        """Return what a failure report needs: the runs not ended, their tasks, and the log's errors."""
        lines = []
        try:
            url = f"{self.api}/dags/{DAG_ID}/dagRuns?state=queued&state=running&limit=20"
            for run in http_json(url)["dag_runs"]:
                states = self.task_states(run["dag_run_id"])
                lines.append(f"run {run['dag_run_id']} ({run['run_type']}) {run['state']}: {states}")
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            lines.append(f"the API did not answer: {exc!r}")
        log = self.group.log_path("standalone")
        if log.exists():
            noted = ("ERROR", "Traceback", "Error:", "locked", "zombie", "killed", "exited")
            text = log.read_text(errors="replace").splitlines()
            errors = [line for line in text if any(word in line for word in noted)]
            lines.append(f"{len(errors)} error lines in {log}; the last 30:")
            lines.extend(errors[-30:])
        lines.append(f"the stack's folder, kept for a failure: {self.base}")
        return "\n".join(lines)

    def part(self, name: str) -> Any:
        """Return the running process (psutil) of one of standalone's parts, e.g. ``scheduler``."""
        import psutil

        leader = psutil.Process(self.group.processes["standalone"].pid)
        for supervisor in leader.children():
            try:
                if supervisor.cmdline()[-1:] == [name]:
                    (part,) = supervisor.children()
                    return part
            except psutil.Error:  # exited (a zombie standalone has not reaped)
                continue
        raise LookupError(f"no {name} under standalone")

    def batches_created(self) -> int:
        """Return how many batches the emulator has created so far."""
        return int(self.emulator.stats().get("batches_created", 0))

    def wait_for_run(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until a run of the DAG ends and return it."""

        def ended() -> dict[str, Any] | None:
            run: dict[str, Any] = http_json(f"{self.api}/dags/{DAG_ID}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        result: dict[str, Any] = wait_until(f"run {run_id}", ended, timeout, alive=self.group)
        return result

    def write_requests(self, path: Path, tag: str, model: str, count: int = 2) -> None:
        """Write ``count`` chat requests for ``model`` to ``path``, custom_ids ``<tag>-<n>``."""
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        url = "/v1/chat/completions"
        lines = [
            {"custom_id": f"{tag}-{n}", "method": "POST", "url": url, "body": body} for n in range(count)
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def run_held(self, folder: str, model: str, poll_interval: int) -> tuple[str, str, float]:
        """
        Run the DAG on ``<inbox>/folder``, its one batch held until its wait has deferred and settled.

        The batch is released ``MIN_FIRE_AFTER_DEFERRAL`` + 1 s after the wait deferred (a real batch
        ends long after), so only a wake or a net round can end the wait. Return the run id, the
        batch id and the batch's end (the API's ``completed_at``, whole seconds: up to 1 s early).
        """
        import openai

        from openai_batch.triggers import MIN_FIRE_AFTER_DEFERRAL

        self.emulator.set_faults(hold_models=[model])
        try:
            conf = {"input": f"{folder}/*.jsonl", "poll_interval": poll_interval, "settle_seconds": 0}
            runs = f"{self.api}/dags/{DAG_ID}/dagRuns"
            run_id = str(http_json(runs, "POST", {"logical_date": None, "conf": conf})["dag_run_id"])

            def deferred() -> bool:
                states = self.task_states(run_id)
                return any(k.startswith("wait_for_batch") and v == "deferred" for k, v in states.items())

            wait_until("the batch's wait to defer", deferred, 240, interval=1, alive=self.group)
            time.sleep(MIN_FIRE_AFTER_DEFERRAL + 1)
        finally:
            self.emulator.set_faults(hold_models=[])
        client = openai.OpenAI(api_key="any", base_url=self.emulator.base_url)
        held = [b for b in client.batches.list(limit=20) if b.status not in ("completed", "failed")]
        if len(held) != 1:
            raise AssertionError(f"expected one held batch, found {[(b.id, b.status) for b in held]}")
        batch_id = held[0].id

        def completed_at() -> float | None:
            batch = client.batches.retrieve(batch_id)
            return float(batch.completed_at) if batch.status == "completed" and batch.completed_at else None

        ended = wait_until("the batch to complete", completed_at, 60, interval=0.2)
        return run_id, batch_id, float(ended)

    def ended_after(self, run_id: str, moment: float) -> dict[str, float]:
        """Return how long after ``moment`` the run's wait and write tasks started and ended, in seconds."""
        import datetime as dt

        url = f"{self.api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100"
        phases = {}
        for ti in http_json(url)["task_instances"]:
            if ti["task_id"] in ("wait_for_batch", "write_results") and ti["end_date"]:
                for end in ("start", "end"):
                    at = dt.datetime.fromisoformat(ti[f"{end}_date"]).timestamp()
                    phases[f"{ti['task_id']} {end}"] = round(at - moment, 1)
        return phases

    def recorded_ends(self) -> set[str]:
        """Return the batches whose end the webhook receiver recorded (in the ledger folder)."""
        folder = self.results / "_ledger" / "webhooks" / "events"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def task_states(self, run_id: str) -> dict[str, str]:
        """Return ``task_id[map_index] -> state`` of a run, for failure messages."""
        tis = http_json(f"{self.api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
        return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in tis["task_instances"]}


_STACK: StandaloneStack | None = None


def running_stack() -> StandaloneStack | None:
    """Return the session's stack if it has started."""
    return _STACK


def require_stack(request: pytest.FixtureRequest) -> StandaloneStack:
    """Return the session's stack, starting it on first use (it stops when the session ends)."""
    global _STACK
    if _STACK is None:
        if not shutil.which(
            "airflow", path=airflow_env({}, home=Path(), ui_port=0, inbox=Path(), results=Path())["PATH"]
        ):
            pytest.fail("the airflow command is not installed next to this Python")
        base = Path(tempfile.mkdtemp(prefix="openai-batch-standalone-"))
        stack = StandaloneStack(base)
        started = time.monotonic()
        stack.start()
        print(f"airflow standalone up in {time.monotonic() - started:.0f}s at {stack.url} ({base})")
        _STACK = stack

        def stop() -> None:
            global _STACK
            stack.stop()
            _STACK = None
            if not stack.failed:
                shutil.rmtree(base, ignore_errors=True)

        request.session.config.add_cleanup(stop)
    return _STACK


@pytest.fixture
def standalone(request: pytest.FixtureRequest) -> StandaloneStack:
    """The shared ``airflow standalone`` stack."""
    return require_stack(request)
