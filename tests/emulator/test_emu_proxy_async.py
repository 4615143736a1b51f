"""The proxy backend (upstream: a second emulator) and the async client."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import openai
from emulator_support import FAST, chat_file, create_batch, read_lines, wait_for

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path


def test_sync_endpoints_answer_directly(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "Echo: ping"


def test_proxy_backend(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path / "upstream") as upstream:
        upstream.set_faults(
            error_rate=0.3, error_codes=[429, 502], error_routes=["POST /v1/chat/completions"]
        )
        with EmulatorServer(
            tmp_path / "proxy",
            backend="proxy",
            upstream_base_url=upstream.base_url,
            upstream_api_key="upstream-key",
            proxy_concurrency=4,
            proxy_retries=8,
            **FAST,
        ) as proxy:
            client = openai.OpenAI(base_url=proxy.base_url, api_key="test", max_retries=0)
            done = wait_for(client, create_batch(client, chat_file(30)).id)
            assert done.status == "completed"
            assert done.request_counts is not None
            assert done.request_counts.completed == 30
            by_id = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
            body = by_id["req-3"]["response"]["body"]
            assert body["choices"][0]["message"]["content"] == "Echo: question 3"
            assert by_id["req-3"]["response"]["request_id"].startswith("req_")
            stats = upstream.stats()
            assert stats["sync_requests"] == 30
            assert stats["injected_errors"] > 0  # retried by the proxy


def test_proxy_upstream_errors_become_error_lines(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path / "upstream") as upstream:
        upstream.set_faults(error_rate=1.0, error_codes=[500], error_routes=["POST /v1/chat/completions"])
        with EmulatorServer(
            tmp_path / "proxy", backend="proxy", upstream_base_url=upstream.base_url, proxy_retries=1, **FAST
        ) as proxy:
            client = openai.OpenAI(base_url=proxy.base_url, api_key="test", max_retries=0)
            done = wait_for(client, create_batch(client, chat_file(3)).id)
            assert done.status == "completed"
            assert done.output_file_id is None
            errors = read_lines(client, done.error_file_id)
            assert [e["response"]["status_code"] for e in errors] == [500, 500, 500]
            assert all("Injected fault" in e["response"]["body"]["error"]["message"] for e in errors)


def test_proxy_unreachable_upstream(tmp_path: Path) -> None:
    with EmulatorServer(
        tmp_path, backend="proxy", upstream_base_url="http://127.0.0.1:9/v1", proxy_retries=0, **FAST
    ) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="test", max_retries=0)
        done = wait_for(client, create_batch(client, chat_file(2)).id)
        assert done.status == "completed"
        assert [e["response"]["status_code"] for e in read_lines(client, done.error_file_id)] == [502, 502]


async def test_async_client(server: EmulatorServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        uploaded = await client.files.create(file=("in.jsonl", chat_file(50)), purpose="batch")
        batches = await asyncio.gather(
            *(
                client.batches.create(
                    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                for _ in range(3)
            )
        )
        for batch in batches:
            while (batch := await client.batches.retrieve(batch.id)).status != "completed":
                assert batch.status in ("validating", "in_progress", "finalizing")
                await asyncio.sleep(0.05)
            assert batch.request_counts is not None
            assert batch.request_counts.completed == 50
            content = await client.files.content(batch.output_file_id or "")
            assert len(content.text.splitlines()) == 50
        page = await client.batches.list(limit=2)
        assert page.has_more is True
        assert len(page.data) == 2
