"""The webhook receiver's decisions, its records, and the triggers' shared reader of them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.webhooks import (
    MAX_BODY_BYTES,
    TOLERANCE_SECONDS,
    EventStore,
    receive,
    shared_ended_batches,
)
from openai_emulator.webhooks import sign

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "whsec_" + base64.b64encode(b"a-secret-of-thirty-two-bytes-abc").decode()
OTHER = "whsec_" + base64.b64encode(b"not-the-secret-of-the-endpoint!!").decode()


def delivery(
    batch_id: str = "batch_abc",
    event_type: str = "batch.completed",
    webhook_id: str = "wh_1",
    secret: str = SECRET,
    sent_at: float | None = None,
    body: bytes | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Return a body and headers as OpenAI sends them (signed as Standard Webhooks specifies)."""
    if body is None:
        event = {
            "id": "evt_1",
            "object": "event",
            "created_at": 1,
            "type": event_type,
            "data": {"id": batch_id},
        }
        body = json.dumps(event).encode()
    stamp = str(int(time.time() if sent_at is None else sent_at))
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign(secret, webhook_id, int(stamp), body),
    }
    return body, headers


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return EventStore(tmp_path / "webhooks")


def test_a_signed_batch_end_is_recorded_and_answered_200(store: EventStore) -> None:
    verdict = receive(store, *delivery(), secret=SECRET)
    assert (verdict.status, verdict.outcome, verdict.batch_id) == (200, "recorded", "batch_abc")
    assert store.ended() == {"batch_abc"}
    assert json.loads((store.events / "batch_abc").read_text())["type"] == "batch.completed"


@pytest.mark.parametrize(
    ("name", "make", "secret", "status", "outcome"),
    [
        ("no secret configured", lambda: delivery(), None, 503, "unconfigured"),
        ("oversized", lambda: delivery(body=b"x" * (MAX_BODY_BYTES + 1)), SECRET, 413, "oversized"),
        ("signed with another secret", lambda: delivery(secret=OTHER), SECRET, 401, "forged"),
        ("too old", lambda: delivery(sent_at=time.time() - TOLERANCE_SECONDS - 5), SECRET, 401, "stale"),
        (
            "from the future",
            lambda: delivery(sent_at=time.time() + TOLERANCE_SECONDS + 5),
            SECRET,
            401,
            "stale",
        ),
        ("a batch id that is a path", lambda: delivery(batch_id="../../x"), SECRET, 400, "malformed"),
        ("signed, but not an event", lambda: delivery(body=b"[1, 2]"), SECRET, 400, "malformed"),
        ("another event type", lambda: delivery(event_type="response.completed"), SECRET, 200, "ignored"),
    ],
)
def test_what_is_refused_and_why(
    store: EventStore, name: str, make: Any, secret: str | None, status: int, outcome: str
) -> None:
    verdict = receive(store, *make(), secret=secret)
    assert (verdict.status, verdict.outcome) == (status, outcome), name
    assert store.ended() == set(), name
    assert not (store.folder / "x").exists()


def test_unsigned_and_tampered_deliveries_are_refused(store: EventStore) -> None:
    body, headers = delivery()
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        assert receive(store, body, partial, SECRET).outcome == "unsigned"
    tampered = body.replace(b"batch_abc", b"batch_xyz")
    assert receive(store, tampered, headers, SECRET).outcome == "forged"
    other_id = {**headers, "webhook-id": "wh_2"}  # the id is part of what is signed
    assert receive(store, body, other_id, SECRET).outcome == "forged"
    assert store.ended() == set()


def test_a_replayed_delivery_is_refused_and_a_forged_one_does_not_use_up_its_id(store: EventStore) -> None:
    forged = delivery(webhook_id="wh_7", secret=OTHER)
    assert receive(store, *forged, secret=SECRET).outcome == "forged"
    genuine = delivery(webhook_id="wh_7")
    assert receive(store, *genuine, secret=SECRET).outcome == "recorded"
    again = receive(store, *genuine, secret=SECRET)
    assert (again.status, again.outcome) == (409, "replayed")
    resigned = delivery(webhook_id="wh_7", sent_at=time.time() + 1)  # a new timestamp, the same id
    assert receive(store, *resigned, secret=SECRET).outcome == "replayed"


def test_counts_add_up_across_store_instances(tmp_path: Path) -> None:
    one, two = EventStore(tmp_path / "w"), EventStore(tmp_path / "w")
    one.count("recorded")
    two.count("forged")
    two.count("forged")
    assert one.counts() == {"recorded": 1, "forged": 2}


def test_prune_forgets_old_ids_and_old_ends_only(store: EventStore) -> None:
    store.take_delivery("wh_old")
    store.record_end("batch_old", "batch.completed", "evt")
    now = time.time()
    assert store.prune(now) == 0
    assert store.prune(now + 3 * 86400) == 2
    assert store.ended() == set()
    assert store.take_delivery("wh_old")  # remembered no longer than a replay could pass the time check


async def test_waits_share_one_reading_and_wake_on_their_own_batch_only(store: EventStore) -> None:
    async with (
        shared_ended_batches(str(store.folder), interval=0.05) as one,
        shared_ended_batches(str(store.folder), interval=0.05) as two,
    ):
        mine, other = one.watch("batch_mine"), two.watch("batch_other")
        await asyncio.sleep(0.2)
        assert not mine.is_set()
        assert not other.is_set()
        store.record_end("batch_mine", "batch.completed", "evt")
        await asyncio.wait_for(mine.wait(), 2)
        assert not other.is_set()
        assert one.readings == two.readings  # one reader for both
        readings = one.readings
        await asyncio.sleep(0.5)
        assert one.readings - readings <= 12  # one listing per interval, not one per wait
