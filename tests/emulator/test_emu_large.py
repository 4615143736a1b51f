"""A 50,000-request batch, the service's per-batch maximum."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from emulator_support import read_lines, wait_for

if TYPE_CHECKING:
    import openai

    from openai_emulator.testing import EmulatorServer


@pytest.mark.slow
def test_fifty_thousand_requests(server: EmulatorServer, client: openai.OpenAI) -> None:
    n = 50_000
    body = {"model": "text-embedding-3-small", "input": "x"}
    content = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": body}) + "\n"
        for i in range(n)
    ).encode()
    file_id = client.files.create(file=("big.jsonl", content), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_for(client, batch.id, timeout=60)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (n, n)
    lines = read_lines(client, done.output_file_id)
    assert len({line["custom_id"] for line in lines}) == n
