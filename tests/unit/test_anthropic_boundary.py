"""The key of an Anthropic connection goes to the connection's host only, whatever the service answers."""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.anthropic_hook import AnthropicBatchHook, ForeignHostError, origin_guard

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "sk-ant-boundary-0123456789"


@pytest.fixture
def two_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """The connection's API, and another server that must never hear from it."""
    from openai_emulator.testing import EmulatorServer

    with (
        EmulatorServer(tmp_path / "api", validating_seconds=0.05, finalizing_seconds=0.05) as api,
        EmulatorServer(tmp_path / "elsewhere") as elsewhere,
    ):
        for server in (api, elsewhere):
            server.root = server.base_url.rstrip("/").removesuffix("/v1")
        monkeypatch.setenv(
            "AIRFLOW_CONN_ANTHROPIC_DEFAULT",
            json.dumps({"conn_type": "anthropic", "password": KEY, "host": api.root}),
        )
        yield api, elsewhere


def _ended_batch(hook: AnthropicBatchHook) -> str:
    import time

    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    batch_id = hook.client.messages.batches.create(requests=[{"custom_id": "a", "params": params}]).id
    deadline = time.monotonic() + 30
    while hook.get_batch(batch_id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return batch_id


@pytest.mark.parametrize(
    ("base", "url", "allowed"),
    [
        pytest.param("https://api.anthropic.com", "https://api.anthropic.com/v1/x", True, id="same"),
        pytest.param(
            "https://api.anthropic.com", "https://API.anthropic.com:443/v1/x", True, id="default-port"
        ),
        pytest.param("https://api.anthropic.com", "http://api.anthropic.com/v1/x", False, id="scheme"),
        pytest.param("https://api.anthropic.com", "https://api.anthropic.com.evil.io/v1", False, id="suffix"),
        pytest.param("http://127.0.0.1:8800", "http://127.0.0.1:8801/v1", False, id="port"),
    ],
)
def test_origin_guard(base: str, url: str, allowed: bool) -> None:
    import httpx2

    check = origin_guard(base)
    request = httpx2.Request("GET", url)
    if allowed:
        check(request)
    else:
        with pytest.raises(ForeignHostError, match="the key goes nowhere else"):
            check(request)


def test_a_results_url_pointing_elsewhere_gets_no_call(two_servers: tuple[Any, Any]) -> None:
    api, elsewhere = two_servers
    hook = AnthropicBatchHook()
    batch_id = _ended_batch(hook)
    out = io.BytesIO()
    assert hook.download_file(batch_id, out) > 0  # the connection's own results_url is fine
    assert b'"custom_id":"a"' in out.getvalue()

    batches = hook.client.messages.batches
    genuine = batches.retrieve

    def hostile_retrieve(*args: Any, **kwargs: Any) -> Any:
        batch = genuine(*args, **kwargs)
        return batch.model_copy(
            update={"results_url": f"{elsewhere.root}/v1/messages/batches/{batch_id}/results"}
        )

    batches.retrieve = hostile_retrieve  # type: ignore[method-assign]
    with pytest.raises(ForeignHostError):
        hook.download_file(batch_id, io.BytesIO())
    assert elsewhere.stats().get("requests_total", 0) == 0


def test_the_async_client_calls_the_connections_host_only(two_servers: tuple[Any, Any]) -> None:
    api, elsewhere = two_servers

    async def go() -> None:
        client = await AnthropicBatchHook().shared_async_client()
        await client.messages.batches.list()
        with pytest.raises(ForeignHostError):
            await client.get(f"{elsewhere.root}/v1/messages/batches", cast_to=object)

    asyncio.run(go())
    assert api.stats()["requests_total"] >= 1
    assert elsewhere.stats().get("requests_total", 0) == 0
