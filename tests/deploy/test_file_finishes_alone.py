"""Each file finishes on its own: a small file's results and Asset event do not wait for a slow batch.

Against the shared ``airflow standalone`` stack (real scheduler, triggerer, LocalExecutor) and the
emulator, which holds every batch of one model in progress (``hold_models``) until the test lets it go.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

SLOW_MODEL, FAST_MODEL = "gpt-4.1", "gpt-4o-mini"


def _write(path: Path, tag: str, model: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    url = "/v1/chat/completions"
    lines = [{"custom_id": f"{tag}-{n}", "method": "POST", "url": url, "body": body} for n in range(3)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _manifest(results: Path, folder: str, stem: str) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads((results / folder / stem / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return value


def _events(stack: StandaloneStack, run_id: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"source_dag_id": DAG_ID, "source_run_id": run_id, "limit": 100})
    events: list[dict[str, Any]] = http_json(f"{stack.api}/assets/events?{query}")["asset_events"]
    return events


def _event_files(stack: StandaloneStack, run_id: str) -> list[str]:
    """Return the input file names of the run's results events, sorted."""
    return sorted(str(e["extra"].get("input", "")).rsplit("/", 1)[-1] for e in _events(stack, run_id))


def _batch_statuses(stack: StandaloneStack) -> dict[str, str]:
    """Return the status of every batch the emulator holds, by the model of its requests."""
    import openai

    client = openai.OpenAI(api_key="any", base_url=stack.emulator.base_url)
    statuses: dict[str, str] = {}
    for batch in client.batches.list(limit=100):
        model = json.loads(client.files.content(batch.input_file_id).text.splitlines()[0])["body"]["model"]
        statuses[f"{model}:{batch.id}"] = batch.status
    return statuses


def test_a_small_files_results_and_event_do_not_wait_for_a_slow_batch(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    tag = uuid.uuid4().hex[:8]
    folder = f"alone-{tag}"
    _write(stack.inbox / folder / "slow.jsonl", f"{tag}-slow", SLOW_MODEL)
    _write(stack.inbox / folder / "small.jsonl", f"{tag}-small", FAST_MODEL)
    stack.emulator.set_faults(hold_models=[SLOW_MODEL])
    try:
        conf = {"input": f"{folder}/*.jsonl", "poll_interval": 1, "settle_seconds": 0}
        run = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns", "POST", {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        try:
            wait_until(
                "the small file's results",
                lambda: _manifest(stack.results, folder, "small") is not None,
                300,
                interval=1,
                alive=stack.group,
            )
            wait_until(
                "the small file's asset event",
                lambda: "small.jsonl" in _event_files(stack, run_id),
                60,
                interval=1,
            )
        except BaseException:
            print(stack.task_states(run_id))
            print(stack.logs())
            raise
        # At that moment the slow file's batch is still in progress, and nothing of it is written.
        statuses = _batch_statuses(stack)
        slow = [s for k, s in statuses.items() if k.startswith(f"{SLOW_MODEL}:")]
        assert slow == ["in_progress"], statuses
        assert _manifest(stack.results, folder, "slow") is None
        assert "slow.jsonl" not in _event_files(stack, run_id)
        states = stack.task_states(run_id)
        writes = sorted(v for k, v in states.items() if k.startswith("write_results"))
        assert len(writes) == 2, states
        assert "success" in writes, states  # the small file's
        waiting = {"deferred", "up_for_reschedule", "scheduled", "queued"}
        assert {w for w in writes if w != "success"} <= waiting, states
        small = _manifest(stack.results, folder, "small")
        assert small is not None
        assert small["counts"]["succeeded"] == 3, small
    finally:
        stack.emulator.set_faults(hold_models=[])
    ended = stack.wait_for_run(run_id, timeout=300)
    assert ended["state"] == "success", stack.task_states(run_id)
    slow_manifest = _manifest(stack.results, folder, "slow")
    assert slow_manifest is not None
    assert slow_manifest["counts"]["succeeded"] == 3, slow_manifest
    inputs = _event_files(stack, run_id)
    assert inputs == ["slow.jsonl", "small.jsonl"], inputs  # one event per file
