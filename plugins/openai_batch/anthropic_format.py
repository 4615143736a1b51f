"""Anthropic's Message Batches, in the shapes the pipeline speaks: one owner for every translation.

The pipeline keeps one shape end to end, whatever the provider: shard lines
``{"custom_id", "method", "url", "body"}``, batches as OpenAI's Batch object, and output lines
``{"custom_id", "response": {"status_code", "body"}, "error"}``. Anthropic's API differs on all
three (requests ``{"custom_id", "params"}`` sent inline at create, a MessageBatch object with
``processing_status``, result lines ``{"custom_id", "result": {"type", ...}}``); this module
translates each way, so the core (prepare, rounds, retries, results) never learns a second one.

Pure: standard library only. The shapes are those of Anthropic's API reference
(https://docs.anthropic.com/en/api/creating-message-batches and the pages beside it).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

__all__ = [
    "ENDPOINT",
    "bad_custom_id",
    "batch_json",
    "is_native_line",
    "request_bytes",
    "result_line",
]

#: The endpoint name the pipeline gives Anthropic's Messages API (shard lines carry it as ``url``).
ENDPOINT = "/v1/messages"

#: Anthropic's rule for a request's custom_id within a batch.
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

#: How an ``errored`` result's error type reads as an HTTP status (Anthropic's errors page).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def bad_custom_id(custom_id: str) -> str | None:
    """Return why Anthropic would refuse ``custom_id``, or None when it takes it."""
    if _CUSTOM_ID.fullmatch(custom_id):
        return None
    return (
        f"custom_id {json.dumps(custom_id)[:80]} does not match Anthropic's rule: 1 to 64 characters, "
        "each a letter, a digit, '_' or '-'"
    )


def generated_id(prefix: str, line_no: int) -> str:
    """Return the custom_id of a bare body on line ``line_no``: the file's prefix, made Anthropic-safe."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{prefix}-{line_no}")[-64:]


def is_native_line(obj: dict[str, Any]) -> bool:
    """Return True for a line in Anthropic's batch shape: ``{"custom_id", "params"}`` and nothing else."""
    return "params" in obj and set(obj) <= {"custom_id", "params"}


def request_bytes(shard_line: bytes) -> bytes:
    """Return a shard line as the request Anthropic takes: ``{"custom_id", "params"}`` (compact JSON)."""
    obj = json.loads(shard_line)
    return json.dumps(
        {"custom_id": obj["custom_id"], "params": obj["body"]}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def status_of(batch: dict[str, Any]) -> str:
    """
    Return the Batch status (see :mod:`openai_batch.status`) that an Anthropic MessageBatch stands for.

    ``in_progress`` stays; ``canceling`` is ``cancelling``; ``ended`` is ``cancelled`` after a cancel,
    ``expired`` when requests expired (the 24 h window passed), ``completed`` otherwise. In each
    ended case the results hold every request's own outcome, which is what rounds decide on.
    """
    processing = batch.get("processing_status")
    if processing == "canceling":
        return "cancelling"
    if processing != "ended":
        return "in_progress"
    if batch.get("cancel_initiated_at"):
        return "cancelled"
    counts = batch.get("request_counts") or {}
    return "expired" if counts.get("expired") else "completed"


def batch_json(batch: dict[str, Any]) -> dict[str, Any]:
    """
    Return an Anthropic MessageBatch as the Batch object the pipeline reads.

    ``output_file_id`` is the batch id once it has ended (its results are read by batch id);
    ``error_file_id`` is never set (one stream holds every outcome); ``input_file_id`` is empty
    (requests go inline). ``request_counts`` sums Anthropic's five counts.
    """
    counts = batch.get("request_counts") or {}
    kinds = ("processing", "succeeded", "errored", "canceled", "expired")
    number = {k: int(counts.get(k) or 0) for k in kinds}
    ended = batch.get("processing_status") == "ended"
    return {
        "id": batch.get("id"),
        "object": "batch",
        "endpoint": ENDPOINT,
        "status": status_of(batch),
        "input_file_id": "",
        "output_file_id": batch.get("id") if ended else None,
        "error_file_id": None,
        "created_at": _epoch(batch.get("created_at")),
        "expires_at": _epoch(batch.get("expires_at")),
        "ended_at": _epoch(batch.get("ended_at")),
        "request_counts": {
            "total": sum(number.values()),
            "completed": number["succeeded"],
            "failed": number["errored"] + number["canceled"] + number["expired"],
        },
        "usage": None,
        "errors": None,
        "metadata": None,
    }


def result_line(obj: Any) -> bytes:
    """
    Return one Anthropic result line as an output line of the Batch API's shape (no line break).

    ``succeeded``: a 200 response whose body is the Message. ``errored``: a response with the
    error type's HTTP status and ``{"error": {"code": type, "message"}}``. ``canceled`` and
    ``expired``: no response and the error codes ``batch_cancelled`` / ``batch_expired``, as
    OpenAI reports requests its batch never ran. Anything else is a failed line with code
    ``unknown_result``, so a malformed answer is kept and counted, never taken for success.

    :raises ValueError: the line has no string ``custom_id`` (it cannot be joined to a request).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("an Anthropic result line without a custom_id")
    custom_id = obj["custom_id"]
    raw = obj.get("result")
    result: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = result.get("type")
    out: dict[str, Any] = {"id": None, "custom_id": custom_id, "response": None, "error": None}
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        out["response"] = {"status_code": 200, "request_id": None, "body": result["message"]}
    elif kind == "errored":
        outer = result.get("error")
        inner = outer.get("error") if isinstance(outer, dict) else None
        inner = inner if isinstance(inner, dict) else (outer if isinstance(outer, dict) else {})
        code = str(inner.get("type") or "api_error")
        message = str(inner.get("message") or code)
        body = {"error": {"code": code, "type": code, "message": message}}
        out["response"] = {"status_code": _ERROR_STATUS.get(code, 500), "request_id": None, "body": body}
    elif kind == "canceled":
        out["error"] = {"code": "batch_cancelled", "message": "the batch was cancelled before it ran"}
    elif kind == "expired":
        out["error"] = {"code": "batch_expired", "message": "the batch expired before it ran"}
    else:
        out["error"] = {"code": "unknown_result", "message": f"result type {json.dumps(kind)[:60]}"}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
