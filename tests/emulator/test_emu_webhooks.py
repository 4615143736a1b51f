"""Signed batch webhooks: what the official SDK accepts, retries, faults and the control plane."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import FAST, chat_file, create_batch, wait_for

from openai_emulator.testing import EmulatorServer, free_port
from openai_emulator.webhooks import SECRET_ENV, delivery_headers, sign

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from openai.types.webhooks import UnwrapWebhookEvent

SECRET = "whsec_" + base64.b64encode(b"emulator-webhook-test-key-32byte").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-webhook-test-key-32bytes").decode()
QUICK = {**FAST, "webhook_retry_seconds": 0.05, "webhook_timeout": 2.0}


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    arrived: float
    status: int


class Receiver:
    """A small HTTP server on 127.0.0.1 that records every POST and answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._changed:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.deliveries.append(Delivery(body, headers, time.monotonic(), status))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def wait(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until at least ``count`` deliveries arrived; return them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"{len(self.deliveries)} deliveries arrived, expected {count}")
            return list(self.deliveries)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def unwrap(delivery: Delivery, secret: str = SECRET) -> UnwrapWebhookEvent:
    """Check a delivery exactly as a receiver using the official SDK does."""
    return openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.unwrap(delivery.body, delivery.headers)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture
def emulator(tmp_path: Path, receiver: Receiver) -> Iterator[EmulatorServer]:
    with EmulatorServer(
        tmp_path / "emulator", webhook_urls=[receiver.url], webhook_secret=SECRET, **QUICK
    ) as server:
        yield server


@pytest.fixture
def client(emulator: EmulatorServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)


def wait_stat(server: EmulatorServer, name: str, value: int, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (stats := server.stats()).get(name, 0) < value:
        if time.monotonic() > deadline:
            raise AssertionError(f"stats[{name!r}] = {stats.get(name, 0)}, expected {value}")
        time.sleep(0.02)
    return stats


def test_signature_matches_the_sdk_check() -> None:
    body = '{"id":"evt_1","object":"event","created_at":1,"type":"batch.completed","data":{"id":"batch_1"}}'
    now = int(time.time())
    headers = delivery_headers(SECRET, "wh_1", now, body)
    assert headers["webhook-signature"] == sign(SECRET, "wh_1", now, body.encode())
    webhooks = openai.OpenAI(api_key="x").webhooks
    webhooks.verify_signature(body, headers, secret=SECRET)
    plain = delivery_headers("not-a-whsec-secret", "wh_1", now, body)  # UTF-8 bytes as the key
    webhooks.verify_signature(body, plain, secret="not-a-whsec-secret")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.verify_signature(body, headers, secret=OTHER_SECRET)


def test_completed_batch_sends_one_verified_event(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    done = wait_for(client, create_batch(client, chat_file(3)).id)
    assert done.status == "completed"
    [delivery] = receiver.wait(1)
    event = unwrap(delivery)
    assert event.type == "batch.completed"
    assert event.data.id == done.id
    assert event.object == "event"
    assert event.id.startswith("evt_")
    assert event.created_at == done.completed_at
    assert delivery.headers["webhook-id"].startswith("wh_")
    assert delivery.headers["content-type"] == "application/json"
    time.sleep(0.3)  # nothing more arrives: exactly one event for the batch
    assert len(receiver.deliveries) == 1
    stats = emulator.stats()
    assert (stats["webhooks_sent"], stats["webhooks_delivered"]) == (1, 1)
    assert emulator.webhooks()["deliveries"]["delivered"] == 1


def test_failed_expired_and_cancelled_batches(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    failed = client.batches.create(
        input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_for(client, failed.id).status == "failed"
    emulator.set_faults(expire_after_requests=2)
    expired = create_batch(client, chat_file(5))
    assert wait_for(client, expired.id).status == "expired"
    emulator.set_faults(expire_after_requests=None, hold_in_progress=True)
    cancelled = create_batch(client, chat_file(5))
    wait_for(client, cancelled.id, ("in_progress",))
    client.batches.cancel(cancelled.id)
    assert wait_for(client, cancelled.id).status == "cancelled"
    events = [unwrap(d) for d in receiver.wait(3)]
    assert {e.data.id: e.type for e in events} == {
        failed.id: "batch.failed",
        expired.id: "batch.expired",
        cancelled.id: "batch.cancelled",
    }
    time.sleep(0.3)
    assert len(receiver.deliveries) == 3
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 3


def test_error_answers_are_retried_with_the_same_id(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    done = wait_for(client, create_batch(client, chat_file(1)).id)
    first, second, third = receiver.wait(3)
    assert [d.status for d in (first, second, third)] == [500, 503, 200]
    assert len({d.headers["webhook-id"] for d in (first, second, third)}) == 1
    assert first.body == second.body == third.body
    assert third.arrived - second.arrived >= 0.09  # the second wait is twice the first (0.05 s)
    assert all(unwrap(d).data.id == done.id for d in (first, second, third))
    stats = wait_stat(emulator, "webhooks_delivered", 1)
    assert (stats["webhooks_sent"], stats["webhooks_failed_attempts"]) == (3, 2)


def test_gives_up_after_max_attempts_and_survives_connection_errors(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    settings = {**QUICK, "webhook_max_attempts": 3}
    with EmulatorServer(tmp_path, webhook_urls=[dead], webhook_secret=SECRET, **settings) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        wait_for(client, create_batch(client, chat_file(1)).id)
        stats = wait_stat(emulator, "webhooks_abandoned", 1)
        assert (stats["webhooks_sent"], stats["webhooks_failed_attempts"]) == (3, 3)
        assert "webhooks_delivered" not in stats
        assert wait_for(client, create_batch(client, chat_file(1)).id).status == "completed"


def test_drop(emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver) -> None:
    emulator.set_faults(webhook_drop_rate=1.0)
    wait_for(client, create_batch(client, chat_file(1)).id)
    wait_stat(emulator, "webhooks_dropped", 1)
    time.sleep(0.3)
    assert receiver.deliveries == []
    assert "webhooks_sent" not in emulator.stats()


def test_delay(emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver) -> None:
    emulator.set_faults(webhook_delay_ms=1000)
    done = wait_for(client, create_batch(client, chat_file(1)).id)
    seen = time.monotonic()
    assert receiver.deliveries == []
    [delivery] = receiver.wait(1)
    assert delivery.arrived - seen >= 0.5
    assert unwrap(delivery).data.id == done.id


def test_duplicate(emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver) -> None:
    emulator.set_faults(webhook_duplicate_rate=1.0)
    done = wait_for(client, create_batch(client, chat_file(1)).id)
    first, second = receiver.wait(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert unwrap(first).data.id == unwrap(second).data.id == done.id
    stats = wait_stat(emulator, "webhooks_delivered", 2)
    assert stats["webhooks_duplicated"] == 1
    time.sleep(0.2)
    assert len(receiver.deliveries) == 2


def test_bad_signature_is_refused_by_the_sdk(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    emulator.set_faults(webhook_bad_signature_rate=1.0)
    wait_for(client, create_batch(client, chat_file(1)).id)
    [delivery] = receiver.wait(1)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(delivery)
    assert emulator.stats()["webhooks_bad_signature"] == 1
    emulator.reset_faults()
    good = wait_for(client, create_batch(client, chat_file(1)).id)
    assert unwrap(receiver.wait(2)[1]).data.id == good.id


def test_reorder_sends_a_later_batch_first(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    emulator.set_faults(webhook_reorder=True, webhook_delay_ms=1500)
    earlier = wait_for(client, create_batch(client, chat_file(1)).id)
    later = wait_for(client, create_batch(client, chat_file(1)).id)
    assert receiver.deliveries == []  # both still held
    first, second = receiver.wait(2)
    assert [unwrap(first).data.id, unwrap(second).data.id] == [later.id, earlier.id]
    assert earlier.completed_at is not None
    assert later.completed_at is not None
    assert earlier.completed_at <= later.completed_at


def test_fault_fields_are_checked(emulator: EmulatorServer) -> None:
    for bad in ({"webhook_drop_rate": 2}, {"webhook_delay_ms": -1}, {"webhook_reorder": "yes"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            emulator.set_faults(**bad)
        assert info.value.code == 400
    emulator.set_faults(webhook_duplicate_rate=0.5, webhook_reorder=True)
    assert emulator.faults()["webhook_duplicate_rate"] == 0.5
    assert emulator.faults()["webhook_reorder"] is True


def test_control_endpoint_changes_urls_and_never_shows_the_secret(
    emulator: EmulatorServer, client: openai.OpenAI, receiver: Receiver
) -> None:
    raw = urllib.request.urlopen(f"{emulator.url}/_emulator/webhooks").read().decode()
    assert SECRET not in raw
    assert SECRET.removeprefix("whsec_") not in raw
    info = json.loads(raw)
    assert info["urls"] == [receiver.url]
    assert info["secret_set"] is True
    other = Receiver()
    try:
        changed = emulator.set_webhooks(urls=[other.url], secret=OTHER_SECRET)
        assert changed["urls"] == [other.url]
        assert OTHER_SECRET not in json.dumps(changed)
        done = wait_for(client, create_batch(client, chat_file(1)).id)
        [delivery] = other.wait(1)
        assert unwrap(delivery, OTHER_SECRET).data.id == done.id
        with pytest.raises(openai.InvalidWebhookSignatureError):
            unwrap(delivery, SECRET)
        assert receiver.deliveries == []
        assert emulator.webhooks()["deliveries"]["delivered"] == 1
        for bad in ({"urls": ["ftp://x"]}, {"urls": "http://x"}, {"secret": "whsec_!!"}, {"other": 1}):
            with pytest.raises(urllib.error.HTTPError) as error:
                _put_webhooks(emulator, bad)
            assert error.value.code == 400
        assert emulator.set_webhooks(urls=[])["urls"] == []
        wait_for(client, create_batch(client, chat_file(1)).id)
        time.sleep(0.3)
        assert len(other.deliveries) == 1
    finally:
        other.close()


def _put_webhooks(server: EmulatorServer, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{server.url}/_emulator/webhooks", data=json.dumps(payload).encode(), method="PUT"
    )
    urllib.request.urlopen(request)


def test_urls_without_any_secret_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match="webhook-secret"):
        EmulatorServer(tmp_path, webhook_urls=[receiver.url])
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    command = [sys.executable, "-m", "openai_emulator", "--data-dir", str(tmp_path), "--webhook-urls"]
    done = subprocess.run([*command, receiver.url], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 2
    assert "--webhook-secret" in done.stderr
    assert SECRET_ENV in done.stderr
    with EmulatorServer(tmp_path, **QUICK) as emulator:  # no URLs: a PUT of URLs alone is refused too
        with pytest.raises(urllib.error.HTTPError) as info:
            emulator.set_webhooks(urls=[receiver.url])
        assert info.value.code == 400
        assert emulator.webhooks()["urls"] == []


def test_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv(SECRET_ENV, OTHER_SECRET)
    with EmulatorServer(tmp_path, webhook_urls=[receiver.url], **QUICK) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        done = wait_for(client, create_batch(client, chat_file(1)).id)
        assert unwrap(receiver.wait(1)[0], OTHER_SECRET).data.id == done.id


def test_shutdown_cancels_pending_deliveries(tmp_path: Path, receiver: Receiver) -> None:
    emulator = EmulatorServer(tmp_path, webhook_urls=[receiver.url], webhook_secret=SECRET, **QUICK).start()
    try:
        emulator.set_faults(webhook_delay_ms=5000)
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        wait_for(client, create_batch(client, chat_file(1)).id)
        assert emulator.webhooks()["pending"] == 1
    finally:
        started = time.monotonic()
        emulator.stop()
    assert time.monotonic() - started < 3
    time.sleep(0.2)
    assert receiver.deliveries == []
