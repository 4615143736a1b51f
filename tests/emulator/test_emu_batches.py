"""Batch lifecycle: validation failures, happy path, pagination, cancel, expiry, all-failed batches."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import FAST, chat_file, chat_line, create_batch, jsonl, read_lines, wait_for

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path

LINE = chat_line("a")


def _without(field: str) -> dict[str, Any]:
    return {k: v for k, v in LINE.items() if k != field}


def _body(**changes: Any) -> dict[str, Any]:
    body = {**LINE["body"], **changes}
    return {**LINE, "body": {k: v for k, v in body.items() if v is not None}}


VALIDATION_CASES = [
    pytest.param(b"{not json\n", "invalid_json_line", None, 1, id="invalid-json"),
    pytest.param(b"\xef\xbb\xbf" + jsonl([LINE]), "invalid_json_line", None, 1, id="bom-first-line"),
    pytest.param(
        jsonl([_without("custom_id")]), "missing_required_parameter", "custom_id", 1, id="no-custom-id"
    ),
    pytest.param(jsonl([_without("method")]), "missing_required_parameter", "method", 1, id="no-method"),
    pytest.param(jsonl([_without("url")]), "missing_required_parameter", "url", 1, id="no-url"),
    pytest.param(jsonl([_without("body")]), "missing_required_parameter", "body", 1, id="no-body"),
    pytest.param(jsonl([LINE, chat_line("a")]), "duplicate_custom_id", "custom_id", 2, id="duplicate-id"),
    pytest.param(jsonl([{**LINE, "url": "/v1/embeddings"}]), "invalid_url", "url", 1, id="url-mismatch"),
    pytest.param(jsonl([_body(model=None)]), "invalid_request", "body.model", 1, id="no-model"),
    pytest.param(jsonl([_body(messages=None)]), "invalid_request", "body.messages", 1, id="no-messages"),
    pytest.param(jsonl([_body(stream=True)]), "streaming_unsupported", "body.stream", 1, id="stream"),
    pytest.param(
        jsonl([LINE, chat_line("b", model="gpt-4o")]), "model_mismatch", "body.model", 2, id="mixed-models"
    ),
    pytest.param(b"", "empty_file", None, None, id="empty-file"),
    pytest.param(b"\n\n", "empty_file", None, None, id="blank-file"),
]


@pytest.mark.parametrize(("content", "code", "param", "line"), VALIDATION_CASES)
def test_validation_failures(
    client: openai.OpenAI, content: bytes, code: str, param: str | None, line: int | None
) -> None:
    batch = create_batch(client, content)
    assert batch.status == "validating"
    batch = wait_for(client, batch.id)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.errors is not None
    assert batch.errors.object == "list"
    assert batch.errors.data
    error = batch.errors.data[0]
    assert (error.code, error.param, error.line) == (code, param, line)
    assert error.message


def test_embeddings_without_input_fails(client: openai.OpenAI) -> None:
    line = {
        "custom_id": "e",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small"},
    }
    batch = wait_for(client, create_batch(client, jsonl([line]), endpoint="/v1/embeddings").id)
    assert batch.errors is not None
    assert batch.errors.data
    assert (batch.errors.data[0].code, batch.errors.data[0].param) == ("invalid_request", "body.input")


def test_too_many_tasks(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, max_requests_per_batch=3, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        assert wait_for(client, create_batch(client, chat_file(3)).id).status == "completed"
        batch = wait_for(client, create_batch(client, chat_file(4)).id)
        assert batch.status == "failed"
        assert batch.errors is not None
        assert batch.errors.data
        assert batch.errors.data[0].code == "too_many_tasks"


def test_unknown_model_with_strict_models(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, strict_models=True, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        batch = wait_for(client, create_batch(client, jsonl([chat_line("a", model="gpt-9")])).id)
        assert batch.errors is not None
        assert batch.errors.data
        assert (batch.errors.data[0].code, batch.errors.data[0].param) == ("model_not_found", "body.model")


def test_happy_path_chat(client: openai.OpenAI) -> None:
    n = 300
    batch = create_batch(client, chat_file(n), metadata={"run": "happy"})
    assert batch.id.startswith("batch_")
    assert batch.expires_at == batch.created_at + 86400
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.in_progress_at
    assert done.finalizing_at
    assert done.completed_at
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (n, n, 0)
    assert done.model == "gpt-4o-mini"
    assert done.metadata == {"run": "happy"}
    assert done.error_file_id is None
    output_file = client.files.retrieve(done.output_file_id or "")
    assert output_file.purpose == "batch_output"
    lines = read_lines(client, done.output_file_id)
    assert len(lines) == n
    assert [line["custom_id"] for line in lines] != [f"req-{i}" for i in range(n)], "output order is shuffled"
    by_id = {line["custom_id"]: line for line in lines}
    assert set(by_id) == {f"req-{i}" for i in range(n)}
    sample = by_id["req-7"]
    assert sample["id"].startswith("batch_req_")
    assert sample["error"] is None
    assert sample["response"]["status_code"] == 200
    assert sample["response"]["request_id"]
    completion = openai.types.chat.ChatCompletion.model_validate(sample["response"]["body"])
    assert completion.choices[0].message.content == "Echo: question 7"
    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)
    assert usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines
    )
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0


ENDPOINT_CASES = [
    pytest.param("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}, id="embeddings"),
    pytest.param("/v1/completions", {"model": "gpt-4o-mini", "prompt": "Say hi"}, id="completions"),
    pytest.param("/v1/moderations", {"input": "some text"}, id="moderations"),
    pytest.param("/v1/responses", {"model": "gpt-4o-mini", "input": "Say hi"}, id="responses"),
]


@pytest.mark.parametrize(("endpoint", "body"), ENDPOINT_CASES)
def test_other_endpoints(client: openai.OpenAI, endpoint: str, body: dict[str, Any]) -> None:
    line = {"custom_id": "x", "method": "POST", "url": endpoint, "body": body}
    done = wait_for(client, create_batch(client, jsonl([line]), endpoint=endpoint).id)
    assert done.status == "completed"
    (result,) = read_lines(client, done.output_file_id)
    payload = result["response"]["body"]
    if endpoint == "/v1/embeddings":
        parsed = openai.types.CreateEmbeddingResponse.model_validate(payload)
        assert len(parsed.data) == 2
        assert len(parsed.data[0].embedding) == 8
        assert parsed.data[0].embedding != parsed.data[1].embedding
    elif endpoint == "/v1/completions":
        assert openai.types.Completion.model_validate(payload).choices[0].text == "Echo: Say hi"
    elif endpoint == "/v1/moderations":
        assert len(openai.types.ModerationCreateResponse.model_validate(payload).results) == 1
    else:
        assert openai.types.responses.Response.model_validate(payload).output_text == "Echo: Say hi"


def test_batch_list_pagination(client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch").id
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    newest_first = ids[::-1]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True
    assert page.first_id == newest_first[0]
    assert page.last_id == newest_first[1]
    page2 = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in page2.data] == newest_first[2:4]
    page3 = client.batches.list(limit=2, after=page2.data[-1].id)
    assert [b.id for b in page3.data] == newest_first[4:]
    assert page3.has_more is False
    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # auto-pagination
    assert len(client.batches.list().data) == 5
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_cancel_keeps_partial_output(tmp_path: Path) -> None:
    settings = {**FAST, "requests_per_second": 100}
    with EmulatorServer(tmp_path, **settings) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        n = 400
        batch = create_batch(client, chat_file(n))
        deadline = time.monotonic() + 10
        while (current := client.batches.retrieve(batch.id)).request_counts.completed < 40:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert current.status == "in_progress"
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at
        done = wait_for(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at
        counts = done.request_counts
        assert counts is not None
        assert counts.total == n
        assert 0 < counts.completed < n
        assert counts.completed + counts.failed == n
        finished = read_lines(client, done.output_file_id)
        cancelled = read_lines(client, done.error_file_id)
        assert len(finished) == counts.completed
        assert {e["error"]["code"] for e in cancelled} == {"batch_cancelled"}
        assert all(e["response"] is None for e in cancelled)
        ids = {line["custom_id"] for line in finished} | {line["custom_id"] for line in cancelled}
        assert ids == {f"req-{i}" for i in range(n)}
        assert len(finished) + len(cancelled) == n
        assert client.batches.cancel(batch.id).status == "cancelled"


def test_expiry_keeps_partial_output(tmp_path: Path) -> None:
    settings = {**FAST, "requests_per_second": 100, "completion_window_seconds": 1.0}
    with EmulatorServer(tmp_path, **settings) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        n = 500
        batch = create_batch(client, chat_file(n))
        assert batch.expires_at == batch.created_at + 1
        done = wait_for(client, batch.id)
        assert done.status == "expired"
        assert done.expired_at
        counts = done.request_counts
        assert counts is not None
        assert counts.total == n
        assert 0 < counts.completed < n
        assert counts.completed + counts.failed == n
        finished = read_lines(client, done.output_file_id)
        expired = read_lines(client, done.error_file_id)
        assert len(finished) == counts.completed
        assert len(expired) == counts.failed
        assert {e["error"]["code"] for e in expired} == {"batch_expired"}
        assert {x["custom_id"] for x in finished + expired} == {f"req-{i}" for i in range(n)}
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)


def test_all_requests_failed_is_completed_without_output(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, request_failure_rate=1.0, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        done = wait_for(client, create_batch(client, chat_file(20)).id)
        assert done.status == "completed"
        assert done.output_file_id is None
        assert done.error_file_id is not None
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 20)
        errors = read_lines(client, done.error_file_id)
        assert len(errors) == 20
        assert {e["response"]["status_code"] for e in errors} <= {429, 500}
        assert all(e["response"]["body"]["error"]["message"] for e in errors)
        assert done.usage is not None
        assert done.usage.total_tokens == 0


def test_request_counts_advance_while_in_progress(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, **{**FAST, "requests_per_second": 200}) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        batch = create_batch(client, chat_file(300))
        seen: set[int] = set()
        while (current := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
            if current.status == "in_progress" and current.request_counts is not None:
                seen.add(current.request_counts.completed)
            time.sleep(0.05)
        assert len([c for c in seen if 0 < c < 300]) >= 2
        assert current.status == "completed"


def test_output_lines_are_json_envelopes(client: openai.OpenAI) -> None:
    done = wait_for(client, create_batch(client, chat_file(3)).id)
    raw = client.files.content(done.output_file_id or "").text
    for line in raw.splitlines():
        assert set(json.loads(line)) == {"id", "custom_id", "response", "error"}
