"""Anthropic Message Batches: the batch record, its public JSON shape, the error envelope and model ids."""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ProcessingStatus = Literal["in_progress", "canceling", "ended"]

#: The Claude models the Message Batches API knows, for ``--strict-models``: the ``ModelParam`` ids of the
#: anthropic SDK this project pins (2.17.0), then the older ones the plugin's price table
#: (plugins/openai_batch/pricing.py) names. Several of those are retired on the real service (Claude Sonnet 4
#: and Opus 4 on 2026-06-15, Opus 4.1 on 2026-08-05, Haiku 3.5 and Sonnet 3.7 before): the emulator keeps
#: them so a strict emulator takes every model the plugin prices. tests/emulator/test_emu_anthropic.py fails
#: when the SDK or the price table names a model this list lacks.
CLAUDE_MODELS = (
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-fable-5-2",
    "claude-fable-5-1",
    "claude-fable-5",
    "claude-mythos-5-2",
    "claude-mythos-5-1",
    "claude-mythos-5",
    "claude-mythos-preview",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    # Older models of the price table (most retired on the real service, see above).
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-opus-4-0",
    "claude-opus-4",
    "claude-sonnet-4-0",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-3-5-haiku",
    "claude-3-haiku",
)

#: Limits of ``POST /v1/messages/batches`` (Anthropic's batch processing guide).
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: Where the results of a batch are served, relative to the server's base URL.
RESULTS_PATH = "/v1/messages/batches/{batch_id}/results"

#: HTTP status of each error type of Anthropic's error envelope.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_type_for(status_code: int) -> str:
    """Return the error type Anthropic uses for an HTTP status code."""
    for name, code in ERROR_STATUS.items():
        if code == status_code:
            return name
    return "api_error" if status_code >= 500 else "invalid_request_error"


def new_request_id() -> str:
    """Return a fresh ``req_...`` id, as the ``request-id`` header and error bodies carry."""
    return "req_" + secrets.token_hex(12)


def error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Return ``{"type": "error", "error": {...}}`` as Anthropic's API shapes it."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


class MessagesAPIError(Exception):
    """Raise when a Message Batches request must be answered with Anthropic's error envelope.

    :param status_code: HTTP status code.
    :param error_type: the envelope's ``error.type``, e.g. ``not_found_error``.
    :param message: human-readable message.
    :param headers: extra response headers, e.g. ``retry-after``.
    """

    def __init__(
        self, status_code: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str) -> MessagesAPIError:
    """Return a 400 ``invalid_request_error``."""
    return MessagesAPIError(400, "invalid_request_error", message)


def not_found(message: str) -> MessagesAPIError:
    """Return a 404 ``not_found_error``."""
    return MessagesAPIError(404, "not_found_error", message)


def is_claude_model(model: str, models: frozenset[str]) -> bool:
    """Return True for one of ``models``, a dated snapshot of one (``...-20251001``) or its ``-latest``."""
    if model in models:
        return True
    base, _, tail = model.rpartition("-")
    return base in models and (tail == "latest" or (len(tail) == 8 and tail.isdigit()))


def rfc3339(seconds: float | None) -> str | None:
    """Return a Unix time as an RFC 3339 string in UTC (``2026-12-06T10:05:36.123456Z``), or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def new_batch_id() -> str:
    """Return a fresh ``msgbatch_...`` id."""
    return "msgbatch_" + secrets.token_hex(12)


@dataclass
class MessageBatchRecord:
    """A message batch: its public fields, its tallies and the worker's checkpoint."""

    id: str
    processing_status: str
    created_time: float
    expires_time: float
    total: int
    model: str | None = None
    ended_time: float | None = None
    cancel_time: float | None = None
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    # Worker checkpoint: private, survives restarts.
    expire_after_requests: int | None = None
    lines_done: int = 0
    input_offset: int = 0
    results_offset: int = 0
    finished_time: float | None = None

    @property
    def ended(self) -> bool:
        """Whether processing has ended (results are available)."""
        return self.processing_status == "ended"

    def to_api(self, base_url: str) -> dict[str, Any]:
        """Return the MessageBatch object JSON; ``base_url`` (no trailing slash) prefixes ``results_url``."""
        if self.ended:
            counts = {
                "processing": 0,
                "succeeded": self.succeeded,
                "errored": self.errored,
                "canceled": self.canceled,
                "expired": self.expired,
            }
        else:
            # As documented: requests count as processing until the whole batch has ended.
            counts = {"processing": self.total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.processing_status,
            "request_counts": counts,
            "ended_at": rfc3339(self.ended_time),
            "created_at": rfc3339(self.created_time),
            "expires_at": rfc3339(self.expires_time),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_time),
            "results_url": base_url + RESULTS_PATH.format(batch_id=self.id) if self.ended else None,
        }

    def to_json(self) -> dict[str, Any]:
        """Return the record for the metadata store."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageBatchRecord:
        """Build a record from :meth:`to_json` output."""
        return cls(**data)
