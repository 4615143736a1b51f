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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

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


def call_once(
    call: Callable[[], T],
    lookup: Callable[[], T | None],
    *,
    errors: tuple[type[BaseException], ...],
    retryable: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, int, float], None],
    attempts: int = CALL_ATTEMPTS,
    backoff: Backoff = CALL_BACKOFF,
    look_first: bool = False,
) -> tuple[T, bool]:
    """
    Make a call that costs money (an upload, a batch create) at most once, whatever the answers.

    A failed attempt may have taken effect (its answer was lost), so before each new attempt (and
    before the first with ``look_first``: an earlier process may have made the call, then died)
    ``lookup`` looks for what it would have made; that is returned instead of calling again.

    :return: ``(value, made)``: the call's answer and True, or what ``lookup`` found and False.
    :raises BaseException: the last error of ``errors`` once attempts run out or ``retryable``
        says the same call would fail the same way; any other error at once.
    """
    for attempt in range(1, attempts + 1):
        if attempt > 1 or look_first:
            found = lookup()
            if found is not None:
                return found, False
        try:
            return call(), True
        except errors as err:
            if attempt == attempts or not retryable(err):
                raise
            delay = backoff.delay(attempt)
            on_retry(err, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
