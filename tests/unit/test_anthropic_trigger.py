"""The batch trigger on an Anthropic connection: Message Batches read through the anthropic SDK."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import anthropic
import pytest

from openai_batch.triggers import OpenAIBatchTrigger

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CONN = "anthropic_default"


@pytest.fixture
def start_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start an emulator with the given settings and point an ``anthropic`` connection at it."""
    from openai_emulator.testing import EmulatorServer

    servers: list[Any] = []

    def start(**settings: Any) -> Any:
        server = EmulatorServer(
            tmp_path / f"emu{len(servers)}", **{"validating_seconds": 0.1, **settings}
        ).start()
        servers.append(server)
        root = server.base_url.rstrip("/").removesuffix("/v1")
        monkeypatch.setenv(
            "AIRFLOW_CONN_ANTHROPIC_DEFAULT",
            json.dumps({"conn_type": "anthropic", "password": "test-key", "host": root}),
        )
        server.root = root
        return server

    yield start
    for server in servers:
        server.stop()


def client_for(server: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.root, api_key="test-key", max_retries=0)


def create_batch(server: Any, n: int) -> str:
    requests: Any = [
        {
            "custom_id": f"r-{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}],
            },
        }
        for i in range(n)
    ]
    return client_for(server).messages.batches.create(requests=requests).id


async def collect(trigger: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        return [event.payload async for event in trigger.run()]


def trigger(batch_id: str, **kwargs: Any) -> OpenAIBatchTrigger:
    return OpenAIBatchTrigger(
        conn_id=CONN, batch_id=batch_id, provider="anthropic", poll_interval=0.2, **kwargs
    )


def test_serialize_keeps_the_provider() -> None:
    path, kwargs = trigger("msgbatch_1").serialize()
    assert kwargs["provider"] == "anthropic"
    assert OpenAIBatchTrigger(**kwargs).provider == "anthropic"


async def test_an_ended_batch_gives_one_completed_event(start_emulator: Any) -> None:
    server = start_emulator(finalizing_seconds=0.1)
    batch_id = create_batch(server, 3)
    events = await collect(trigger(batch_id))
    assert len(events) == 1
    (event,) = events
    assert event["batch_id"] == batch_id
    assert event["status"] == "completed"
    assert event["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert event["output_file_id"] == batch_id  # the results are read by batch id


async def test_a_cancelled_batch_gives_one_cancelled_event(start_emulator: Any) -> None:
    server = start_emulator(requests_per_second=2)
    batch_id = create_batch(server, 50)
    client_for(server).messages.batches.cancel(batch_id)
    events = await collect(trigger(batch_id))
    assert [e["status"] for e in events] == ["cancelled"]


async def test_timeout_and_kill_cancel_the_batch(start_emulator: Any) -> None:
    server = start_emulator(requests_per_second=1)
    first, second = create_batch(server, 50), create_batch(server, 50)
    events = await collect(trigger(first, end_time=time.time() + 1))
    assert [e["status"] for e in events] == ["timeout"]
    await trigger(second).on_kill()
    client = client_for(server)
    for batch_id in (first, second):
        batch = client.messages.batches.retrieve(batch_id)
        assert batch.cancel_initiated_at is not None
        assert batch.processing_status in ("canceling", "ended")


async def test_an_unknown_batch_gives_an_error_event(start_emulator: Any) -> None:
    start_emulator()
    events = await collect(trigger("msgbatch_doesnotexist"))
    assert [e["status"] for e in events] == ["error"]
    assert "not found" in events[0]["message"]


async def test_polling_errors_are_tolerated_then_reported(start_emulator: Any) -> None:
    server = start_emulator()
    batch_id = create_batch(server, 1)
    server.set_faults(error_rate=1.0, error_codes=[529])
    events = await collect(trigger(batch_id, max_poll_errors=2))
    assert [e["status"] for e in events] == ["error"]
    assert "3 times in a row" in events[0]["message"]


async def test_the_capacity_check_reads_anthropic_batches_from_anthropic(start_emulator: Any) -> None:
    """A capacity wait on an Anthropic connection asks Anthropic's API, never OpenAI's, for its batches."""
    from openai_batch.provider import NOT_FOUND
    from openai_batch.triggers import OpenAIBatchCapacityTrigger

    server = start_emulator(requests_per_second=1)
    batch_id = create_batch(server, 5)
    capacity = OpenAIBatchCapacityTrigger(
        ledger_dir="/nonexistent",
        key="k",
        model="claude-haiku-4-5",
        tokens=1,
        limit=1,
        conn_id=CONN,
        provider="anthropic",
    )
    assert capacity.serialize()[1]["provider"] == "anthropic"
    async with capacity._lookup() as status_of:
        assert await status_of(batch_id) == "in_progress"
        assert await status_of("msgbatch_unknown") == NOT_FOUND
    assert server.stats()["requests_by_route"].get("GET /v1/batches/{batch_id}") is None


def test_the_openai_hook_refuses_an_anthropic_connection(start_emulator: Any) -> None:
    from openai_batch.hooks import OpenAIBatchAuthError, OpenAIBatchHook

    start_emulator()
    with pytest.raises(OpenAIBatchAuthError, match="anthropic connection"):
        OpenAIBatchHook(conn_id=CONN).get_conn()


def test_running_look_alikes_are_never_guessed_between(start_emulator: Any, tmp_path: Path) -> None:
    """Two running batches of the same size after the intent: the lookup refuses to pick one."""
    import contextlib

    from openai_batch.anthropic_hook import AmbiguousBatchError, AnthropicBatchHook

    server = start_emulator(requests_per_second=1)
    since = time.time() - 5
    first, second = create_batch(server, 4), create_batch(server, 4)
    shard = tmp_path / "shard.jsonl"
    shard.write_text("")

    def open_stream() -> Any:
        return contextlib.closing(shard.open("rb"))

    hook = AnthropicBatchHook(conn_id=CONN)
    with pytest.raises(AmbiguousBatchError, match="2 running batches"):
        hook.find_batch({}, since=since, requests=4, open_stream=open_stream)
    # Recorded as another round's (a sibling shard's state record): the one left is taken.
    found = hook.find_batch({}, since=since, requests=4, open_stream=open_stream, taken={first}.__contains__)
    assert found is not None
    assert found.id == second
    assert hook.find_batch({}, since=since, requests=3, open_stream=open_stream) is None  # other size
