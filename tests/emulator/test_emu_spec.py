"""The emulator against OpenAI's published OpenAPI spec: its JSON is checked with the spec's own schemas.

One table per deviation the spec review found; each case validates the emulator's answer (and the request
the test sends) with ``spec_schemas``, never with a hand-copied list of fields.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest
from emulator_support import FAST, chat_line, jsonl, read_lines, upload, wait_for
from spec_schemas import assert_valid, is_valid, spec

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# endpoint -> (a request body, the spec's request schema, the spec's response schema)
ENDPOINTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "/v1/chat/completions": (
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        "CreateChatCompletionRequest",
        "CreateChatCompletionResponse",
    ),
    "/v1/completions": (
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"},
        "CreateCompletionRequest",
        "CreateCompletionResponse",
    ),
    "/v1/embeddings": (
        {"model": "text-embedding-3-small", "input": ["first", "second"]},
        "CreateEmbeddingRequest",
        "CreateEmbeddingResponse",
    ),
    "/v1/moderations": (
        {"model": "omni-moderation-latest", "input": "Is this fine?"},
        "CreateModerationRequest",
        "CreateModerationResponse",
    ),
    "/v1/responses": (
        {"model": "gpt-4o-mini", "input": "Tell me a joke", "instructions": "Be brief", "temperature": 0.2},
        "CreateResponse",
        "Response",
    ),
    "/v1/images/generations": (
        {"model": "gpt-image-1", "prompt": "A lighthouse at dusk", "n": 2, "quality": "low"},
        "CreateImageRequest",
        "ImagesResponse",
    ),
    "/v1/images/edits": (
        {
            "model": "gpt-image-1",
            "prompt": "Add a red hat",
            "images": [{"image_url": "https://example.com/cat.png"}, {"file_id": "file-abc123"}],
        },
        "EditImageBodyJsonParam",
        "ImagesResponse",
    ),
    "/v1/videos": (
        {"model": "sora-2", "prompt": "Waves on a beach at sunrise", "seconds": "8", "size": "1280x720"},
        "CreateVideoJsonBody",
        "VideoResource",
    ),
}
# Endpoints whose responses carry token usage, which the batch object sums up.
REPORTS_USAGE = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/images/edits",
}


def _line(custom_id: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def _create(client: openai.OpenAI, endpoint: str, content: bytes, **kw: Any) -> Any:
    request = {
        "input_file_id": upload(client, content),
        "endpoint": endpoint,
        "completion_window": "24h",
        **kw,
    }
    assert_valid("CreateBatchRequest", request)
    batch = client.batches.with_raw_response.create(**request).http_response.json()
    assert_valid("Batch", batch)
    return batch


def _api_error(info: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body: dict[str, Any] = info.value.response.json()
    assert_valid("ErrorResponse", body)
    return body["error"]


def _png_size(data: bytes) -> tuple[int, int]:
    """Return a PNG's width and height after checking its signature, chunk CRCs and pixel data."""
    assert data.startswith(PNG_SIGNATURE)
    offset, chunks = len(PNG_SIGNATURE), {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, payload = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks[kind] = payload
        offset += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height


def test_subset_lists_the_eight_batch_endpoints() -> None:
    schema = spec()["components"]["schemas"]["CreateBatchRequest"]
    assert set(schema["properties"]["endpoint"]["enum"]) == set(ENDPOINTS)


# [medium] every batch endpoint of the spec, in a batch and through the echo backend


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_spec_endpoint_runs_in_a_batch(client: openai.OpenAI, endpoint: str) -> None:
    body, request_schema, response_schema = ENDPOINTS[endpoint]
    assert_valid(request_schema, body)
    lines = [_line("a", endpoint, body), _line("b", endpoint, body)]
    for line in lines:
        assert_valid("BatchRequestInput", line)
    created = _create(client, endpoint, jsonl(lines))
    assert created["status"] == "validating"

    done = wait_for(client, created["id"])
    raw = client.batches.with_raw_response.retrieve(done.id).http_response.json()
    assert_valid("Batch", raw)
    assert raw["status"] == "completed", raw["errors"]
    assert raw["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    if endpoint in REPORTS_USAGE:
        assert raw["usage"]["input_tokens"] > 0
        assert raw["usage"]["total_tokens"] > raw["usage"]["input_tokens"] or endpoint == "/v1/embeddings"

    outputs = read_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == ["a", "b"]
    for output in outputs:
        assert_valid("BatchRequestOutput", output)
        assert output["response"]["status_code"] == 200
        assert_valid(response_schema, output["response"]["body"])
    if endpoint.startswith("/v1/images/"):
        images = [image for o in outputs for image in o["response"]["body"]["data"]]
        assert len(images) == 2 * int(body.get("n", 1))
        for image in images:
            assert _png_size(base64.b64decode(image["b64_json"], validate=True)) == (8, 8)
        usage = outputs[0]["response"]["body"]["usage"]
        assert usage["output_tokens_details"]["image_tokens"] > 0
    if endpoint == "/v1/videos":
        video = outputs[0]["response"]["body"]
        assert (video["status"], video["prompt"], video["seconds"], video["size"]) == (
            "queued",
            body["prompt"],
            "8",
            "1280x720",
        )


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_spec_endpoint_answers_synchronously(client: openai.OpenAI, endpoint: str) -> None:
    body, _, response_schema = ENDPOINTS[endpoint]
    response = client.post(endpoint.removeprefix("/v1"), body=body, cast_to=httpx2.Response)
    assert response.status_code == 200
    assert_valid(response_schema, response.json())


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        pytest.param("/v1/images/generations", {"model": "gpt-image-1"}, "body.prompt", id="image-no-prompt"),
        pytest.param("/v1/images/edits", {"prompt": "Add a hat"}, "body.images", id="edit-no-images"),
        pytest.param(
            "/v1/images/edits", {"images": [{"file_id": "file-1"}]}, "body.prompt", id="edit-no-prompt"
        ),
        pytest.param("/v1/videos", {"model": "sora-2", "seconds": "4"}, "body.prompt", id="video-no-prompt"),
    ],
)
def test_new_endpoints_need_their_required_body_fields(
    client: openai.OpenAI, endpoint: str, body: dict[str, Any], param: str
) -> None:
    request_schema = ENDPOINTS[endpoint][1]
    assert not is_valid(request_schema, body)
    done = wait_for(client, _create(client, endpoint, jsonl([_line("x", endpoint, body)]))["id"])
    assert done.status == "failed"
    assert done.errors is not None
    assert [(e.code, e.param, e.line) for e in done.errors.data] == [("invalid_request", param, 1)]


# [medium] output_expires_after follows BatchFileExpirationAfter


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"anchor": "created_at", "seconds": 3600}, id="lowest"),
        pytest.param({"anchor": "created_at", "seconds": 2_592_000}, id="highest"),
        pytest.param({"anchor": "created_at", "seconds": 86_400}, id="one-day"),
        pytest.param({"anchor": "created_at", "seconds": 3599}, id="below-range"),
        pytest.param({"anchor": "created_at", "seconds": 10}, id="ten-seconds"),
        pytest.param({"anchor": "created_at", "seconds": 99_999_999}, id="far-above-range"),
        pytest.param({"anchor": "bogus", "seconds": 3600}, id="bogus-anchor"),
        pytest.param({"seconds": 3600}, id="no-anchor"),
        pytest.param({"anchor": "created_at"}, id="no-seconds"),
        pytest.param({"anchor": "created_at", "seconds": "3600"}, id="seconds-as-string"),
        pytest.param({"anchor": "created_at", "seconds": 3600.5}, id="fractional-seconds"),
        pytest.param({"anchor": "created_at", "seconds": 3600, "extra": 1}, id="extra-key"),
        pytest.param([], id="not-an-object"),
    ],
)
def test_output_expires_after_is_accepted_exactly_as_the_spec_says(client: openai.OpenAI, value: Any) -> None:
    request = {
        "input_file_id": upload(client, jsonl([chat_line("a")])),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "output_expires_after": value,
    }
    # The schema has no additionalProperties: false; the emulator refuses unknown keys like other params.
    spec_ok = is_valid("CreateBatchRequest", request) and (
        not isinstance(value, dict)
        or set(value)
        <= {
            "anchor",
            "seconds",
        }
    )
    if not spec_ok:
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(**request)
        error = _api_error(info)
        assert error["param"].startswith("output_expires_after")
        return
    created = client.batches.with_raw_response.create(**request).http_response.json()
    assert_valid("Batch", created)
    done = wait_for(client, created["id"])
    assert done.status == "completed"
    output = client.files.with_raw_response.retrieve(done.output_file_id or "").http_response.json()
    assert_valid("OpenAIFile", output)
    assert output["purpose"] == "batch_output"
    assert output["expires_at"] == pytest.approx(output["created_at"] + value["seconds"], abs=1)


# [medium] the input file of a batch must have purpose "batch"


@pytest.mark.parametrize(
    ("purpose", "accepted"),
    [
        pytest.param("batch", True, id="batch"),
        pytest.param("user_data", False, id="user-data"),
        pytest.param("assistants", False, id="assistants"),
        pytest.param("fine-tune", False, id="fine-tune"),
        # Not "evals": the spec's OpenAIFile lists no such purpose although CreateFileRequest accepts it.
        pytest.param("vision", False, id="vision"),
    ],
)
def test_batch_input_must_have_purpose_batch(client: openai.OpenAI, purpose: str, accepted: bool) -> None:
    uploaded = client.files.with_raw_response.create(
        file=("in.jsonl", jsonl([chat_line("a")])),
        purpose=purpose,  # type: ignore[arg-type]
    ).http_response.json()
    assert_valid("OpenAIFile", uploaded)
    request = {
        "input_file_id": uploaded["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    if accepted:
        created = client.batches.with_raw_response.create(**request).http_response.json()
        assert_valid("Batch", created)
        assert wait_for(client, created["id"]).status == "completed"
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(**request)  # type: ignore[arg-type]
    error = _api_error(info)
    assert error["param"] == "input_file_id"
    assert purpose in error["message"]
    assert client.batches.list().data == []


# [low-medium] /v1/responses bodies carry every field the spec's Response requires


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "gpt-4o-mini", "input": "Hello"}, id="text-input"),
        pytest.param(
            {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Hello"}]}, id="message-input"
        ),
        pytest.param(
            {
                "model": "gpt-4.1-mini",
                # Content parts are left out: the spec's InputItem oneOf matches them twice (ambiguous).
                "input": [{"role": "developer", "content": "Be kind"}, {"role": "user", "content": "Hi"}],
                "instructions": "Answer in French",
                "metadata": {"ticket": "42"},
                "temperature": 0.3,
                "top_p": 0.9,
                "max_output_tokens": 64,
            },
            id="with-settings",
        ),
    ],
)
def test_responses_output_is_a_spec_response(client: openai.OpenAI, body: dict[str, Any]) -> None:
    assert_valid("CreateResponse", body)
    done = wait_for(
        client, _create(client, "/v1/responses", jsonl([_line("r", "/v1/responses", body)]))["id"]
    )
    [output] = read_lines(client, done.output_file_id)
    assert_valid("BatchRequestOutput", output)
    response = output["response"]["body"]
    assert_valid("Response", response)
    for name in ("instructions", "metadata", "temperature", "top_p"):
        if name in body:
            assert response[name] == body[name]
    text = response["output"][0]["content"][0]
    assert text["logprobs"] == []


# [low] Files API: JSONL only for purpose batch, expires_after per spec, no unknown fields, 512 MB


@pytest.mark.parametrize(
    ("filename", "content", "accepted"),
    [
        pytest.param("in.jsonl", jsonl([chat_line("a"), chat_line("b")]), True, id="jsonl"),
        pytest.param("in.jsonl", b"\r\n" + jsonl([chat_line("a")]) + b"\n\n", True, id="blank-lines"),
        pytest.param("in.jsonl", b"{not json but an object line\n", True, id="bad-line-left-to-validation"),
        pytest.param("in.jsonl", b"hello world\n", False, id="plain-text"),
        pytest.param("in.jsonl", b'[{"custom_id": "a"}]\n', False, id="json-array"),
        pytest.param("in.jsonl", PNG_SIGNATURE + b"\x00\x00\x00\rIHDR", False, id="binary"),
        pytest.param("in.jsonl", jsonl([chat_line("a")]) + b"42\n", False, id="number-line"),
        pytest.param("in.json", jsonl([chat_line("a")]), True, id="jsonl-content-under-a-json-name"),
        pytest.param("in.jsonl", jsonl([chat_line("a", "x" * 3_000_000)]), True, id="3-mb-line"),
        pytest.param("in.jsonl", b" " * 3_000_000 + b"x\n", False, id="text-after-3-mb-of-spaces"),
        pytest.param("in.jsonl", jsonl([chat_line("a")]) + b'{"a": "\xc3"}\n', False, id="not-utf8"),
    ],
)
def test_batch_uploads_must_be_jsonl(
    client: openai.OpenAI, filename: str, content: bytes, accepted: bool
) -> None:
    if accepted:
        created = client.files.with_raw_response.create(file=(filename, content), purpose="batch")
        assert_valid("OpenAIFile", created.http_response.json())
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=(filename, content), purpose="batch")
    assert _api_error(info)["param"] == "file"
    # The same bytes are fine for a purpose that is not batch input.
    other = client.files.with_raw_response.create(file=(filename, content), purpose="user_data")
    assert_valid("OpenAIFile", other.http_response.json())
    assert [f.purpose for f in client.files.list().data] == ["user_data"]


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"expires_after": {"anchor": "created_at", "seconds": 3600}}, id="expiry-lowest"),
        pytest.param({"expires_after": {"anchor": "created_at", "seconds": 2_592_000}}, id="expiry-highest"),
        pytest.param({"expires_after": {"seconds": 3600}}, id="expiry-without-anchor"),
        pytest.param({"expires_after": {"anchor": "created_at"}}, id="expiry-without-seconds"),
        pytest.param({"expires_after": {"anchor": "bogus", "seconds": 3600}}, id="expiry-bogus-anchor"),
        pytest.param({"expires_after": {"anchor": "created_at", "seconds": 10}}, id="expiry-too-short"),
        pytest.param({"expires_after": {"anchor": "created_at", "seconds": 2_592_001}}, id="expiry-too-long"),
        pytest.param({"extra_body": {"colour": "blue"}}, id="unknown-field"),
        pytest.param({"extra_body": {"expires_at": "1"}}, id="unknown-expiry-field"),
    ],
)
def test_file_form_is_accepted_exactly_as_the_spec_says(client: openai.OpenAI, form: dict[str, Any]) -> None:
    content = jsonl([chat_line("a")])
    fields = {"file": "<binary>", "purpose": "batch", **form.get("extra_body", {})}
    if "expires_after" in form:
        fields["expires_after"] = form["expires_after"]
    spec_ok = is_valid("CreateFileRequest", fields)
    if not spec_ok:
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("in.jsonl", content), purpose="batch", **form)
        _api_error(info)
        assert client.files.list().data == []
        return
    created = client.files.with_raw_response.create(file=("in.jsonl", content), purpose="batch", **form)
    body = created.http_response.json()
    assert_valid("OpenAIFile", body)
    assert body["expires_at"] == body["created_at"] + form["expires_after"]["seconds"]


@pytest.mark.parametrize(
    ("purpose", "size", "accepted"),
    [
        pytest.param("user_data", 1000, True, id="user-data-at-limit"),
        pytest.param("user_data", 1001, False, id="user-data-over-limit"),
        pytest.param("batch", 1001, False, id="batch-over-limit"),
    ],
)
def test_no_file_above_the_size_limit(tmp_path: Path, purpose: str, size: int, accepted: bool) -> None:
    line = json.dumps(chat_line("a")).encode()
    content = (line + b" " * (size - len(line) - 1) + b"\n")[:size]
    assert len(content) == size
    with EmulatorServer(tmp_path, max_file_bytes=1000, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        if accepted:
            created = client.files.with_raw_response.create(file=("in.jsonl", content), purpose=purpose)  # type: ignore[arg-type]
            assert_valid("OpenAIFile", created.http_response.json())
            return
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("in.jsonl", content), purpose=purpose)  # type: ignore[arg-type]
        assert _api_error(info)["param"] == "file"
        assert client.files.list().data == []


def test_default_file_limit_is_512_mb() -> None:
    from openai_emulator.settings import EmulatorSettings

    settings = EmulatorSettings()
    assert settings.max_file_bytes == 512 * 1024 * 1024
    assert settings.max_input_file_bytes == 200 * 1024 * 1024


# [low] an embeddings batch holds at most 50,000 inputs in total


def _embedding_lines(inputs_per_line: list[int]) -> bytes:
    lines = [
        _line(
            f"e{i}",
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": ["x"] * n if n > 1 else "x"},
        )
        for i, n in enumerate(inputs_per_line)
    ]
    return jsonl(lines)


@pytest.mark.parametrize(
    ("inputs_per_line", "status"),
    [
        pytest.param([25_000, 25_000], "completed", id="exactly-50000"),
        pytest.param([25_001, 25_001], "failed", id="50002-in-two-lines"),
        pytest.param([50_000, 1], "failed", id="50001-with-a-string-input"),
    ],
)
def test_embedding_inputs_per_batch(client: openai.OpenAI, inputs_per_line: list[int], status: str) -> None:
    created = _create(client, "/v1/embeddings", _embedding_lines(inputs_per_line))
    done = wait_for(client, created["id"], timeout=60)
    raw = client.batches.with_raw_response.retrieve(done.id).http_response.json()
    assert_valid("Batch", raw)
    assert raw["status"] == status
    if status == "failed":
        [error] = raw["errors"]["data"]
        assert_valid("BatchError", error)
        assert error["code"] == "too_many_embedding_inputs"
        assert str(sum(inputs_per_line)) in error["message"]
    else:
        assert raw["request_counts"]["completed"] == len(inputs_per_line)


# [low] list pages: first_id/last_id are strings in file lists, even when empty


@pytest.mark.parametrize("files", [0, 1, 3])
def test_file_and_batch_lists_are_spec_lists(client: openai.OpenAI, files: int) -> None:
    for i in range(files):
        _create(client, "/v1/chat/completions", jsonl([chat_line(f"c{i}")]))
    page = client.files.with_raw_response.list(purpose="batch").http_response.json()
    assert_valid("ListFilesResponse", page)
    assert len(page["data"]) == files
    empty = client.files.with_raw_response.list(purpose="vision").http_response.json()
    assert_valid("ListFilesResponse", empty)
    assert (empty["data"], empty["has_more"]) == ([], False)
    batches = client.batches.with_raw_response.list().http_response.json()
    assert_valid("ListBatchesResponse", batches)
    assert len(batches["data"]) == files


# [low] request_id and body id are unique per request, across lines and batches


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_identical_bodies_get_their_own_ids(client: openai.OpenAI, endpoint: str) -> None:
    body = ENDPOINTS[endpoint][0]
    content = jsonl([_line(f"same-{i}", endpoint, body) for i in range(3)])
    outputs = []
    for _ in range(2):
        done = wait_for(client, _create(client, endpoint, content)["id"])
        assert done.status == "completed"
        outputs += read_lines(client, done.output_file_id)
    assert len(outputs) == 6
    for output in outputs:
        assert_valid("BatchRequestOutput", output)
    assert len({o["id"] for o in outputs}) == 6
    assert len({o["response"]["request_id"] for o in outputs}) == 6
    bodies = [o["response"]["body"] for o in outputs]
    if "id" in bodies[0]:
        assert len({b["id"] for b in bodies}) == 6
    if endpoint != "/v1/responses":  # its output items carry ids of their own
        # Only the ids (and timestamps) differ: the answer to a body stays deterministic.
        volatile = ("id", "created", "created_at")
        assert len({json.dumps({k: v for k, v in b.items() if k not in volatile}) for b in bodies}) == 1


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_default_models_cover_every_endpoint_under_strict_models(tmp_path: Path, endpoint: str) -> None:
    body = ENDPOINTS[endpoint][0]
    with EmulatorServer(tmp_path, strict_models=True, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        assert body["model"] in [m.id for m in client.models.list()]
        done = wait_for(client, _create(client, endpoint, jsonl([_line("a", endpoint, body)]))["id"])
        assert done.status == "completed", done.errors
