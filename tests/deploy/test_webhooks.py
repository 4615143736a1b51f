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

import pytest

from openai_emulator.webhooks import delivery_headers
from tests.deploy.processes import http_json
from tests.deploy.standalone import HELD_MODEL, StandaloneStack, standalone  # noqa: F401 - fixture

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


def _run_end(stack: StandaloneStack, run_id: str, timeout: float) -> float:
    run = stack.wait_for_run(run_id, timeout=timeout)
    assert run["state"] == "success", stack.task_states(run_id)
    return dt.datetime.fromisoformat(run["end_date"]).timestamp()


def _counts(stack: StandaloneStack) -> dict[str, int]:
    counts: dict[str, int] = http_json(f"{stack.url}/openai-batch/webhooks/openai/counts")["counts"]
    return counts


def test_an_hour_between_polls_and_the_run_ends_within_a_minute_of_its_batch(
    standalone: StandaloneStack,  # noqa: F811
) -> None:
    stack = standalone
    folder = f"webhook-{uuid.uuid4().hex[:8]}"
    stack.write_requests(stack.inbox / folder / "requests.jsonl", folder, HELD_MODEL)
    sent = stack.emulator.stats().get("webhooks_delivered", 0)
    run_id, batch_id, ended = stack.run_held(folder, HELD_MODEL, poll_interval=3600)
    try:
        finished = _run_end(stack, run_id, timeout=120)
    except BaseException:
        print(stack.logs())
        raise
    assert batch_id in stack.recorded_ends()  # woken by its webhook: no net round comes within the hour
    assert stack.emulator.stats().get("webhooks_delivered", 0) > sent
    assert finished - ended < 60, (finished - ended, stack.task_states(run_id))
    manifest = json.loads((stack.results / folder / "requests" / "manifest.json").read_text())
    assert manifest["counts"]["succeeded"] == 2, manifest
    phases = stack.ended_after(run_id, ended)
    print(f"run ended {finished - ended:.1f}s after its batch (webhook); task ends after it: {phases}")


def test_a_dropped_delivery_is_caught_by_the_net(standalone: StandaloneStack) -> None:  # noqa: F811
    stack = standalone
    folder = f"dropped-{uuid.uuid4().hex[:8]}"
    stack.write_requests(stack.inbox / folder / "requests.jsonl", folder, HELD_MODEL)
    stack.emulator.set_faults(webhook_drop_rate=1.0)
    try:
        dropped = stack.emulator.stats().get("webhooks_dropped", 0)
        run_id, batch_id, ended = stack.run_held(folder, HELD_MODEL, poll_interval=15)
        finished = _run_end(stack, run_id, timeout=180)
        assert stack.emulator.stats().get("webhooks_dropped", 0) > dropped
    finally:
        stack.emulator.set_faults(webhook_drop_rate=0.0)
    assert batch_id not in stack.recorded_ends()  # never delivered: the net's shared round found the end
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
        headers = delivery_headers(secret, webhook_id, int(time.time()), body)
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
    assert "batch_x" in stack.recorded_ends()
