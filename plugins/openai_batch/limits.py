"""Service limits of the OpenAI Batch API.

The numbers come from OpenAI's Batch guide: 50,000 requests per batch, a 200 MB input file
and 50,000 embedding inputs per embeddings batch. Every value is a field of
:class:`BatchLimits`, so tests and users can split with smaller limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The batch endpoints of OpenAI's API spec (``CreateBatchRequest.endpoint``).
SUPPORTED_ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

#: Bounds of ``output_expires_after.seconds`` (the spec's BatchFileExpirationAfter), anchored at
#: ``created_at``: one hour to 30 days.
OUTPUT_EXPIRY_SECONDS = (3600, 2_592_000)

#: Largest batch input file we produce. OpenAI documents "200 MB" without saying whether it
#: means 10**6 or 2**20 bytes; 200,000,000 bytes is below both readings, and shard files are
#: measured exactly as uploaded (compact JSON, one ``\n`` per line).
MAX_BATCH_BYTES = 200_000_000

#: Most requests in one batch (and most embedding inputs in one embeddings batch).
MAX_REQUESTS_PER_BATCH = 50_000

#: Largest single request line we send. OpenAI publishes no per-line limit; a synchronous
#: request body of this size is already far beyond any model's context window, while base64
#: images in chat messages still fit.
MAX_REQUEST_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class BatchLimits:
    """Limits one batch input file must respect.

    :param max_requests: most request lines in one batch file.
    :param max_bytes: most bytes in one batch file (see :data:`MAX_BATCH_BYTES`).
    :param max_embedding_inputs: most embedding inputs (strings or token arrays) in one
        embeddings batch.
    :param max_request_bytes: most bytes in one request line, line ending excluded.
    """

    max_requests: int = MAX_REQUESTS_PER_BATCH
    max_bytes: int = MAX_BATCH_BYTES
    max_embedding_inputs: int = MAX_REQUESTS_PER_BATCH
    max_request_bytes: int = MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        if min(self.max_requests, self.max_bytes, self.max_embedding_inputs, self.max_request_bytes) < 1:
            raise ValueError(f"batch limits must be positive: {self}")
        if self.max_request_bytes >= self.max_bytes:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) must be below max_bytes ({self.max_bytes})"
            )


DEFAULT_LIMITS = BatchLimits()

#: Anthropic's Message Batches: "up to 100,000 Message requests or 256 MB in size, whichever is
#: reached first" (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing, Batch
#: limitations). Requests go inline in the create call's JSON body, which is what the 256 MB bounds;
#: shard lines are larger than the requests they become (``method``, ``url`` and ``body`` against
#: ``params``), so a shard under 250,000,000 bytes makes a body under 256 MB in either reading.
ANTHROPIC_LIMITS = BatchLimits(
    max_requests=100_000,
    max_bytes=250_000_000,
    max_embedding_inputs=100_000,
    max_request_bytes=MAX_REQUEST_BYTES,
)

#: Azure OpenAI's batch limits: "Max requests per file 100,000", "Max input file size 200 MB"
#: (https://learn.microsoft.com/en-us/azure/ai-foundry/openai/quotas-limits#batch-limits); the
#: 500 batch files per resource and the per-deployment enqueued-token quota are the deployment's
#: to set through the ``openai_batch_token_limits`` Variable, keyed by deployment name.
AZURE_LIMITS = BatchLimits(
    max_requests=100_000,
    max_bytes=MAX_BATCH_BYTES,
    max_embedding_inputs=MAX_REQUESTS_PER_BATCH,
    max_request_bytes=MAX_REQUEST_BYTES,
)

#: The limits each provider's batches must respect, by provider name (see ``openai_batch.providers``).
PROVIDER_LIMITS: dict[str, BatchLimits] = {
    "openai": DEFAULT_LIMITS,
    "azure": AZURE_LIMITS,
    "anthropic": ANTHROPIC_LIMITS,
}


def limits_for(provider: str, max_requests: int | None = None) -> BatchLimits:
    """Return ``provider``'s limits, with at most ``max_requests`` requests per batch when given."""
    base = PROVIDER_LIMITS.get(provider, DEFAULT_LIMITS)
    if max_requests is None:
        return base
    return BatchLimits(
        max_requests=min(max_requests, base.max_requests),
        max_bytes=base.max_bytes,
        max_embedding_inputs=base.max_embedding_inputs,
        max_request_bytes=base.max_request_bytes,
    )


#: Azure's bounds for ``output_expires_after.seconds``: 14 to 30 days, as its batch how-to gives them
#: for ``expires_after`` and ``output_expires_after`` (https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/batch).
AZURE_OUTPUT_EXPIRY_SECONDS = (1_209_600, 2_592_000)

#: Each provider's bounds where they differ from OpenAI's (Anthropic keeps results 29 days, no setting).
PROVIDER_OUTPUT_EXPIRY_SECONDS: dict[str, tuple[int, int]] = {"azure": AZURE_OUTPUT_EXPIRY_SECONDS}


def check_output_expires_after(value: Any, provider: str = "openai") -> dict[str, Any] | None:
    """Return ``output_expires_after`` as ``provider``'s Batch API takes it, or None when not set.

    :raises ValueError: unless ``value`` is ``{"anchor": "created_at", "seconds": N}`` with N an
        integer in :data:`OUTPUT_EXPIRY_SECONDS` (Azure: :data:`AZURE_OUTPUT_EXPIRY_SECONDS`; both keys
        required, no other key), or when it is set on Anthropic, which has no such setting.
    """
    if value is None or value == {}:
        return None
    if provider == "anthropic":
        raise ValueError(
            "output_expires_after has no Anthropic counterpart (results are kept 29 days): unset it"
        )
    if not isinstance(value, dict) or set(value) != {"anchor", "seconds"}:
        raise ValueError(
            f"output_expires_after must be {{'anchor': 'created_at', 'seconds': N}}, got {value!r}"
        )
    seconds, (low, high) = (
        value["seconds"],
        PROVIDER_OUTPUT_EXPIRY_SECONDS.get(provider, OUTPUT_EXPIRY_SECONDS),
    )
    if value["anchor"] != "created_at":
        raise ValueError(f"output_expires_after.anchor must be 'created_at', got {value['anchor']!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
        raise ValueError(
            f"output_expires_after.seconds must be an integer from {low} to {high}, got {seconds!r}"
        )
    return {"anchor": "created_at", "seconds": seconds}
