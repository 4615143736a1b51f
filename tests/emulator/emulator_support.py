"""Helpers shared by the emulator tests: request lines, uploads, polling."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

FAST = {
    "validating_seconds": 0.05,
    "finalizing_seconds": 0.05,
    "cancelling_seconds": 0.05,
    "requests_per_second": 0,
}
TERMINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(
    custom_id: str, text: str = "hello", model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body, **extra}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def chat_file(n: int) -> bytes:
    return jsonl([chat_line(f"req-{i}", f"question {i}") for i in range(n)])


def upload(client: openai.OpenAI, content: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, content), purpose="batch").id


def create_batch(
    client: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions", **kw: Any
) -> Batch:
    file_id = upload(client, content)
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kw,
    )


def wait_for(
    client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 15
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} stuck in {batch.status}")
        time.sleep(0.05)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]
