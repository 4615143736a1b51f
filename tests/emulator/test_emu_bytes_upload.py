"""Batch uploads are judged by their content, not their name: the SDK's raw-bytes upload is batch input.

``client.files.create(file=b"...", purpose="batch")`` (Curator's OpenAI batch mode; Instructor's
in-memory mode sends an unnamed ``io.BytesIO``) reaches the server as a file named ``upload``. The
service takes it; it refuses content that is not JSONL, whatever the name.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import chat_file, jsonl, read_lines, wait_for

if TYPE_CHECKING:
    from openai_emulator.testing import EmulatorServer


def _assert_batch_answers(client: openai.OpenAI, file_id: str, n: int) -> None:
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (n, 0)
    answers = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    assert sorted(answers) == sorted(f"req-{i}" for i in range(n))
    assert answers["req-1"]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: question 1"


def test_raw_bytes_upload_then_batch_completes(client: openai.OpenAI) -> None:
    content = chat_file(3)
    uploaded = client.files.create(file=content, purpose="batch")  # as Curator uploads
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("upload", len(content), "batch")
    assert client.files.content(uploaded.id).content == content
    _assert_batch_answers(client, uploaded.id, 3)


def test_unnamed_stream_upload_then_batch_completes(client: openai.OpenAI) -> None:
    # As Instructor's in-memory mode uploads.
    uploaded = client.files.create(file=io.BytesIO(chat_file(2)), purpose="batch")
    assert uploaded.filename == "upload"
    _assert_batch_answers(client, uploaded.id, 2)


async def test_async_bytes_upload_as_curator_does(server: EmulatorServer) -> None:
    """Curator's sequence: AsyncOpenAI, bytes upload, ``wait_for_processing``, batch create, poll."""
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        uploaded = await client.files.create(file=chat_file(4), purpose="batch")
        processed = await client.files.wait_for_processing(uploaded.id, poll_interval=0.05)
        assert (processed.filename, processed.status) == ("upload", "processed")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"request_file": "requests_0.jsonl"},
        )
    sync = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    done = wait_for(sync, batch.id)
    assert done.status == "completed", done.errors
    assert len(read_lines(sync, done.output_file_id)) == 4


@pytest.mark.parametrize(
    "file",
    [
        pytest.param(("requests.json", jsonl([{"custom_id": "a"}])), id="json-name"),
        pytest.param(("requests.txt", chat_file(1)), id="txt-name"),
        pytest.param(("requests", chat_file(1)), id="no-extension"),
    ],
)
def test_jsonl_content_under_any_name_is_batch_input(client: openai.OpenAI, file: tuple[str, bytes]) -> None:
    assert client.files.create(file=file, purpose="batch").filename == file[0]


@pytest.mark.parametrize(
    ("file", "message"),
    [
        pytest.param(
            b"notes: call Bob\n", "Invalid file format for Batch API. Must be .jsonl", id="bytes-text"
        ),
        pytest.param(
            ("notes.txt", b"hello\n"), "Invalid file format for Batch API. Must be .jsonl", id="txt-text"
        ),
        pytest.param(
            ("in.jsonl", b'{"custom_id": "a"}\n[1, 2]\n'),
            "Invalid file format for Batch API. Must be .jsonl",
            id="array-line",
        ),
        pytest.param(b'{"a": "\xff"}\n', "Invalid file for Batch API. Must be utf-8 encoded", id="not-utf8"),
    ],
)
def test_content_that_is_not_jsonl_is_refused(client: openai.OpenAI, file: Any, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=file, purpose="batch")
    error = info.value.response.json()["error"]
    assert error["message"].startswith(message)
    assert error["type"] == "invalid_request_error"
    assert client.files.list(purpose="batch").data == []


def test_missing_line_keys_pass_the_upload_and_fail_the_batch(client: openai.OpenAI) -> None:
    """The service takes a JSONL file whose lines lack ``method``; the batch then fails validation."""
    line = {"custom_id": "a", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": []}}
    uploaded = client.files.create(file=jsonl([line]), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data
    assert (done.errors.data[0].code, done.errors.data[0].param) == ("missing_required_parameter", "method")
