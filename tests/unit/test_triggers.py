"""The batch trigger: serialization, one terminal event per outcome, and a never-blocked event loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import openai
import pytest

from openai_batch.triggers import InputFilesTrigger, OpenAIBatchTrigger, _Waiter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def start_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start an emulator with the given settings and point ``openai_default`` at it."""
    from openai_emulator.testing import EmulatorServer

    servers: list[Any] = []

    def start(**settings: Any) -> Any:
        server = EmulatorServer(
            tmp_path / f"emu{len(servers)}", **{"validating_seconds": 0.1, **settings}
        ).start()
        servers.append(server)
        monkeypatch.setenv(
            "AIRFLOW_CONN_OPENAI_DEFAULT",
            json.dumps({"conn_type": "openai", "password": "test-key", "host": server.base_url}),
        )
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(start_emulator: Any) -> Any:
    return start_emulator(finalizing_seconds=0.1)


def client_for(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)


def create_batch(server: Any, lines: list[dict[str, Any]] | list[str]) -> str:
    client = client_for(server)
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def chat(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": custom_id}]},
    }


async def collect(trigger: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        return [event.payload async for event in trigger.run()]


def test_serialize_round_trip() -> None:
    trigger = OpenAIBatchTrigger(
        conn_id="c",
        batch_id="batch_1",
        poll_interval=3,
        end_time=123.0,
        max_poll_errors=2,
        cancel_on_kill=False,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "openai_batch.triggers.OpenAIBatchTrigger"
    again = OpenAIBatchTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    json.dumps(kwargs)  # must be JSON-safe for the triggerer table

    files = InputFilesTrigger(pattern="/x/*.jsonl", poll_interval=2)
    path, kw = files.serialize()
    assert path == "openai_batch.triggers.InputFilesTrigger"
    assert InputFilesTrigger(**kw).serialize() == (path, kw)


async def test_completed_batch_gives_one_event(emulator: Any) -> None:
    batch_id = create_batch(emulator, [chat("a"), chat("b")])
    events = await collect(OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2))
    assert len(events) == 1
    assert events[0]["status"] == "completed"
    assert events[0]["batch_id"] == batch_id
    assert events[0]["output_file_id"]
    assert events[0]["request_counts"]["completed"] == 2


async def test_an_end_recorded_before_the_wait_starts_fires_only_after_the_deferral_settles(
    start_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end already recorded wakes the wait at its first reading, but not before MIN_FIRE_AFTER_DEFERRAL."""
    import openai_batch.triggers as triggers_module
    from openai_batch.webhooks import EventStore

    monkeypatch.setattr(triggers_module, "MIN_FIRE_AFTER_DEFERRAL", 3.0)
    server = start_emulator(finalizing_seconds=0.1)
    batch_id = create_batch(server, [chat("a")])
    client = openai.OpenAI(base_url=server.base_url, api_key="k")
    for _ in range(100):
        if client.batches.retrieve(batch_id).status == "completed":
            break
        await asyncio.sleep(0.1)
    store = EventStore(tmp_path / "webhooks")
    store.record_end(batch_id, "batch.completed", "evt_1")
    trigger = OpenAIBatchTrigger(
        conn_id="openai_default", batch_id=batch_id, poll_interval=3600, events_dir=str(store.folder)
    )
    started = time.monotonic()
    events = await asyncio.wait_for(collect(trigger), 20)
    took = time.monotonic() - started
    assert [e["status"] for e in events] == ["completed"]
    assert 3.0 <= took < 8.0, took


def _batch_reads(server: Any) -> int:
    routes = server.stats()["requests_by_route"]
    return sum(n for route, n in routes.items() if route.startswith("GET /v1/batches"))


async def test_a_recorded_webhook_wakes_a_wait_with_an_hour_between_polls(
    start_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an hour's poll interval, the wait ends within seconds of its batch's recorded end, in one read."""
    import openai_batch.triggers as triggers_module
    from openai_batch.webhooks import EventStore

    monkeypatch.setattr(triggers_module, "MIN_FIRE_AFTER_DEFERRAL", 2.0)

    server = start_emulator(hold_in_progress=True, finalizing_seconds=0.1)
    batch_id = create_batch(server, [chat("a")])
    store = EventStore(tmp_path / "webhooks")
    trigger = OpenAIBatchTrigger(
        conn_id="openai_default", batch_id=batch_id, poll_interval=3600, events_dir=str(store.folder)
    )
    waiting = asyncio.ensure_future(collect(trigger))
    await asyncio.sleep(3)
    assert not waiting.done()
    reads = _batch_reads(server)
    assert reads == 0  # the wait has read nothing while it waited
    server.set_faults(hold_in_progress=False)
    client, own = openai.OpenAI(base_url=server.base_url, api_key="k"), 0
    while client.batches.retrieve(batch_id).status != "completed":
        own += 1
        await asyncio.sleep(0.1)
    store.record_end(batch_id, "batch.completed", "evt_1")
    started = time.monotonic()
    events = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 5
    assert [e["status"] for e in events] == ["completed"]
    assert _batch_reads(server) - reads - (own + 1) == 1  # the wait read its batch once


async def test_failed_batch_gives_one_event_with_errors(emulator: Any) -> None:
    batch_id = create_batch(emulator, [chat("a"), "{not json"])
    events = await collect(OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2))
    assert [e["status"] for e in events] == ["failed"]
    assert any(err["line"] == 2 for err in events[0]["errors"])


async def test_expired_batch_gives_one_event(emulator: Any) -> None:
    emulator.set_faults(expire_after_requests=1)
    batch_id = create_batch(emulator, [chat("a"), chat("b"), chat("c")])
    events = await collect(OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2))
    assert [e["status"] for e in events] == ["expired"]


async def test_cancelled_batch_gives_one_event(start_emulator: Any) -> None:
    slow = start_emulator(requests_per_second=2)
    batch_id = create_batch(slow, [chat(str(i)) for i in range(50)])
    client_for(slow).batches.cancel(batch_id)
    events = await collect(OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2))
    assert [e["status"] for e in events] == ["cancelled"]


async def test_timeout_cancels_the_batch(start_emulator: Any) -> None:
    slow = start_emulator(requests_per_second=1)
    batch_id = create_batch(slow, [chat(str(i)) for i in range(50)])
    trigger = OpenAIBatchTrigger(
        conn_id="openai_default", batch_id=batch_id, poll_interval=0.2, end_time=time.time() + 1
    )
    events = await collect(trigger)
    assert [e["status"] for e in events] == ["timeout"]
    assert client_for(slow).batches.retrieve(batch_id).status in ("cancelling", "cancelled")


async def test_on_kill_cancels_the_batch(start_emulator: Any) -> None:
    slow = start_emulator(requests_per_second=1)
    batch_id = create_batch(slow, [chat(str(i)) for i in range(50)])
    await OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2).on_kill()
    assert client_for(slow).batches.retrieve(batch_id).status in ("cancelling", "cancelled")


async def test_polling_errors_are_tolerated_then_reported(emulator: Any) -> None:
    batch_id = create_batch(emulator, [chat("a")])
    emulator.set_faults(error_rate=1.0, error_codes=[500])
    trigger = OpenAIBatchTrigger(
        conn_id="openai_default", batch_id=batch_id, poll_interval=0.05, max_poll_errors=3
    )
    events = await collect(trigger)
    assert [e["status"] for e in events] == ["error"]
    assert "4 times" in events[0]["message"]


async def _max_loop_lag(work: Any, duration: float) -> float:
    """Run ``work`` and measure how late a 10 ms ticker wakes up meanwhile; return the worst lag (s)."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    async def bounded() -> None:
        try:
            await asyncio.wait_for(work, duration)
        except TimeoutError:
            pass
        finally:
            stop.set()

    await asyncio.gather(ticker(), bounded())
    return max(lags)


async def test_event_loop_never_blocks_while_the_server_is_slow(start_emulator: Any) -> None:
    slow = start_emulator(requests_per_second=1)
    batch_id = create_batch(slow, [chat(str(i)) for i in range(100)])
    slow.set_faults(latency_ms=400, latency_routes=["GET /v1/batches/*"])
    ours = OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.01)
    our_lag = await _max_loop_lag(collect(ours), 2.5)

    # The provider's trigger calls the sync client inside run(): the same wait blocks the loop.
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger as ProviderTrigger

    theirs = ProviderTrigger(
        conn_id="openai_default", batch_id=batch_id, poll_interval=0, end_time=time.time() + 60
    )
    their_lag = await _max_loop_lag(collect(theirs), 2.5)
    assert our_lag < 0.1, our_lag
    assert their_lag > 0.3, their_lag  # shows the measurement can tell a blocking trigger apart


async def test_a_wait_keeps_no_answer_alive_between_polls() -> None:
    """The last status is dropped before the sleep: a thousand waits holding theirs for an interval
    would push them into the oldest GC generation and bring on full collections that stop the loop."""
    import weakref

    class Answer(dict):  # type: ignore[type-arg]  # a dict that can be weakly referenced
        pass

    earlier: list[weakref.ref[Answer]] = []
    alive_at_next_poll: list[bool] = []

    async def fetch() -> dict[str, Any]:
        if earlier:  # the previous answer, as the wait wakes up for the next poll
            alive_at_next_poll.append(earlier[-1]() is not None)
        status = "completed" if len(earlier) == 3 else "in_progress"
        answer = Answer(id="batch_1", status=status, request_counts={"total": 1})
        earlier.append(weakref.ref(answer))
        return answer

    async def poll(delay: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return await fetch()

    trigger = OpenAIBatchTrigger(conn_id="openai_default", batch_id="batch_1", poll_interval=0.02)
    trigger._log_progress = lambda batch: None  # type: ignore[method-assign]
    waiter = _Waiter(fetch, poll, None, "batch_1")
    event = await asyncio.wait_for(anext(trigger._poll(waiter)), timeout=10)
    assert event.payload["status"] == "completed"
    assert alive_at_next_poll == [False, False, False]


async def test_capacity_trigger_releases_a_leaked_entry_and_keeps_the_live_one(
    start_emulator: Any, tmp_path: Path
) -> None:
    """A waiting shard's trigger looks the model's entries up, releases the ended batch's, and fires."""
    from openai_batch.budget import RECONCILE_SECONDS, Ledger, read_ledger
    from openai_batch.triggers import OpenAIBatchCapacityTrigger

    server = start_emulator(finalizing_seconds=0.1)
    leaked = create_batch(server, [chat("a")])
    client = client_for(server)
    for _ in range(300):
        if client.batches.retrieve(leaked).status == "completed":
            break
        await asyncio.sleep(0.1)
    assert client.batches.retrieve(leaked).status == "completed"
    server.configure(validating_seconds=3600.0)
    live = create_batch(server, [chat("b")])
    ledger_dir = tmp_path / "ledger"
    old = time.time() - RECONCILE_SECONDS - 60
    with Ledger(ledger_dir).locked() as data:
        for key, batch_id in (("leaked", leaked), ("live", live)):
            data["inflight"][key] = {
                "model": "m",
                "tokens": 40,
                "since": old,
                "batch_id": batch_id,
                "label": key,
            }
    trigger = OpenAIBatchCapacityTrigger(
        ledger_dir=str(ledger_dir),
        key="new",
        model="m",
        tokens=40,
        limit=100,
        poll_interval=0.2,
        conn_id="openai_default",
    )
    classpath, kwargs = trigger.serialize()
    assert OpenAIBatchCapacityTrigger(**kwargs).serialize() == (classpath, kwargs)
    events = await collect(trigger)
    assert events == [{"key": "new", "fits": True}]
    inflight = read_ledger(ledger_dir)["inflight"]
    assert set(inflight) == {"live"}  # the trigger does not admit; the live batch keeps its room
    gets = server.stats()["requests_by_route"].get("GET /v1/batches/{batch_id}", 0)
    # Still refused (room for one more of 40 only after the live one ends): nothing looked up again.
    blocked = OpenAIBatchCapacityTrigger(
        ledger_dir=str(ledger_dir),
        key="big",
        model="m",
        tokens=70,
        limit=100,
        poll_interval=0.2,
        conn_id="openai_default",
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await collect(blocked)
    assert server.stats()["requests_by_route"].get("GET /v1/batches/{batch_id}", 0) == gets
    assert set(read_ledger(ledger_dir)["inflight"]) == {"live"}


async def test_capacity_trigger_survives_a_failing_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API that cannot be reached: the entry is kept and the wait goes on (no error, no event)."""
    from openai_batch.budget import RECONCILE_SECONDS, Ledger, read_ledger
    from openai_batch.triggers import OpenAIBatchCapacityTrigger

    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": "test-key", "host": "http://127.0.0.1:9/v1"}),
    )
    ledger_dir = tmp_path / "ledger"
    with Ledger(ledger_dir).locked() as data:
        data["inflight"]["held"] = {
            "model": "m",
            "tokens": 80,
            "since": time.time() - RECONCILE_SECONDS - 60,
            "batch_id": "batch_x",
            "label": "held",
        }
    trigger = OpenAIBatchCapacityTrigger(
        ledger_dir=str(ledger_dir),
        key="new",
        model="m",
        tokens=40,
        limit=100,
        poll_interval=0.2,
        conn_id="openai_default",
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(3):
            await collect(trigger)
    assert set(read_ledger(ledger_dir)["inflight"]) == {"held"}
    assert read_ledger(ledger_dir)["inflight"]["held"]["checked"] > 0
