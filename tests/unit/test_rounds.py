"""The decisions of a wait's end and of a collected round, by table."""

from __future__ import annotations

from typing import Any

import pytest

from openai_batch.rounds import after_collect, on_wait_end, token_limit_delay
from openai_batch.status import ENDED

TOKENS = [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached"}]
OTHER = [{"code": "invalid_request", "message": "bad file", "line": 3}]


def _end(status: str, errors: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    return {"status": status, "batch_id": "batch_1", "errors": errors, **more}


@pytest.mark.parametrize(
    ("event", "attempt", "max_retries", "fits", "action", "release"),
    [
        # The batch ended and has files: collect them, whatever its counts say.
        (_end("completed"), 0, 3, False, "collect", True),
        (_end("expired"), 0, 3, False, "collect", True),
        (_end("cancelled"), 0, 3, False, "collect", True),
        # Failed for a reason other than tokens: every request of it fails; nothing to download.
        (_end("failed", OTHER), 0, 3, True, "give_up", True),
        (_end("failed", None), 0, 3, True, "give_up", True),
        # Refused for the enqueued-token limit: wait and send again while attempts remain ...
        (_end("failed", TOKENS), 0, 3, False, "wait_for_tokens", True),
        (_end("failed", TOKENS), 2, 3, False, "wait_for_tokens", True),
        # ... then give up, unless the round fits under its limit alone (admission will let it in).
        (_end("failed", TOKENS), 3, 3, False, "give_up", True),
        (_end("failed", TOKENS), 3, 3, True, "wait_for_tokens", True),
        (_end("failed", TOKENS), 50, 3, True, "wait_for_tokens", True),
        (_end("failed", OTHER + TOKENS), 0, 3, False, "wait_for_tokens", True),
        # The wait timed out and the trigger cancelled the batch: fail, its tokens are free.
        ({"status": "timeout", "message": "wait_timeout passed"}, 0, 3, False, "fail", True),
        # Polling failed: fail, but the batch may still be running and holding its tokens.
        ({"status": "error", "message": "polling failed 6 times"}, 0, 3, False, "fail", False),
        # Anything else is not a status we know: fail, and keep the tokens.
        ({"status": "in_progress"}, 0, 3, False, "fail", False),
        ({"status": "finished"}, 0, 3, False, "fail", False),
        ({}, 0, 3, False, "fail", False),
    ],
)
def test_wait_end(
    event: dict[str, Any], attempt: int, max_retries: int, fits: bool, action: str, release: bool
) -> None:
    decision = on_wait_end(event, attempt=attempt, max_token_limit_retries=max_retries, fits_alone=fits)
    assert (decision.action, decision.release) == (action, release)
    if action == "fail" and "message" in event:
        assert decision.reason == event["message"]


def test_every_ended_status_has_a_decision_other_than_fail() -> None:
    for status in ENDED:
        errors = TOKENS if status == "failed" else None
        decision = on_wait_end(_end(status, errors), attempt=0, max_token_limit_retries=1, fits_alone=False)
        assert decision.action != "fail", status


@pytest.mark.parametrize(
    ("status", "round_no", "max_rounds", "left", "action"),
    [
        ("completed", 0, 2, True, "resubmit"),
        ("expired", 1, 2, True, "resubmit"),
        ("cancelled", 0, 2, True, "resubmit"),
        ("completed", 2, 2, True, "finish"),  # rounds used up
        ("completed", 3, 2, True, "finish"),
        ("completed", 0, 0, True, "finish"),  # no follow-up rounds wanted
        ("completed", 0, 2, False, "finish"),  # every request has its final answer
        ("failed", 0, 2, True, "finish"),  # a failed batch is not resubmitted as a round
    ],
)
def test_after_collect(status: str, round_no: int, max_rounds: int, left: bool, action: str) -> None:
    got = after_collect(status, round_no=round_no, max_retry_rounds=max_rounds, retryable_left=left)
    assert got == action


def test_token_limit_delay_grows_and_is_capped() -> None:
    assert [token_limit_delay(10.0, a) for a in range(8)] == [10, 20, 30, 40, 50, 60, 60, 60]
