"""Anthropic's shapes translated into the pipeline's: batches, result lines, requests, input lines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch import anthropic_format
from openai_batch.limits import ANTHROPIC_LIMITS, limits_for
from openai_batch.prepare import prepare_requests
from openai_batch.results import classify_line, is_retryable
from openai_batch.status import is_terminal

if TYPE_CHECKING:
    from pathlib import Path


def _batch(**fields: Any) -> dict[str, Any]:
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    counts.update(fields.pop("counts", {}))
    return {
        "id": "msgbatch_01",
        "type": "message_batch",
        "processing_status": "ended",
        "request_counts": counts,
        "created_at": "2026-12-06T10:00:00Z",
        "expires_at": "2026-12-07T10:00:00Z",
        "ended_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        pytest.param(
            {"processing_status": "in_progress", "counts": {"processing": 3}}, "in_progress", id="running"
        ),
        pytest.param({"processing_status": "canceling"}, "cancelling", id="canceling"),
        pytest.param({"counts": {"succeeded": 2, "errored": 1}}, "completed", id="ended"),
        pytest.param({"counts": {"succeeded": 2, "expired": 1}}, "expired", id="ended-with-expired"),
        pytest.param(
            {"cancel_initiated_at": "2026-12-06T10:01:00Z", "counts": {"canceled": 3}},
            "cancelled",
            id="cancelled",
        ),
    ],
)
def test_batch_status(fields: dict[str, Any], status: str) -> None:
    batch = anthropic_format.batch_json(_batch(**fields))
    assert batch["status"] == status
    assert is_terminal(batch["status"]) == (fields.get("processing_status", "ended") == "ended")


def test_batch_json_counts_and_files() -> None:
    batch = anthropic_format.batch_json(
        _batch(counts={"succeeded": 5, "errored": 1, "canceled": 1, "expired": 2})
    )
    assert batch["request_counts"] == {"total": 9, "completed": 5, "failed": 4}
    assert batch["output_file_id"] == "msgbatch_01"  # the results are read by batch id
    assert batch["error_file_id"] is None
    assert batch["created_at"] == pytest.approx(1796551200.0)
    running = anthropic_format.batch_json(_batch(processing_status="in_progress"))
    assert running["output_file_id"] is None


_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "usage": {"input_tokens": 7, "output_tokens": 3},
}


@pytest.mark.parametrize(
    ("result", "status", "code", "retryable"),
    [
        pytest.param({"type": "succeeded", "message": _MESSAGE}, "succeeded", None, False, id="succeeded"),
        pytest.param(
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "x"}},
            },
            "failed",
            "invalid_request_error",
            False,
            id="invalid",
        ),
        pytest.param(
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
            },
            "failed",
            "overloaded_error",
            True,
            id="overloaded",
        ),
        pytest.param({"type": "expired"}, "expired", "batch_expired", True, id="expired"),
        pytest.param({"type": "canceled"}, "cancelled", "batch_cancelled", True, id="canceled"),
        pytest.param({"type": "something-new"}, "failed", "unknown_result", False, id="unknown"),
        pytest.param(None, "failed", "unknown_result", False, id="no-result"),
    ],
)
def test_result_line(result: Any, status: str, code: str | None, retryable: bool) -> None:
    line = json.loads(anthropic_format.result_line({"custom_id": "r-1", "result": result}))
    assert line["custom_id"] == "r-1"
    got_status, body, error = classify_line(line)
    assert got_status == status
    assert (error or {}).get("code") == code
    assert is_retryable(got_status, error) is retryable
    if status == "succeeded":
        assert body == _MESSAGE


def test_result_line_without_custom_id_is_refused() -> None:
    with pytest.raises(ValueError, match="custom_id"):
        anthropic_format.result_line({"result": {"type": "succeeded", "message": _MESSAGE}})


def test_request_bytes_sends_the_body_as_params() -> None:
    shard_line = (
        b'{"custom_id":"a","method":"POST","url":"/v1/messages","body":{"model":"m","max_tokens":1}}\n'
    )
    assert json.loads(anthropic_format.request_bytes(shard_line)) == {
        "custom_id": "a",
        "params": {"model": "m", "max_tokens": 1},
    }


@pytest.mark.parametrize(
    ("custom_id", "ok"),
    [
        pytest.param("req_1-A", True, id="plain"),
        pytest.param("a" * 64, True, id="64-chars"),
        pytest.param("a" * 65, False, id="65-chars"),
        pytest.param("has space", False, id="space"),
        pytest.param("dot.ted", False, id="dot"),
        pytest.param("", False, id="empty"),
    ],
)
def test_custom_id_rule(custom_id: str, ok: bool) -> None:
    assert (anthropic_format.bad_custom_id(custom_id) is None) is ok


def test_generated_ids_follow_the_rule() -> None:
    custom_id = anthropic_format.generated_id("my.file-00f6ad3f", 12)
    assert custom_id == "my_file-00f6ad3f-12"
    assert anthropic_format.bad_custom_id(custom_id) is None


def _body(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def _prepare(tmp_path: Path, lines: list[Any], endpoint: str) -> tuple[list[dict[str, Any]], dict[int, str]]:
    data = b"".join((json.dumps(x).encode() if not isinstance(x, bytes) else x) + b"\n" for x in lines)
    work = tmp_path / endpoint.strip("/").replace("/", "-")
    limits = ANTHROPIC_LIMITS if endpoint == anthropic_format.ENDPOINT else limits_for("openai")
    try:
        prepare_requests([data], source_name="day.v2.jsonl", work_dir=work, endpoint=endpoint, limits=limits)
    except ValueError:
        pass  # no valid line: the rejects are written all the same
    sent = [
        json.loads(line)
        for shard in sorted(work.glob("shard-*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    rejects = {
        r["line"]: r["reason"] for r in map(json.loads, (work / "rejects.jsonl").read_text().splitlines())
    }
    return sent, rejects


def test_prepare_takes_anthropic_lines_on_an_anthropic_connection(tmp_path: Path) -> None:
    lines: list[Any] = [
        {"custom_id": "q-1", "params": _body("native")},
        _body("bare"),
        {"custom_id": "bad id", "params": _body("x")},
        {
            "custom_id": "q-2",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [1]},
        },
        {"custom_id": "q-1", "params": _body("again")},
        {
            "custom_id": "q-3",
            "params": {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]},
        },
        {"custom_id": "q-4", "params": _body("x", max_tokens=0)},
        {"custom_id": "q-5", "params": _body("x", stream=True)},
        {"custom_id": "q-6", "params": "not an object"},
    ]
    sent, rejects = _prepare(tmp_path, lines, anthropic_format.ENDPOINT)
    assert [s["custom_id"] for s in sent] == ["q-1", "day_v2-" + sent[1]["custom_id"].split("-", 1)[1]]
    assert all(s["url"] == anthropic_format.ENDPOINT for s in sent)
    assert sent[0]["body"] == _body("native")
    assert anthropic_format.bad_custom_id(sent[1]["custom_id"]) is None
    assert set(rejects) == {3, 4, 5, 6, 7, 8, 9}
    assert "Anthropic's rule" in rejects[3]
    assert "openai connection" in rejects[4]
    assert "duplicate custom_id 'q-1'" in rejects[5]
    assert "params.max_tokens is missing" in rejects[6]
    assert "max_tokens must be a positive integer" in rejects[7]
    assert "stream" in rejects[8]
    assert "params must be a JSON object" in rejects[9]


def test_prepare_refuses_anthropic_lines_on_an_openai_connection(tmp_path: Path) -> None:
    lines: list[Any] = [
        {"custom_id": "q-1", "params": _body("native")},
        {"custom_id": "q-2", "method": "POST", "url": "/v1/messages", "body": _body("x")},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "ok"}]},
    ]
    sent, rejects = _prepare(tmp_path, lines, "/v1/chat/completions")
    assert len(sent) == 1
    assert "anthropic connection" in rejects[1]
    assert "anthropic connection" in rejects[2]


@pytest.mark.parametrize(
    ("conn_type", "host", "extra", "provider"),
    [
        pytest.param("openai", None, {}, "openai", id="openai-default"),
        pytest.param("openai", "https://api.openai.com/v1", {}, "openai", id="openai-host"),
        pytest.param("openai", "https://myres.openai.azure.com/openai/v1/", {}, "azure", id="azure-host"),
        pytest.param(
            "openai", "https://r.cognitiveservices.azure.com/openai/v1/", {}, "azure", id="azure-cogsvc"
        ),
        pytest.param("openai", "http://127.0.0.1:8800/openai/v1", {"azure": True}, "azure", id="azure-extra"),
        pytest.param(
            "openai", "https://evil.openai.azure.com.example.org/v1", {}, "openai", id="lookalike-host"
        ),
        pytest.param("anthropic", "https://api.anthropic.com", {}, "anthropic", id="anthropic"),
        pytest.param("Anthropic", None, {}, "anthropic", id="anthropic-case"),
        pytest.param("openai", "myres.openai.azure.com", {}, "azure", id="azure-host-without-scheme"),
        pytest.param("openai", None, {"azure": "true"}, "azure", id="azure-extra-string"),
    ],
)
def test_the_connection_decides_the_provider(
    conn_type: str, host: str | None, extra: dict[str, Any], provider: str
) -> None:
    from openai_batch.providers import provider_of_connection

    assert provider_of_connection(conn_type, host, extra) == provider


@pytest.mark.parametrize(
    ("provider", "endpoint", "expected"),
    [
        pytest.param("anthropic", "/v1/chat/completions", "/v1/messages", id="anthropic-default"),
        pytest.param("anthropic", "/v1/embeddings", None, id="anthropic-openai-endpoint"),
        pytest.param("openai", "/v1/messages", None, id="openai-anthropic-endpoint"),
        pytest.param("azure", "/v1/responses", "/v1/responses", id="azure"),
    ],
)
def test_endpoint_follows_the_provider(provider: str, endpoint: str, expected: str | None) -> None:
    from openai_batch.providers import ProviderMismatchError, endpoint_for

    if expected is None:
        with pytest.raises(ProviderMismatchError):
            endpoint_for(provider, endpoint)
    else:
        assert endpoint_for(provider, endpoint) == expected


def test_each_provider_has_its_limits() -> None:
    assert limits_for("anthropic").max_requests == 100_000
    assert limits_for("azure").max_requests == 100_000
    assert limits_for("openai").max_requests == 50_000
    assert limits_for("anthropic", 10).max_requests == 10
