"""Records for files and batches, and their public JSON shapes."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]

TERMINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
SUPPORTED_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOWS = ("24h",)


def new_id(prefix: str) -> str:
    """Return a fresh random id such as ``file-...`` or ``batch_...``."""
    return prefix + secrets.token_hex(12)


@dataclass
class FileRecord:
    """A stored file."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None

    def to_api(self) -> dict[str, Any]:
        """Return the File object JSON."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": self.expires_at,
        }

    def to_json(self) -> dict[str, Any]:
        """Return the record for the metadata store."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        """Build a record from :meth:`to_json` output."""
        return cls(**data)


@dataclass
class BatchRecord:
    """A batch, its public fields and the worker's checkpoint."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None
    model: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    # Which API created the batch: "openai" (/v1) or "azure" (/openai/v1, whose requests name deployments).
    api: str = "openai"
    # Worker checkpoint: everything below is private and survives restarts.
    created_time: float = 0.0
    cancelling_time: float | None = None
    deadline: float = 0.0
    estimated_tokens: int = 0
    expire_after_requests: int | None = None
    expire_fraction: float | None = None
    lines_done: int = 0
    input_offset: int = 0
    output_offset: int = 0
    error_offset: int = 0
    output_lines: int = 0
    error_lines: int = 0
    finalizing_time: float | None = None
    pending_output_file_id: str = field(default_factory=lambda: new_id("file-"))
    pending_error_file_id: str = field(default_factory=lambda: new_id("file-"))

    def to_api(self) -> dict[str, Any]:
        """Return the Batch object JSON."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors is not None else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }

    def to_json(self) -> dict[str, Any]:
        """Return the record for the metadata store."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        """Build a record from :meth:`to_json` output."""
        return cls(**data)
