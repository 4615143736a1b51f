"""Enqueued-token admission under a real scheduler: two concurrent runs, ten shards, room for three.

The shared ``airflow standalone`` stack (scheduler, triggerer, dag-processor, api-server,
LocalExecutor) runs two DAG runs at once whose ten shards together need more than three times
the enqueued-token limit the emulator enforces. Admission control must let at most three batches
into the emulator at a time, make the others wait deferred, and finish both runs with every
request answered and no ``token_limit_exceeded`` failure.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.processes import http_json
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

MODEL = "gpt-4o-mini"
REQUESTS_PER_FILE = 20
PER_SHARD = 4  # 2 files x 20 requests / 4 = 10 shards
RUN_TIMEOUT = 240
LIVE = ("validating", "in_progress", "finalizing")


def _lines(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i:03d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{prefix} {i:03d} " + "x" * 200}],
            },
        }
        for i in range(REQUESTS_PER_FILE)
    ]


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _shard_tokens(source: Path, work: Path) -> list[int]:
    """Prepare the file as the DAG will (in a scratch folder) and return each shard's enqueued tokens."""
    from openai_batch.operators import OpenAIBatchPrepareOperator

    plan = OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=str(source),
        inbox=str(source.parent),
        results_root=str(work),
        partition="2024-01-01",
        max_requests_per_batch=PER_SHARD,
    ).execute({"run_id": "manual__sizing"})  # type: ignore[arg-type]
    return [int(s["enqueued_tokens"]) for s in plan["shards"]]


def _live_batches(emulator_url: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{emulator_url}/v1/batches?limit=100", headers={"Authorization": "Bearer local-emulator-key"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local URL
        batches: list[dict[str, Any]] = json.load(response)["data"]
    return [b for b in batches if b["status"] in LIVE]


class Watcher:
    """Sample the emulator's live batches and the ledger's waiting shards while the runs go."""

    def __init__(self, stack: StandaloneStack) -> None:
        self.stack = stack
        self.most_live = 0
        self.most_waiting = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from openai_batch.budget import Ledger

        ledger = Ledger(self.stack.results / "_ledger")
        while not self._stop.is_set():
            try:
                self.most_live = max(self.most_live, len(_live_batches(self.stack.emulator.url)))
                waiting = sum(row["waiting"] for row in ledger.in_use().values())
                self.most_waiting = max(self.most_waiting, waiting)
                self.samples += 1
            except OSError:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _set_variable(api: str, key: str, value: str) -> None:
    # The stack's API server shares one SQLite file with the scheduler and the running tasks; a write
    # that meets their lock answers 500 "Database error", and nothing was written. Try again briefly.
    deadline = time.monotonic() + 30
    while True:
        try:
            http_json(f"{api}/variables", "POST", {"key": key, "value": value})
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 500 or b"Database error" not in exc.read() or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _delete_variable(api: str, key: str) -> None:
    try:
        http_json(f"{api}/variables/{key}", "DELETE")
    except OSError:
        pass


def _run_state(stack: StandaloneStack, run_id: str) -> str:
    return str(http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns/{run_id}")["state"])


def _task_log(stack: StandaloneStack, run_id: str, task_id: str, map_index: int) -> str:
    """Return every attempt's log of one mapped task instance."""
    folder = (
        stack.home
        / "logs"
        / f"dag_id={DAG_ID}"
        / f"run_id={run_id}"
        / f"task_id={task_id}"
        / f"map_index={map_index}"
    )
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*.log")))


def test_ten_shards_of_two_concurrent_runs_never_exceed_three_in_flight(
    standalone: StandaloneStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    stack = standalone
    tag = uuid.uuid4().hex[:8]
    folder = f"capacity-{tag}"
    sources = {name: _write(stack.inbox / folder / f"{name}.jsonl", _lines(name)) for name in ("a", "b")}
    tokens = [t for src in sources.values() for t in _shard_tokens(src, tmp_path / "sizing")]
    assert len(tokens) == 10
    # Room for three shards, not four: the emulator refuses a fourth in progress.
    cap = 3 * max(tokens) + min(tokens) // 2
    assert 4 * min(tokens) > cap

    # The emulator's counts are the whole stack's: no other run (yesterday's scheduled one) may add to them.
    stack.wait_idle()
    stack.emulator.reset()
    stack.emulator.set_faults(token_limit=cap)
    # Batches that last a few seconds, so that three really are in flight together.
    previous = stack.emulator.configure(validating_seconds=1.0, requests_per_second=2.0)
    _set_variable(stack.api, "openai_batch_token_limits", json.dumps({MODEL: cap}))
    _set_variable(stack.api, "openai_batch_capacity_poll", "1")
    run_ids = [f"capacity_{name}_{tag}" for name in sources]
    started = time.monotonic()
    try:
        with Watcher(stack) as watcher:
            for run_id, name in zip(run_ids, sources, strict=True):
                conf = {
                    "input": f"{folder}/{name}.jsonl",
                    "max_requests_per_batch": PER_SHARD,
                    "settle_seconds": 0,
                    "poll_interval": 1,
                }
                http_json(
                    f"{stack.api}/dags/{DAG_ID}/dagRuns",
                    "POST",
                    {"dag_run_id": run_id, "logical_date": None, "conf": conf},
                )
            _wait_for_runs(stack, run_ids, watcher)
        elapsed = time.monotonic() - started
    finally:
        stack.emulator.configure(**previous)
        stack.emulator.set_faults(token_limit=None)
        _delete_variable(stack.api, "openai_batch_token_limits")
        _delete_variable(stack.api, "openai_batch_capacity_poll")
    print(
        f"\ntwo runs, ten shards: {elapsed:.0f}s; at most {watcher.most_live} batches in flight "
        f"(sampled {watcher.samples} times), at most {watcher.most_waiting} shard(s) waiting"
    )

    states = {run_id: _run_state(stack, run_id) for run_id in run_ids}
    assert set(states.values()) == {"success"}, (states, {r: stack.task_states(r) for r in run_ids})
    stats = stack.emulator.stats()
    assert stats.get("batches_created") == 10, stats
    assert stats.get("batches_completed") == 10, stats
    assert stats.get("batches_failed", 0) == 0, stats  # no token_limit_exceeded, nor anything else
    # Never a fourth batch in flight, and not one at a time either.
    assert stats["batches_in_flight_max"] <= 3, stats
    assert 2 <= watcher.most_live <= stats["batches_in_flight_max"], (watcher.most_live, stats)
    assert watcher.most_waiting >= 1

    for name in sources:
        out = stack.results / folder / name
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["succeeded"] == REQUESTS_PER_FILE, manifest["counts"]
        assert len(manifest["batches"]) == 5
        results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [r["custom_id"] for r in results] == [f"{name}-{i:03d}" for i in range(REQUESTS_PER_FILE)]
        assert all(r["status"] == "succeeded" for r in results)

    # Some shards found no room when submitted and waited, deferred, in wait_for_batch; the logs
    # say which model, how many tokens, in use of what limit, and how many shards wait.
    refused, waited = [], []
    for run_id in run_ids:
        tis = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
        for ti in tis["task_instances"]:
            if ti["task_id"] not in ("submit", "wait_for_batch"):
                continue
            text = _task_log(stack, run_id, ti["task_id"], ti["map_index"])
            if ti["task_id"] == "submit" and "the shard waits for capacity in wait_for_batch" in text:
                refused.append(text)
            if ti["task_id"] == "wait_for_batch" and "checking again every 1 s (deferred)" in text:
                waited.append(text)
    assert refused, "no submit found the model without room"
    assert waited, "no shard waited, deferred, for capacity"
    sizes = "|".join(re.escape(f"{t:,}") for t in set(tokens))
    line = re.search(rf"\((?:{sizes}) tokens\) waits: .*? shard\(s\) waiting", refused[0])
    assert line, refused[0][-3000:]
    assert f"{MODEL} has " in line.group(0)
    assert f"of {cap:,} enqueued tokens in use by" in line.group(0)
    from openai_batch.budget import Ledger

    assert MODEL not in Ledger(stack.results / "_ledger").in_use()  # every batch gave its tokens back


def _wait_for_runs(stack: StandaloneStack, run_ids: list[str], watcher: Watcher) -> None:
    """Wait until both runs end; stop early when the emulator refuses a batch or a fourth is in flight."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        stack.group.check_alive()
        stats = stack.emulator.stats()
        assert stats.get("batches_failed", 0) == 0, f"the emulator failed a batch: {stats}"
        assert stats.get("batches_in_flight_max", 0) <= 3, f"more than three batches in flight: {stats}"
        if all(_run_state(stack, r) in ("success", "failed") for r in run_ids):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the runs did not end in {RUN_TIMEOUT}s: {[stack.task_states(r) for r in run_ids]}\n"
                f"{stack.logs()}"
            )
        time.sleep(1)
