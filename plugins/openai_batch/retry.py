"""The one retry policy: which failures are worth another attempt, and how long to wait before it.

Three layers retry, and all three read this module:

- **a call** (the hook's upload and create, the poller's GET): an HTTP status in
  :data:`RETRYABLE_HTTP_STATUSES`, or no answer at all, may succeed when sent again
  (:func:`is_transient_status`); the wait before attempt ``n + 1`` is :meth:`Backoff.delay`;
- **a wait** (the triggers' poll loop): up to :data:`MAX_POLL_ERRORS` failed polls in a row are
  tolerated before the wait ends in an error;
- **a request** (the rounds): an expired or cancelled request, or one that failed with a code in
  :data:`RETRYABLE_ERROR_CODES` (or a synthesised ``http_<status>`` of a transient status), is sent
  again in a follow-up batch (:func:`is_retryable_request`), for up to ``max_retry_rounds``
  rounds (:data:`DEFAULT_RETRY_ROUNDS`).

Pure: standard library only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: Statuses after which the same call may succeed; the openai SDK retries the same set.
RETRYABLE_HTTP_STATUSES: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})

#: Per-request error codes that a later batch may well succeed on.
RETRYABLE_ERROR_CODES: frozenset[str] = frozenset(
    {
        "batch_expired",
        "batch_cancelled",
        "rate_limit_exceeded",
        "server_error",
        "internal_error",
        "internal_server_error",
        "service_unavailable",
        "timeout",
        "engine_overloaded",
        "server_overloaded",
        "token_limit_exceeded",
        # Anthropic's error types for the same transient causes (its errors page).
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    }
)

#: Attempts of one upload or create call (the first one included).
CALL_ATTEMPTS = 6

#: Consecutive failed polls a wait tolerates before it ends with an error event.
MAX_POLL_ERRORS = 5

#: Follow-up rounds for retryable requests, unless the DAG's params say otherwise.
DEFAULT_RETRY_ROUNDS = 2


def is_transient_status(status: int | None) -> bool:
    """Return True when a call that got this HTTP status (None: no answer) may succeed if sent again."""
    return status is None or status in RETRYABLE_HTTP_STATUSES or status >= 500


def is_retryable_code(code: str | None) -> bool:
    """Return True when a per-request error code is worth another attempt."""
    if not code:
        return False
    if code in RETRYABLE_ERROR_CODES:
        return True
    # Codes synthesised from a bare HTTP status, see results.classify_line. A 409 conflict is
    # worth repeating as a call (the conflicting operation may have finished) but not as a request.
    if code.startswith("http_") and code[5:].isdigit():
        return code != "http_409" and is_transient_status(int(code[5:]))
    return False


def is_retryable_request(status: str, error: dict[str, Any] | None) -> bool:
    """Return True when a request with this outcome is worth resubmitting in a follow-up round.

    Expired and cancelled requests are; failed ones only for rate limits (429), server errors (5xx),
    timeouts (408) and the transient codes of :data:`RETRYABLE_ERROR_CODES`. Other client errors
    (4xx) are not: the same request would fail the same way.
    """
    if status in ("expired", "cancelled"):
        return True
    if status != "failed" or not error:
        return False
    code = error.get("code")
    return is_retryable_code(code if isinstance(code, str) else None)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``base * 2**(attempt - 1)``, capped, with optional downward jitter.

    :param base: Seconds before the second attempt.
    :param cap: Most seconds between two attempts.
    :param jitter: Fraction of the delay drawn away at random (0: none), so that callers that failed
        together do not retry together.
    """

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        raw = min(self.cap, self.base * float(1 << max(0, attempt - 1)))
        return raw * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else raw


#: Upload and create: 1, 2, 4, 8, 16 s between the six attempts.
CALL_BACKOFF = Backoff(base=1.0, cap=60.0)

#: The poller's GET: 0.5, 1, 2, 4, 8 s, less up to a quarter.
POLL_BACKOFF = Backoff(base=0.5, cap=8.0, jitter=0.25)
