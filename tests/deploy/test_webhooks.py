"""Webhooks first, polling as the net, on a real ``airflow standalone`` stack (API server, triggerer).

The emulator posts each batch's end, signed, to the plugin's receiver on the API server; the waiting
trigger wakes on the recorded end. With ``poll_interval`` 3600 the run ends within a minute of its
batch by webhook alone; with every delivery dropped, the net (a short ``poll_interval``) ends it;
forged and replayed deliveries are refused and counted.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import TYPE_CHECKING

import openai
import pytest

from openai_batch.triggers import MIN_FIRE_AFTER_DEFERRAL
from openai_emulator.webhooks import sign
from tests.deploy.processes import http_json, wait_until
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

#: Held in progress by the emulator until the wait has deferred, so only a wake can end it.
MODEL = "gpt-4.1-nano"


def _write(path: Path, tag: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        {"custom_id": f"{tag}-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for n in range(2)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _run_held(stack: StandaloneStack, folder: str, poll_interval: int) -> tuple[str, str, float]:
    """Run the DAG on ``folder``, its batch held until the wait defers; return run id, batch id, its end."""
    stack.emulator.set_faults(hold_models=[MODEL])
    try:
        conf = {"input": f"{folder}/*.jsonl", "poll_interval": poll_interval, "settle_seconds": 0}
        run_id = http_json(
            f"{stack.api}/dags/{DAG_ID}/dagRuns", "POST", {"logical_date": None, "conf": conf}
        )["dag_run_id"]

        def deferred() -> bool:
            states = stack.task_states(run_id)
            return any(k.startswith("wait_for_batch") and v == "deferred" for k, v in states.items())

        wait_until("the batch's wait to defer", deferred, 240, interval=1, alive=stack.group)
        # A real batch ends long after its wait deferred: past the wake's guard against firing
        # before the deferral settled (MIN_FIRE_AFTER_DEFERRAL), the first net round an interval away.
        time.sleep(MIN_FIRE_AFTER_DEFERRAL + 1)
    finally:
        stack.emulator.set_faults(hold_models=[])
    client = openai.OpenAI(api_key="any", base_url=stack.emulator.base_url)
    held = [b for b in client.batches.list(limit=20) if b.status not in ("completed", "failed")]
    assert len(held) == 1, [(b.id, b.status) for b in held]
    batch_id = held[0].id

    def completed_at() -> float | None:
        batch = client.batches.retrieve(batch_id)
        return float(batch.completed_at) if batch.status == "completed" and batch.completed_at else None

    ended = wait_until("the batch to complete", completed_at, 60, interval=0.2)
    return run_id, batch_id, float(ended)


def _run_end(stack: StandaloneStack, run_id: str, timeout: float) -> float:
    run = stack.wait_for_run(run_id, timeout=timeout)
    assert run["state"] == "success", stack.task_states(run_id)
    return dt.datetime.fromisoformat(run["end_date"]).timestamp()


def _ended_after(stack: StandaloneStack, run_id: str, moment: float) -> dict[str, float]:
    """Return how long after ``moment`` the run's wait and write tasks ended, in seconds."""
    url = f"{stack.api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100"
    phases = {}
    for ti in http_json(url)["task_instances"]:
        if ti["task_id"] in ("wait_for_batch", "write_results") and ti["end_date"]:
            for end in ("start", "end"):
                at = dt.datetime.fromisoformat(ti[f"{end}_date"]).timestamp()
                phases[f"{ti['task_id']} {end}"] = round(at - moment, 1)
    return phases


def _recorded(stack: StandaloneStack) -> set[str]:
    folder = stack.results / "_ledger" / "webhooks" / "events"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _counts(stack: StandaloneStack) -> dict[str, int]:
    counts: dict[str, int] = http_json(f"{stack.url}/openai-batch/webhooks/openai/counts")["counts"]
    return counts


def test_an_hour_between_polls_and_the_run_ends_within_a_minute_of_its_batch(
    standalone: StandaloneStack,  # noqa: F811
) -> None:
    stack = standalone
    folder = f"webhook-{uuid.uuid4().hex[:8]}"
    _write(stack.inbox / folder / "requests.jsonl", folder)
    sent = stack.emulator.stats().get("webhooks_delivered", 0)
    run_id, batch_id, ended = _run_held(stack, folder, poll_interval=3600)
    try:
        finished = _run_end(stack, run_id, timeout=120)
    except BaseException:
        print(stack.logs())
        raise
    assert batch_id in _recorded(stack)  # woken by its webhook: no net round comes within the hour
    assert stack.emulator.stats().get("webhooks_delivered", 0) > sent
    assert finished - ended < 60, (finished - ended, stack.task_states(run_id))
    manifest = json.loads((stack.results / folder / "requests" / "manifest.json").read_text())
    assert manifest["counts"]["succeeded"] == 2, manifest
    phases = _ended_after(stack, run_id, ended)
    print(f"run ended {finished - ended:.1f}s after its batch (webhook); task ends after it: {phases}")


def test_a_dropped_delivery_is_caught_by_the_net(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    folder = f"dropped-{uuid.uuid4().hex[:8]}"
    _write(stack.inbox / folder / "requests.jsonl", folder)
    stack.emulator.set_faults(webhook_drop_rate=1.0)
    try:
        dropped = stack.emulator.stats().get("webhooks_dropped", 0)
        run_id, batch_id, ended = _run_held(stack, folder, poll_interval=15)
        finished = _run_end(stack, run_id, timeout=180)
        assert stack.emulator.stats().get("webhooks_dropped", 0) > dropped
    finally:
        stack.emulator.set_faults(webhook_drop_rate=0.0)
    assert batch_id not in _recorded(stack)  # never delivered: the net's shared round found the end
    assert finished - ended < 15 + 60, finished - ended
    print(f"run ended {finished - ended:.1f}s after its batch (net, poll_interval 15)")


def test_forged_and_replayed_deliveries_are_refused_and_counted(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    before = _counts(stack)
    event = {
        "id": "evt_x",
        "object": "event",
        "created_at": 1,
        "type": "batch.completed",
        "data": {"id": "batch_x"},
    }
    body = json.dumps(event).encode()

    def post(secret: str, webhook_id: str) -> int:
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, webhook_id, stamp, body),
        }
        request = urllib.request.Request(stack.webhook_url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    guess = "whsec_" + base64.b64encode(b"not the stack's webhook secret!!").decode()
    webhook_id = f"wh_{uuid.uuid4().hex}"
    assert post(guess, webhook_id) == 401  # forged
    assert post(stack.webhook_secret, webhook_id) == 200  # the genuine one still gets through
    assert post(stack.webhook_secret, webhook_id) == 409  # replayed
    after = _counts(stack)
    for outcome in ("forged", "replayed", "recorded"):
        assert after.get(outcome, 0) - before.get(outcome, 0) == 1, (outcome, before, after)
    assert "batch_x" in _recorded(stack)
