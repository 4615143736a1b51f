"""What a shard does when its wait ends: the decisions of the rounds, as pure functions.

A shard's wait ends with a trigger event (:class:`openai_batch.triggers.OpenAIBatchTrigger`): the
batch ended (one of :data:`openai_batch.status.ENDED`), polling failed (``error``), or the wait
timed out and the trigger cancelled the batch (``timeout``). :func:`on_wait_end` says what comes
next; once a round's files are collected, :func:`after_collect` says whether a follow-up round is
sent or the shard is finished. The sensor (:class:`openai_batch.sensors.OpenAIBatchSensor`) only
carries the decisions out.

Pure: standard library only. ``tests/unit/test_rounds.py`` holds the decision tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from openai_batch.status import ENDED

#: The per-batch error code of a batch refused for the model's enqueued-token limit.
TOKEN_LIMIT_CODE = "token_limit_exceeded"

#: What to do when a wait ends:
#: ``fail``: the task fails (the event's message says why);
#: ``wait_for_tokens``: the batch was refused for the enqueued-token limit: wait, then send it again;
#: ``give_up``: the batch failed for good: keep the failure (every request of it fails), download nothing;
#: ``collect``: download the batch's output and error files.
WaitEndAction = Literal["fail", "wait_for_tokens", "give_up", "collect"]

#: What to do once a round is collected: send a follow-up round, or finish the shard.
AfterCollectAction = Literal["resubmit", "finish"]


@dataclass(frozen=True)
class WaitEnd:
    """
    The decision at a wait's end.

    :param action: See :data:`WaitEndAction`.
    :param release: Give the batch's enqueued tokens back to the ledger: it no longer holds them.
    :param reason: One line for the log, or the error of a ``fail``.
    """

    action: WaitEndAction
    release: bool
    reason: str = ""


def hit_token_limit(errors: list[dict[str, Any]] | None) -> bool:
    """Whether a failed batch's errors say it was refused for the enqueued-token limit."""
    return any(isinstance(e, dict) and e.get("code") == TOKEN_LIMIT_CODE for e in errors or [])


def on_wait_end(
    event: dict[str, Any],
    *,
    attempt: int,
    max_token_limit_retries: int,
    fits_alone: bool,
) -> WaitEnd:
    """
    Decide what a shard does with the event that ended its wait.

    :param event: The trigger's event: ``status`` (a batch status, ``error`` or ``timeout``),
        ``message``, and for a batch status its ``errors``.
    :param attempt: How many times this round was already resubmitted after the token limit (0: never).
    :param max_token_limit_retries: Resubmissions after the token limit allowed however large the round.
    :param fits_alone: The round fits under its model's limit by itself, with admission control on:
        it will be admitted once other batches end, so waiting for tokens is never hopeless.
    """
    status = event.get("status")
    if status == "timeout":  # the trigger cancelled the batch: its tokens are free again
        return WaitEnd("fail", release=True, reason=str(event.get("message", "the wait timed out")))
    if status not in ENDED:  # polling failed: the batch may still be running and holding its tokens
        reason = str(event.get("message", f"unexpected event {status!r}"))
        return WaitEnd("fail", release=False, reason=reason)
    if status != "failed":
        return WaitEnd("collect", release=True)
    if not hit_token_limit(event.get("errors")):
        return WaitEnd("give_up", release=True, reason="the batch failed")
    if attempt < max_token_limit_retries or fits_alone:
        return WaitEnd("wait_for_tokens", release=True, reason="enqueued-token limit reached")
    return WaitEnd(
        "give_up", release=True, reason=f"the batch hit the enqueued-token limit {attempt + 1} times"
    )


def after_collect(
    status: str | None, *, round_no: int, max_retry_rounds: int, retryable_left: bool
) -> AfterCollectAction:
    """
    Decide whether a collected round is followed by another one.

    :param status: How the round's batch ended.
    :param round_no: The round just collected (0: the first batch).
    :param max_retry_rounds: Most follow-up rounds.
    :param retryable_left: Some request of the round ended retryable (expired, cancelled, a
        transient error: :func:`openai_batch.retry.is_retryable_request`) or has no result.
    """
    if status == "failed" or round_no >= max_retry_rounds or not retryable_left:
        return "finish"
    return "resubmit"


def token_limit_delay(base_wait: float, attempt: int) -> float:
    """Seconds to wait before resubmitting after the token limit: growing with the attempt, capped at 6x."""
    return base_wait * min(attempt + 1, 6)
