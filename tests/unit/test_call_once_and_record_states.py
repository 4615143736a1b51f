"""``retry.call_once``: a paid call made at most once, whatever its answers."""

from __future__ import annotations

from typing import Any

import pytest

from openai_batch.retry import Backoff, call_once

NO_WAIT = Backoff(base=0.0, cap=0.0)


class Lost(Exception):
    """The call took effect, its answer was lost."""


class Refused(Exception):
    """The service refused the call: sending it again fails the same way."""


def _api(outcomes: list[str]) -> tuple[Any, Any, list[str]]:
    made: list[str] = []

    def call() -> str:
        outcome = outcomes.pop(0)
        if outcome == "refused":
            raise Refused
        made.append(f"object-{len(made)}")
        if outcome == "lost":
            raise Lost
        return made[-1]

    def lookup() -> str | None:
        return made[0] if made else None

    return call, lookup, made


def _once(call: Any, lookup: Any, **kwargs: Any) -> tuple[str, bool]:
    retries: list[int] = []
    result = call_once(
        call,
        lookup,
        errors=(Lost, Refused),
        retryable=lambda err: isinstance(err, Lost),
        on_retry=lambda err, attempt, delay: retries.append(attempt),
        attempts=kwargs.pop("attempts", 4),
        backoff=NO_WAIT,
        **kwargs,
    )
    return result


@pytest.mark.parametrize(
    ("outcomes", "expected", "made_count"),
    [
        pytest.param(["ok"], ("object-0", True), 1, id="answered"),
        pytest.param(["lost", "ok"], ("object-0", False), 1, id="lost-answer-found-again"),
        pytest.param(["lost", "lost", "lost", "lost"], ("object-0", False), 1, id="lost-every-time"),
    ],
)
def test_a_call_takes_effect_once(outcomes: list[str], expected: tuple[str, bool], made_count: int) -> None:
    call, lookup, made = _api(outcomes)
    assert _once(call, lookup) == expected
    assert len(made) == made_count


def test_a_refused_call_is_not_repeated() -> None:
    call, lookup, made = _api(["refused", "ok"])
    with pytest.raises(Refused):
        _once(call, lookup)
    assert made == []


def test_look_first_finds_what_an_earlier_process_made() -> None:
    call, lookup, made = _api(["ok", "ok"])
    call()  # an earlier process made it, then died before recording it
    assert _once(call, lookup, look_first=True) == ("object-0", False)
    assert made == ["object-0"]


def test_attempts_run_out_with_the_last_error() -> None:
    calls = []

    def call() -> str:
        calls.append(1)
        raise Lost

    with pytest.raises(Lost):
        _once(call, lambda: None, attempts=3)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("line", "state"),
    [
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 200, "body": {"usage": {}}}, "error": None},
            "succeeded",
            id="success",
        ),
        pytest.param(
            {
                "custom_id": "a",
                "response": {"status_code": 200, "body": {}},
                "error": {"code": "x", "message": "y"},
            },
            "final_failed",
            id="2xx-with-an-error",
        ),
        pytest.param(
            {
                "custom_id": "a",
                "response": {"status_code": 400, "body": {"error": {"code": "bad"}}},
                "error": None,
            },
            "final_failed",
            id="client-error",
        ),
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 500, "body": {"error": {"type": "server_error"}}}},
            None,
            id="server-error",
        ),
        pytest.param(
            {"custom_id": "a", "response": None, "error": {"code": "batch_expired"}}, None, id="expired"
        ),
        pytest.param({"custom_id": "a", "error": {"code": "batch_cancelled"}}, None, id="cancelled"),
        pytest.param(
            {"custom_id": "a", "error": {"code": "invalid_prompt"}}, "final_failed", id="final-error"
        ),
    ],
)
def test_the_record_state_of_a_result_line(line: dict[str, Any], state: str | None) -> None:
    import json

    from openai_batch.results import final_state

    assert final_state(json.dumps(line).encode()) == ("a", state)


@pytest.mark.parametrize(
    ("line", "state"),
    [
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 200, "body": {}}, "error": {}},
            "succeeded",
            id="2xx-with-an-empty-error",
        ),
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 201}}, "succeeded", id="2xx-without-a-body"
        ),
    ],
)
def test_the_record_state_matches_the_earlier_rule_at_the_edges(line: dict[str, Any], state: str) -> None:
    import json

    from openai_batch.results import final_state

    assert final_state(json.dumps(line).encode()) == ("a", state)
