"""The lean status poller against the real emulator: results, errors, retries, sharing, pool bound."""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
        started = time.monotonic()
        with pytest.raises(BatchPollError, match="timed out") as info:
            await poller.get_batch(batch_id)
        assert poller.calls == 2
        assert time.monotonic() - started < 1.5
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
    emulator.set_faults(latency_ms=300, latency_routes=["GET /v1/batches/*"])

    async def timed(pool_size: int) -> float:
        async with shared_poller(settings(emulator, pool_size=pool_size)) as poller:
            started = time.monotonic()
            await asyncio.gather(*(poller.get_batch(batch_id) for _ in range(8)))
            return time.monotonic() - started

    wide = await timed(8)
    narrow = await timed(2)
    assert wide < 1.0, wide  # 8 at once: about one latency
    assert narrow >= 4 * 0.3 * 0.9, narrow  # 2 at a time: four rounds


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
