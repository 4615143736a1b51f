"""The lean status poller against the real emulator: results, errors, retries, sharing, pool bound."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import openai
import pytest

from openai_batch.poller import (
    BatchNotFoundError,
    BatchPollError,
    BatchStatusPoller,
    PollSettings,
    env_proxy,
    shared_poller,
)
from openai_batch.triggers import OpenAIBatchTrigger

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    from openai_emulator.testing import EmulatorServer

    server = EmulatorServer(tmp_path / "emu", api_key=KEY, requests_per_second=1, validating_seconds=0)
    server.start()
    yield server
    server.stop()


def create_batch(server: Any, count: int = 3) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    data = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        + "\n"
        for i in range(count)
    ).encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def settings(server: Any, **overrides: Any) -> PollSettings:
    values = {"base_url": server.base_url, "api_key": KEY, **overrides}
    return PollSettings(**values)


async def test_get_batch_returns_the_api_json(emulator: Any) -> None:
    batch_id = create_batch(emulator)
    async with shared_poller(settings(emulator)) as poller:
        batch = await poller.get_batch(batch_id)
    assert batch["id"] == batch_id
    assert batch["object"] == "batch"
    assert batch["status"] in ("validating", "in_progress", "finalizing", "completed")
    assert batch["request_counts"]["total"] in (0, 3)


async def test_unknown_batch_raises_not_found_without_retrying(emulator: Any) -> None:
    async with shared_poller(settings(emulator, max_retries=3)) as poller:
        with pytest.raises(BatchNotFoundError) as info:
            await poller.get_batch("batch_doesnotexist")
        assert poller.calls == 1
    assert info.value.status == 404


async def test_server_errors_are_retried_then_raised(emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    batch_id = create_batch(emulator)
    emulator.set_faults(error_rate=1.0, error_codes=[503], error_routes=["GET /v1/batches/*"])
    caplog.set_level(logging.DEBUG)
    async with shared_poller(settings(emulator, max_retries=2)) as poller:
        with pytest.raises(BatchPollError) as info:
            await poller.get_batch(batch_id)
        assert poller.calls == 3  # the first try and two retries
    assert info.value.status == 503
    assert not isinstance(info.value, BatchNotFoundError)
    assert "retry 2" in caplog.text
    assert KEY not in caplog.text
    assert KEY not in str(info.value)


async def test_a_retry_recovers_from_one_error(emulator: Any) -> None:
    batch_id = create_batch(emulator)
    async with shared_poller(settings(emulator, max_retries=1)) as poller:
        emulator.set_faults(error_rate=1.0, error_codes=[500], error_routes=["GET /v1/batches/*"])

        async def heal() -> None:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(emulator.reset_faults)

        healing = asyncio.create_task(heal())
        batch = await poller.get_batch(batch_id)  # the retry waits 0.375-0.5 s: the fault is gone
        await healing
        assert poller.calls == 2
    assert batch["id"] == batch_id


async def test_timeouts_are_mapped_and_retried(emulator: Any) -> None:
    batch_id = create_batch(emulator)
    emulator.set_faults(latency_ms=1500, latency_routes=["GET /v1/batches/*"])
    async with shared_poller(settings(emulator, timeout=0.2, max_retries=1)) as poller:
        with pytest.raises(BatchPollError, match="timed out") as info:  # not an answer after 1.5 s
            await poller.get_batch(batch_id)
        assert poller.calls == 2
    assert info.value.status is None


async def test_a_wrong_key_is_not_retried_and_never_shown(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = create_batch(emulator)
    wrong = "sk-wrong-key-9876543210"
    caplog.set_level(logging.DEBUG)
    async with shared_poller(settings(emulator, api_key=wrong, max_retries=3)) as poller:
        with pytest.raises(BatchPollError) as info:
            await poller.get_batch(batch_id)
        assert poller.calls == 1
        assert wrong not in repr(poller.settings)
    assert info.value.status == 401
    assert wrong not in str(info.value)
    assert wrong not in caplog.text


async def test_one_session_per_loop_and_settings_closed_by_the_last_user(emulator: Any) -> None:
    first = settings(emulator)
    async with shared_poller(first) as a, shared_poller(settings(emulator)) as b:
        assert a is b
        async with shared_poller(settings(emulator, pool_size=3)) as other:
            assert other is not a
        assert other.closed
        assert not a.closed
    assert a.closed
    async with shared_poller(first) as again:
        assert again is not a
        assert not again.closed


async def test_the_pool_bounds_concurrent_connections(emulator: Any) -> None:
    batch_id = create_batch(emulator)

    async def most_at_once(pool_size: int, latency_ms: int) -> int:
        """Send 8 reads at once; return how many the emulator held in its latency at the same time."""
        emulator.reset()  # zeroes the counters (and the faults, set again below)
        emulator.set_faults(latency_ms=latency_ms, latency_routes=["GET /v1/batches/*"])
        async with shared_poller(settings(emulator, pool_size=pool_size)) as poller:
            await asyncio.gather(*(poller.get_batch(batch_id) for _ in range(8)))
        return int(emulator.stats()["calls_in_latency_max"])

    assert await most_at_once(2, latency_ms=300) == 2  # never more than the pool
    assert await most_at_once(8, latency_ms=2000) == 8  # all at once: held long enough for all 8 to arrive


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"api_key": "k", "base_url": "http://h/v1/"}, ("http://h/v1", ()), id="plain"),
        pytest.param(
            {"api_key": "k", "base_url": None, "organization": "org-1", "project": "proj-1"},
            ("https://api.openai.com/v1", (("OpenAI-Organization", "org-1"), ("OpenAI-Project", "proj-1"))),
            id="org-project-default-url",
        ),
        pytest.param(
            {"api_key": "k", "base_url": "http://h", "default_headers": {"X-Team": "a"}},
            ("http://h", (("X-Team", "a"),)),
            id="default-headers",
        ),
        pytest.param({"workload_identity": {"x": 1}, "base_url": "http://h"}, None, id="workload-identity"),
        pytest.param({"api_key": "k", "http_client": object()}, None, id="custom-http-client"),
    ],
)
def test_settings_from_client_kwargs(
    kwargs: dict[str, Any], expected: tuple[str, tuple[tuple[str, str], ...]] | None, monkeypatch: Any
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result = PollSettings.from_client_kwargs(kwargs)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert (result.base_url, result.headers) == expected


def test_the_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    result = PollSettings.from_client_kwargs({"api_key": None, "base_url": "http://h"})
    assert result is not None
    assert result.api_key == "sk-env"
    assert "sk-env" not in repr(result)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert PollSettings.from_client_kwargs({"api_key": None, "base_url": "http://h"}) is None


async def test_trigger_uses_the_sdk_when_the_poller_cannot_honour_the_connection(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.set_faults()
    batch_id = create_batch(emulator, count=1)
    extra = {"openai_client_kwargs": {"default_query": {"trace": "1"}}}
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": KEY, "host": emulator.base_url, "extra": extra}),
    )
    used: list[str] = []
    original = BatchStatusPoller.get_batch

    async def spy(self: BatchStatusPoller, batch_id: str) -> dict[str, Any]:
        used.append(batch_id)
        return await original(self, batch_id)

    monkeypatch.setattr(BatchStatusPoller, "get_batch", spy)
    trigger = OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2)
    async with asyncio.timeout(30):
        events = [event.payload async for event in trigger.run()]
    assert [e["status"] for e in events] == ["completed"]
    assert used == []  # the SDK's client did the polling

    # The same connection without the unsupported option goes through the poller.
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": KEY, "host": emulator.base_url}),
    )
    trigger = OpenAIBatchTrigger(conn_id="openai_default", batch_id=batch_id, poll_interval=0.2)
    async with asyncio.timeout(30):
        events = [event.payload async for event in trigger.run()]
    assert [e["status"] for e in events] == ["completed"]
    assert used == [batch_id]


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128"}, "https://api.openai.com/v1", "http://proxy:3128", id="https"
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "api.openai.com"},
            "https://api.openai.com/v1",
            None,
            id="no-proxy",
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128"}, "http://127.0.0.1:8800/v1", None, id="other-scheme"
        ),
    ],
)
def test_the_proxy_comes_from_the_environment_once(
    env: dict[str, str], url: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(url) == expected


async def test_gc_freeze_setting_freezes_once_when_the_first_poller_starts(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from openai_batch import poller as module

    monkeypatch.setattr(module, "_FROZEN", False)
    monkeypatch.setenv("OPENAI_BATCH_GC_FREEZE", "0")
    async with shared_poller(settings(emulator)):
        assert gc.get_freeze_count() == 0
    monkeypatch.setenv("OPENAI_BATCH_GC_FREEZE", "1")
    try:
        async with shared_poller(settings(emulator)):
            frozen = gc.get_freeze_count()
            assert frozen > 10_000  # Airflow, the SDK and aiohttp are loaded in this process
        assert module.freeze_startup_objects() is False  # once per process
    finally:
        gc.unfreeze()


def _batches_created(server: Any, count: int) -> list[str]:
    return [create_batch(server, 1) for _ in range(count)]


async def test_shared_rounds_answer_many_waits_with_one_listing_per_hundred(emulator: Any) -> None:
    """150 waits asking together cost two listing pages, not 150 GETs, and each gets its own batch."""
    emulator.set_faults(hold_in_progress=True)
    ids = _batches_created(emulator, 150)
    settings = PollSettings(base_url=emulator.base_url, api_key=KEY)
    async with shared_poller(settings) as poller:
        answers = await asyncio.gather(*(poller.status_after(b, 0.2) for b in ids))
        assert [a["id"] for a in answers] == ids
        assert poller.listings == 2
        assert poller.calls == 2


async def test_shared_rounds_read_batches_beyond_the_listed_pages_one_by_one(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait whose batch is older than the pages a round reads is answered by its own GET."""
    import openai_batch.poller as poller_module

    monkeypatch.setattr(poller_module, "LIST_PAGE_SIZE", 10)
    emulator.set_faults(hold_in_progress=True)
    ids = _batches_created(emulator, 40)  # newest last; the listing is newest first
    asked = ids[:3] + ids[-12:]  # 15 waits: 2 pages + 1 extra = the 30 newest batches
    settings = PollSettings(base_url=emulator.base_url, api_key=KEY)
    async with shared_poller(settings) as poller:
        answers = await asyncio.gather(*(poller.status_after(b, 0.2) for b in asked))
        assert [a["id"] for a in answers] == asked
        assert poller.listings == 3
        assert poller.calls == 3 + 3  # the three oldest, one GET each


async def test_waits_that_ask_at_different_moments_share_one_round(emulator: Any) -> None:
    """A wait asking 0.3 s after another, with the same interval, is answered by the same round."""
    emulator.set_faults(hold_in_progress=True)
    first, second = _batches_created(emulator, 2)
    settings = PollSettings(base_url=emulator.base_url, api_key=KEY)
    async with shared_poller(settings) as poller:
        one = asyncio.ensure_future(poller.status_after(first, 1.0))
        await asyncio.sleep(0.3)
        two = asyncio.ensure_future(poller.status_after(second, 1.0))
        assert [a["id"] for a in await asyncio.gather(one, two)] == [first, second]
        assert poller._rounds.rounds == 1
        assert poller.calls == 1


async def test_a_listing_that_fails_falls_back_to_one_get_per_wait(emulator: Any) -> None:
    """A round whose listing fails still answers every wait (each by its own GET)."""
    emulator.set_faults(hold_in_progress=True)
    ids = _batches_created(emulator, 3)
    emulator.set_faults(error_rate=1.0, error_codes=[500], error_routes=["GET /v1/batches"])
    settings = PollSettings(base_url=emulator.base_url, api_key=KEY)
    async with shared_poller(settings) as poller:
        answers = await asyncio.gather(*(poller.status_after(b, 0.2) for b in ids))
        assert [a["id"] for a in answers] == ids
        assert poller.listings == 1
