"""The webhook route on Airflow's API app (plugins mounted, login on): what it takes, refuses, opens."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from openai_emulator.webhooks import delivery_headers
from tests.dags.test_results_view import DAG_ID, api_client, token_for

if TYPE_CHECKING:
    from pathlib import Path

    from fastapi.testclient import TestClient

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ROUTE = "/openai-batch/webhooks/openai"


def _delivery(batch_id: str, webhook_id: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    event = {
        "id": "evt_1",
        "object": "event",
        "created_at": 1,
        "type": "batch.completed",
        "data": {"id": batch_id},
    }
    body = json.dumps(event).encode()
    return body, delivery_headers(secret, webhook_id, int(time.time()), body)


@pytest.fixture
def receiver(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The API app with login on, and the secret pasted into the connection's extra with a newline."""
    import openai_batch.ui.app as app_module

    emulator = pipeline["emulator"]
    connection = {
        "conn_type": "openai",
        "password": "k",
        "host": emulator.base_url,
        "extra": {"webhook_secret": f"  {SECRET}\n"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(connection))
    monkeypatch.delenv("OPENAI_WEBHOOK_SECRET", raising=False)
    monkeypatch.setattr(app_module, "_secret_cache", (0.0, None))
    monkeypatch.setattr(app_module, "_store_cache", (0.0, None))
    client = api_client(monkeypatch, all_admins=False)
    yield client
    from airflow.api_fastapi.app import purge_cached_app

    purge_cached_app()


def _ended(results: Path) -> set[str]:
    folder = results / "_ledger" / "webhooks" / "events"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_signed_delivery_is_recorded_without_a_login(
    receiver: TestClient, pipeline: dict[str, Any]
) -> None:
    body, headers = _delivery("batch_one", "wh_1")
    response = receiver.post(ROUTE, content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"outcome": "recorded"})
    assert _ended(pipeline["results"]) == {"batch_one"}


def test_forged_replayed_unsigned_and_oversized_deliveries_are_refused_and_counted(
    receiver: TestClient, pipeline: dict[str, Any]
) -> None:
    other = "whsec_" + base64.b64encode(b"an attacker's guess of the key!!").decode()
    body, headers = _delivery("batch_forged", "wh_f", secret=other)
    assert receiver.post(ROUTE, content=body, headers=headers).status_code == 401
    body, headers = _delivery("batch_two", "wh_2")
    assert receiver.post(ROUTE, content=body, headers=headers).status_code == 200
    assert receiver.post(ROUTE, content=body, headers=headers).status_code == 409  # replayed
    unsigned = {"content-type": "application/json"}
    assert receiver.post(ROUTE, content=body, headers=unsigned).status_code == 401
    huge = b"{" + b" " * (2 << 20) + b"}"
    assert receiver.post(ROUTE, content=huge, headers=headers).status_code == 413
    assert _ended(pipeline["results"]) == {"batch_two"}

    counts_url = f"{ROUTE}/counts"
    assert receiver.get(counts_url).status_code == 401  # the counts need a login
    viewer = {"Authorization": f"Bearer {token_for('vic', 'viewer')}"}
    counts = receiver.get(counts_url, headers=viewer).json()["counts"]
    assert counts == {"forged": 1, "recorded": 1, "replayed": 1, "unsigned": 1, "oversized": 1}


def test_the_route_opens_nothing_else_without_a_login(receiver: TestClient) -> None:
    """Without a login every other route of the plugin and of Airflow stays closed; this one takes POST."""
    body, headers = _delivery("batch_three", "wh_3")
    for method, url in (
        ("GET", ROUTE),
        ("PUT", ROUTE),
        ("GET", f"{ROUTE}/counts"),
        ("GET", f"/openai-batch/dags/{DAG_ID}"),
        ("GET", f"/openai-batch/runs/{DAG_ID}/any"),
        ("GET", f"/openai-batch/runs/{DAG_ID}/any/files/0/manifest.json"),
        ("GET", "/api/v2/dags"),
        ("POST", f"{ROUTE}/../../api/v2/dags/{DAG_ID}/dagRuns"),
    ):
        response = receiver.request(method, url, content=body, headers=headers)
        assert response.status_code in (401, 403, 404, 405), (method, url, response.status_code)


def test_without_a_secret_deliveries_are_refused(
    receiver: TestClient, pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_batch.ui.app as app_module

    emulator = pipeline["emulator"]
    connection = {"conn_type": "openai", "password": "k", "host": emulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(connection))
    monkeypatch.setattr(app_module, "_secret_cache", (0.0, None))
    monkeypatch.setattr(app_module, "_store_cache", (0.0, None))
    body, headers = _delivery("batch_four", "wh_4")
    response = receiver.post(ROUTE, content=body, headers=headers)
    assert (response.status_code, response.json()) == (503, {"outcome": "unconfigured"})
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)  # the SDK's own variable
    monkeypatch.setattr(app_module, "_secret_cache", (0.0, None))
    monkeypatch.setattr(app_module, "_store_cache", (0.0, None))
    assert receiver.post(ROUTE, content=body, headers=headers).status_code == 200
    assert _ended(pipeline["results"]) == {"batch_four"}


def test_the_secret_appears_in_no_answer_log_line_or_record(
    receiver: TestClient, pipeline: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever comes in (genuine, forged, replayed, unsigned), the secret stays out of what goes out."""
    import logging

    caplog.set_level(logging.DEBUG)
    key = SECRET.removeprefix("whsec_")
    other = "whsec_" + base64.b64encode(b"an attacker's guess of the key!!").decode()
    answers = []
    for secret, webhook_id in ((SECRET, "wh_s1"), (SECRET, "wh_s1"), (other, "wh_s2")):
        body, headers = _delivery("batch_secret", webhook_id, secret=secret)
        answers.append(receiver.post(ROUTE, content=body, headers=headers).text)
    answers.append(receiver.post(ROUTE, content=b"{}", headers={"content-type": "application/json"}).text)
    assert [json.loads(a)["outcome"] for a in answers] == ["recorded", "replayed", "forged", "unsigned"]
    written = [p.read_bytes() for p in (pipeline["results"] / "_ledger").rglob("*") if p.is_file()]
    for text in (*answers, caplog.text, *(w.decode("utf-8", "replace") for w in written)):
        assert key not in text
