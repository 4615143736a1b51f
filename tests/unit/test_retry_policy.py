"""The one retry policy: the table of what is retried, and its readers agree with it."""

from __future__ import annotations

import httpx
import openai
import pytest

from openai_batch import retry
from openai_batch.hooks import is_transient
from openai_batch.poller import BatchPollError
from openai_batch.results import is_retryable


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (None, True),  # no answer: we cannot tell, so the call may be sent again
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (520, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (422, False),
    ],
)
def test_call_statuses(status: int | None, transient: bool) -> None:
    assert retry.is_transient_status(status) is transient


def _status_error(code: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "https://api.example.test/v1/batches")
    response = httpx.Response(code, request=request, json={"error": {"message": "x"}})
    cls = {429: openai.RateLimitError, 500: openai.InternalServerError, 400: openai.BadRequestError}.get(
        code, openai.APIStatusError
    )
    return cls("x", response=response, body=None)


@pytest.mark.parametrize("code", [408, 409, 429, 500, 503, 400, 401, 404, 422])
def test_the_hook_reads_the_policy(code: int) -> None:
    assert is_transient(_status_error(code)) is retry.is_transient_status(code)


def test_a_connection_error_is_transient_for_the_hook() -> None:
    request = httpx.Request("POST", "https://api.example.test/v1/files")
    assert is_transient(openai.APITimeoutError(request=request))
    assert is_transient(openai.APIConnectionError(request=request))
    assert not is_transient(ValueError("not an API error"))


@pytest.mark.parametrize(
    ("status", "error", "again"),
    [
        ("expired", None, True),
        ("cancelled", None, True),
        ("succeeded", None, False),
        ("failed", None, False),
        ("failed", {"code": "rate_limit_exceeded"}, True),
        ("failed", {"code": "server_error"}, True),
        ("failed", {"code": "token_limit_exceeded"}, True),
        ("failed", {"code": "batch_expired"}, True),
        ("failed", {"code": "http_429"}, True),
        ("failed", {"code": "http_408"}, True),
        ("failed", {"code": "http_500"}, True),
        ("failed", {"code": "http_503"}, True),
        ("failed", {"code": "http_409"}, False),  # a request that conflicts conflicts again
        ("failed", {"code": "http_400"}, False),
        ("failed", {"code": "http_abc"}, False),
        ("failed", {"code": "invalid_request_error"}, False),
        ("failed", {"code": "model_not_found"}, False),
        ("failed", {"code": 500}, False),  # not a string: not a code we know
    ],
)
def test_request_outcomes(status: str, error: dict[str, object] | None, again: bool) -> None:
    assert retry.is_retryable_request(status, error) is again
    assert is_retryable(status, error) is again  # the result store reads the same rule


def test_backoff_doubles_up_to_its_cap_and_jitters_downwards() -> None:
    assert [retry.CALL_BACKOFF.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert retry.Backoff(base=1.0, cap=5.0).delay(10) == 5.0
    for attempt in range(1, 8):
        delay = retry.POLL_BACKOFF.delay(attempt)
        raw = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert 0.75 * raw <= delay <= raw


async def test_the_poller_retries_only_what_the_policy_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_batch.poller import BatchStatusPoller, PollSettings

    settings = PollSettings(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=3)
    poller = BatchStatusPoller(settings)
    calls: list[int] = []

    async def once(url: str, batch_id: str) -> dict[str, object]:
        calls.append(1)
        raise BatchPollError("refused", status=status)

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(poller, "_get_once", once)
    monkeypatch.setattr("openai_batch.poller.asyncio.sleep", no_sleep)
    try:
        for status, expected in ((503, 4), (401, 1), (None, 4), (409, 4), (422, 1)):
            calls.clear()
            with pytest.raises(BatchPollError):
                await poller.get_batch("batch_x")
            assert len(calls) == expected, status
    finally:
        await poller.close()
