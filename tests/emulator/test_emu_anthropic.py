"""Anthropic's Message Batches API on the emulator's port, driven only through the official anthropic SDK."""

from __future__ import annotations

import asyncio
import time
import typing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from anthropic.types import ModelParam
from emulator_support import FAST

from openai_batch.pricing import PRICES
from openai_emulator import anthropic_routes
from openai_emulator.anthropic_models import CLAUDE_MODELS
from openai_emulator.settings import EmulatorSettings
from openai_emulator.testing import EmulatorProcess, EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from anthropic.types.messages import MessageBatch

MODEL = "claude-haiku-4-5"


def request(custom_id: str, text: str = "hello", **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **params}
    return {"custom_id": custom_id, "params": {k: v for k, v in body.items() if v is not None}}


def requests(n: int) -> list[dict[str, Any]]:
    return [request(f"req-{i}", f"question {i}") for i in range(n)]


def claude(server: EmulatorServer, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", "test")
    kwargs.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=server.url, **kwargs)


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 15) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"{batch_id} stuck in {batch.processing_status}"
        time.sleep(0.05)
    return batch


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    """Return each request's result by custom_id, checking that no custom_id comes twice."""
    lines = list(client.messages.batches.results(batch_id))
    by_id = {line.custom_id: line.result for line in lines}
    assert len(by_id) == len(lines)
    return by_id


def counts(batch: MessageBatch) -> tuple[int, int, int, int, int]:
    c = batch.request_counts
    return c.processing, c.succeeded, c.errored, c.canceled, c.expired


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[anthropic.Anthropic]:
    with claude(server) as sdk:
        yield sdk


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(tmp_path / "strict", strict_models=True, **FAST) as emulator:
        yield emulator


def test_create_retrieve_results_delete(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=requests(3))
    assert batch.id.startswith("msgbatch_")
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert counts(batch) == (3, 0, 0, 0, 0)
    assert (batch.results_url, batch.ended_at, batch.cancel_initiated_at, batch.archived_at) == (None,) * 4
    assert batch.expires_at - batch.created_at == timedelta(hours=24)

    done = wait_ended(client, batch.id)
    assert counts(done) == (0, 3, 0, 0, 0)
    assert done.ended_at is not None
    assert done.ended_at >= done.created_at
    assert done.results_url == f"{str(client.base_url).rstrip('/')}/v1/messages/batches/{batch.id}/results"
    answers = results(client, batch.id)
    assert set(answers) == {"req-0", "req-1", "req-2"}
    for i in range(3):
        result = answers[f"req-{i}"]
        assert result.type == "succeeded"
        message = result.message
        assert message.id.startswith("msg_")
        assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
        assert message.content[0].type == "text"
        assert message.content[0].text == f"Echo: question {i}"
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
        assert message.usage.input_tokens > 0
        assert message.usage.output_tokens > 0

    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.batches.retrieve(batch.id)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert info.value.request_id is not None


def test_echo_is_deterministic_but_ids_are_per_request(client: anthropic.Anthropic) -> None:
    twins = [request("a", "same"), request("b", "same"), request("cut", "x" * 400, max_tokens=5)]
    first = results(client, wait_ended(client, client.messages.batches.create(requests=twins).id).id)
    second = results(client, wait_ended(client, client.messages.batches.create(requests=twins).id).id)
    a, b, again = first["a"].message, first["b"].message, second["a"].message
    assert a.content == b.content == again.content
    assert a.usage == again.usage
    assert len({a.id, b.id, again.id}) == 3
    cut = first["cut"].message
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens <= 5


async def test_async_client_round_trip(server: EmulatorServer) -> None:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0) as client:
        batch = await client.messages.batches.create(requests=requests(2))
        assert (await client.messages.batches.retrieve(batch.id)).id == batch.id
        for _ in range(300):  # the SDK's own polling loop, without blocking the event loop
            if (batch := await client.messages.batches.retrieve(batch.id)).processing_status == "ended":
                break
            await asyncio.sleep(0.05)
        assert counts(batch) == (0, 2, 0, 0, 0)
        lines = [line async for line in await client.messages.batches.results(batch.id)]
        assert sorted(line.custom_id for line in lines) == ["req-0", "req-1"]
        assert [b.id async for b in client.messages.batches.list()] == [batch.id]
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.cancel(batch.id)  # it has ended
        assert (await client.messages.batches.delete(batch.id)).type == "message_batch_deleted"
        assert [b.id async for b in client.messages.batches.list()] == []


def test_list_newest_first_with_pagination(client: anthropic.Anthropic) -> None:
    ids = [client.messages.batches.create(requests=requests(1)).id for _ in range(5)]
    newest_first = ids[::-1]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert (page.has_more, page.first_id, page.last_id) == (True, newest_first[0], newest_first[1])
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # the SDK pages on
    assert [b.id for b in client.messages.batches.list()] == newest_first  # default limit 20
    older = client.messages.batches.list(limit=2, after_id=newest_first[1])
    assert [b.id for b in older.data] == newest_first[2:4]
    last = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert ([b.id for b in last.data], last.has_more) == ([newest_first[4]], False)
    newer = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert ([b.id for b in newer.data], newer.has_more) == (newest_first[2:4], True)
    # Paging towards newer batches, the SDK asks for the page before each page's first_id.
    backwards = [b.id for b in client.messages.batches.list(limit=2, before_id=newest_first[4])]
    assert backwards == newest_first[2:4] + newest_first[:2]


@pytest.mark.parametrize("limit", [pytest.param(0, id="zero"), pytest.param(1001, id="over-1000")])
def test_list_limit_out_of_range(client: anthropic.Anthropic, limit: int) -> None:
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        client.messages.batches.list(limit=limit)


@pytest.mark.parametrize(
    ("batch_requests", "words"),
    [
        pytest.param([request("has space")], "custom_id", id="custom-id-space"),
        pytest.param([request("x" * 65)], "custom_id", id="custom-id-65-chars"),
        pytest.param([request("")], "custom_id", id="custom-id-empty"),
        pytest.param([request("dot.ted")], "custom_id", id="custom-id-dot"),
        pytest.param([request("twin"), request("twin")], "Duplicate custom_id 'twin'", id="duplicate"),
        pytest.param([], "between 1 and 100,000", id="no-requests"),
        pytest.param([{"custom_id": "a"}], "params: Field required", id="no-params"),
        pytest.param([{"params": {}}], "custom_id: Field required", id="no-custom-id"),
    ],
)
def test_create_refuses_bad_requests(
    client: anthropic.Anthropic, batch_requests: list[dict[str, Any]], words: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=batch_requests)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert words in info.value.message
    assert list(client.messages.batches.list()) == []


def test_create_accepts_the_longest_custom_id_and_refuses_100001_requests(
    client: anthropic.Anthropic,
) -> None:
    longest = "A-z_0" + "9" * 59
    assert client.messages.batches.create(requests=[request(longest)]).request_counts.processing == 1
    tiny = {"model": MODEL, "max_tokens": 1, "messages": []}
    too_many = [{"custom_id": f"r{i}", "params": tiny} for i in range(100_001)]
    with pytest.raises(anthropic.BadRequestError, match="100,001"):
        client.messages.batches.create(requests=too_many)  # type: ignore[typeddict-item]
    assert len(list(client.messages.batches.list())) == 1


def test_create_body_over_the_size_limit(
    client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit is 256 MB; a smaller one keeps the test fast and exercises the same check.
    monkeypatch.setattr(anthropic_routes, "MAX_BATCH_BYTES", 2000)
    with pytest.raises(anthropic.ContentTooLargeError) as info:
        client.messages.batches.create(requests=requests(40))
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert client.messages.batches.create(requests=requests(1)).processing_status == "in_progress"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        pytest.param({"max_tokens": None}, "max_tokens: Field required", id="no-max-tokens"),
        pytest.param({"model": None}, "model: Field required", id="no-model"),
        pytest.param({"messages": []}, "messages", id="no-messages"),
        pytest.param({"stream": True}, "stream", id="stream"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="zero-max-tokens"),
        pytest.param({"messages": [{"role": "system", "content": "x"}]}, "role", id="system-role"),
    ],
)
def test_params_are_checked_while_processing(
    client: anthropic.Anthropic, params: dict[str, Any], words: str
) -> None:
    bad = request("bad")
    bad["params"] = {k: v for k, v in {**bad["params"], **params}.items() if v is not None}
    batch = client.messages.batches.create(requests=[bad, request("good")])
    assert batch.processing_status == "in_progress"  # accepted at create
    done = wait_ended(client, batch.id)
    assert counts(done) == (0, 1, 1, 0, 0)
    answers = results(client, batch.id)
    assert answers["good"].type == "succeeded"
    errored = answers["bad"]
    assert errored.type == "errored"
    assert errored.error.type == "error"
    assert errored.error.error.type == "invalid_request_error"
    assert words in errored.error.error.message


@pytest.mark.parametrize(
    ("model", "known"),
    [
        pytest.param("claude-haiku-4-5", True, id="alias"),
        pytest.param("claude-haiku-4-5-20251001", True, id="dated"),
        pytest.param("claude-opus-4-5", True, id="opus-4-5"),
        pytest.param("claude-sonnet-4-6", True, id="sonnet-4-6"),
        pytest.param("claude-haiku-4-5-20990101", True, id="snapshot-of-a-known-model"),
        pytest.param("claude-haku-4-5", False, id="typo"),
        pytest.param("claude-sonnet-4-20250514", True, id="snapshot-of-a-priced-model"),
        pytest.param("claude-3-5-haiku-latest", True, id="latest-alias"),
        pytest.param("claude-2.1", False, id="retired-unlisted"),
        pytest.param("gpt-4o-mini", False, id="openai-model"),
    ],
)
def test_strict_models(strict: EmulatorServer, model: str, known: bool) -> None:
    with claude(strict) as client:
        batch = client.messages.batches.create(requests=[request("one", model=model)])
        result = results(client, wait_ended(client, batch.id).id)["one"]
    if known:
        assert result.type == "succeeded"
        assert result.message.model == model
    else:
        assert result.type == "errored"
        assert result.error.error.type == "not_found_error"
        assert model in result.error.error.message


def test_unknown_model_is_answered_when_not_strict(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[request("one", model="claude-haku-4-5")])
    assert results(client, wait_ended(client, batch.id).id)["one"].type == "succeeded"


def test_default_models_cover_the_sdk_model_ids_and_the_price_table() -> None:
    literal = typing.get_args(ModelParam)[0]
    sdk_ids = set(typing.get_args(literal))
    assert "claude-haiku-4-5" in sdk_ids
    priced = {m for m in PRICES if m.startswith("claude-")}
    assert "claude-haiku-4-5" in priced
    assert (sdk_ids | priced) - set(EmulatorSettings().anthropic_models) == set()
    assert EmulatorSettings().anthropic_models == list(CLAUDE_MODELS)


@pytest.mark.parametrize(
    ("faults", "succeeded"),
    [
        pytest.param({"expire_after_requests": 3}, 3, id="after-requests"),
        pytest.param({"expire_fraction": 0.5}, 5, id="fraction"),
        pytest.param({"expire_after_requests": 0}, 0, id="before-any"),
    ],
)
def test_forced_expiry(
    server: EmulatorServer, client: anthropic.Anthropic, faults: dict[str, float], succeeded: int
) -> None:
    server.set_faults(**faults)
    done = wait_ended(client, client.messages.batches.create(requests=requests(10)).id)
    assert done.processing_status == "ended"
    assert counts(done) == (0, succeeded, 0, 0, 10 - succeeded)
    kinds = [r.type for r in results(client, done.id).values()]
    assert sorted(kinds) == ["expired"] * (10 - succeeded) + ["succeeded"] * succeeded
    server.reset_faults()
    assert counts(wait_ended(client, client.messages.batches.create(requests=requests(2)).id)) == (
        0,
        2,
        0,
        0,
        0,
    )


def test_cancel_before_processing(server: EmulatorServer, client: anthropic.Anthropic) -> None:
    server.set_faults(hold_in_progress=True)
    batch = client.messages.batches.create(requests=requests(4))
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert client.messages.batches.cancel(batch.id).cancel_initiated_at == canceling.cancel_initiated_at
    with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
        client.messages.batches.delete(batch.id)
    done = wait_ended(client, batch.id)
    assert counts(done) == (0, 0, 0, 4, 0)
    assert {r.type for r in results(client, batch.id).values()} == {"canceled"}
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        client.messages.batches.cancel(batch.id)


def test_cancel_midway_keeps_what_was_done(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, **{**FAST, "requests_per_second": 40}) as server, claude(server) as client:
        batch = client.messages.batches.create(requests=requests(100))
        time.sleep(0.6)
        client.messages.batches.cancel(batch.id)
        done = wait_ended(client, batch.id)
        _, succeeded, errored, canceled, expired = counts(done)
        assert succeeded > 0
        assert canceled > 0
        assert succeeded + canceled == 100
        assert errored == expired == 0
        kinds = [r.type for r in results(client, batch.id).values()]
        assert (kinds.count("succeeded"), kinds.count("canceled")) == (succeeded, canceled)


def test_results_before_the_batch_ended(server: EmulatorServer, client: anthropic.Anthropic) -> None:
    server.set_faults(hold_in_progress=True)
    batch = client.messages.batches.create(requests=requests(1))
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)  # the SDK looks at results_url first
    with pytest.raises(anthropic.BadRequestError, match="not ended"):
        client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)


@pytest.mark.parametrize(
    ("client_kwargs", "error", "words"),
    [
        pytest.param(
            {"api_key": None, "default_headers": {"Authorization": anthropic.Omit()}},
            anthropic.AuthenticationError,
            "x-api-key header is required",
            id="no-key",
        ),
        pytest.param(
            {"api_key": "wrong"}, anthropic.AuthenticationError, "invalid x-api-key", id="wrong-bearer"
        ),
        pytest.param(
            {"api_key": None, "default_headers": {"X-Api-Key": "wrong", "Authorization": anthropic.Omit()}},
            anthropic.AuthenticationError,
            "invalid x-api-key",
            id="wrong-x-api-key",
        ),
        pytest.param(
            {"api_key": "secret", "default_headers": {"anthropic-version": anthropic.Omit()}},
            anthropic.BadRequestError,
            "anthropic-version",
            id="no-version",
        ),
    ],
)
def test_authentication_and_version_header(
    tmp_path: Path, client_kwargs: dict[str, Any], error: type[anthropic.APIStatusError], words: str
) -> None:
    with (
        EmulatorServer(tmp_path, api_key="secret", **FAST) as server,
        claude(server, **client_kwargs) as client,
    ):
        with pytest.raises(error, match=words) as info:
            client.messages.batches.list()
        assert info.value.body["type"] == "error"  # type: ignore[index]
        assert info.value.body["error"]["type"] in ("authentication_error", "invalid_request_error")  # type: ignore[index]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": anthropic.Omit(), "X-Api-Key": "secret"}, id="x-api-key"),
        pytest.param({}, id="bearer-as-the-sdk-sends-it"),
    ],
)
def test_the_right_key_in_either_header(tmp_path: Path, headers: dict[str, Any]) -> None:
    with (
        EmulatorServer(tmp_path, api_key="secret", **FAST) as server,
        claude(server, api_key="secret", default_headers=headers) as client,
    ):
        assert client.messages.batches.create(requests=requests(1)).processing_status == "in_progress"
        assert len(client.messages.batches.list().data) == 1


def test_openai_routes_still_need_the_bearer_key(client: anthropic.Anthropic) -> None:
    only_x_api_key = client.with_options(
        default_headers={"Authorization": anthropic.Omit(), "X-Api-Key": "k"}
    )
    assert only_x_api_key.messages.batches.list().data == []
    with pytest.raises(anthropic.AuthenticationError) as info:
        only_x_api_key.get("/v1/batches", cast_to=object)
    assert info.value.body["error"]["code"] == "invalid_api_key"  # type: ignore[index]  # OpenAI's envelope


@pytest.mark.parametrize(
    ("code", "error", "error_type"),
    [
        pytest.param(529, anthropic.OverloadedError, "overloaded_error", id="529"),
        pytest.param(429, anthropic.RateLimitError, "rate_limit_error", id="429"),
        pytest.param(500, anthropic.InternalServerError, "api_error", id="500"),
        pytest.param(403, anthropic.PermissionDeniedError, "permission_error", id="403"),
    ],
)
def test_injected_errors_in_anthropics_envelope(
    server: EmulatorServer,
    client: anthropic.Anthropic,
    code: int,
    error: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    server.set_faults(error_rate=1.0, error_codes=[code], error_routes=["POST /v1/messages/batches"])
    with pytest.raises(error) as info:
        client.messages.batches.create(requests=requests(1))
    assert info.value.status_code == code
    body = info.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["type"] == error_type  # type: ignore[index]
    assert client.messages.batches.list().data == []  # the failed create had no effect
    assert server.stats()["injected_errors"] == 1


def test_injected_errors_are_retried_by_the_sdk(server: EmulatorServer) -> None:
    server.set_faults(error_rate=0.5, error_codes=[529, 429], retry_after_ms=10, seed=3)
    with claude(server, max_retries=10) as client:
        ids = [client.messages.batches.create(requests=requests(1)).id for _ in range(4)]
        assert sorted(b.id for b in client.messages.batches.list()) == sorted(ids)
    assert server.stats()["injected_errors"] > 0
    assert server.stats()["message_batches_created"] == 4


def test_lost_answer_after_the_create_took_effect(
    server: EmulatorServer, client: anthropic.Anthropic
) -> None:
    server.set_faults(
        lost_response_rate=1.0, lost_response_code=502, lost_response_routes=["POST /v1/messages/*"]
    )
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.batches.create(requests=requests(1))
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert len(client.messages.batches.list().data) == 1  # created all the same


def test_latency_applies_to_message_routes(server: EmulatorServer, client: anthropic.Anthropic) -> None:
    server.set_faults(latency_ms=300, latency_routes=["GET /v1/messages/batches"])
    started = time.monotonic()
    client.messages.batches.list()
    assert time.monotonic() - started >= 0.3
    assert server.stats()["requests_by_route"]["GET /v1/messages/batches"] == 1


@pytest.mark.parametrize(
    ("code", "error_type"),
    [pytest.param(529, "overloaded_error", id="529"), pytest.param(500, "api_error", id="500")],
)
def test_per_request_failures_are_errored_results(
    server: EmulatorServer, client: anthropic.Anthropic, code: int, error_type: str
) -> None:
    server.set_faults(request_failure_rate=1.0, request_failure_codes=[code])
    done = wait_ended(client, client.messages.batches.create(requests=requests(3)).id)
    assert counts(done) == (0, 0, 3, 0, 0)
    for result in results(client, done.id).values():
        assert result.type == "errored"
        assert result.error.error.type == error_type


def test_restart_keeps_ended_and_resumes_unfinished_batches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmulatorServer(data, **FAST) as server, claude(server) as client:
        ended = wait_ended(client, client.messages.batches.create(requests=requests(3)).id)
        before = results(client, ended.id)
        server.set_faults(hold_in_progress=True)
        unfinished = client.messages.batches.create(requests=requests(5))
    with EmulatorServer(data, **FAST) as server, claude(server) as client:
        again = client.messages.batches.retrieve(ended.id)
        assert again.model_dump(exclude={"results_url"}) == ended.model_dump(exclude={"results_url"})
        assert again.results_url == f"{server.url}/v1/messages/batches/{ended.id}/results"  # the new port
        assert results(client, ended.id) == before
        done = wait_ended(client, unfinished.id)
        assert done.created_at == unfinished.created_at
        assert counts(done) == (0, 5, 0, 0, 0)
        assert [b.id for b in client.messages.batches.list()] == [unfinished.id, ended.id]


def test_kill9_mid_batch_resumes_without_double_results(tmp_path: Path) -> None:
    args = ["--validating-seconds", "0.05", "--finalizing-seconds", "0.05", "--requests-per-second", "300"]
    emulator = EmulatorProcess(tmp_path / "data", extra_args=args).start()
    try:
        with anthropic.Anthropic(base_url=emulator.url, api_key="test", max_retries=0) as client:
            batch = client.messages.batches.create(requests=requests(900))  # about 3 s of processing
            time.sleep(1.0)
            assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
            emulator.kill9()
            emulator.start()
            done = wait_ended(client, batch.id, timeout=30)
            assert counts(done) == (0, 900, 0, 0, 0)
            answers = results(client, batch.id)  # checks that no custom_id comes twice
            assert set(answers) == {f"req-{i}" for i in range(900)}
            assert {r.type for r in answers.values()} == {"succeeded"}
            assert emulator.stats()["message_requests_processed"] < 900  # the restart did only the rest
    finally:
        emulator.stop()


def test_proxy_backend_forwards_to_an_upstream_messages_api(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path / "upstream", **FAST) as upstream:
        settings = {**FAST, "backend": "proxy", "upstream_base_url": f"{upstream.url}/v1"}
        with EmulatorServer(tmp_path / "proxy", **settings) as proxy, claude(proxy) as client:
            done = wait_ended(client, client.messages.batches.create(requests=requests(3)).id)
            answers = results(client, done.id)
        assert {cid: r.message.content[0].text for cid, r in answers.items()} == {
            f"req-{i}": f"Echo: question {i}" for i in range(3)
        }
        assert upstream.stats()["sync_messages"] == 3


def test_messages_create_is_answered_by_the_echo(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "ping"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: ping"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "ping"}])


def test_unknown_message_routes_are_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.get("/v1/messages/nothing-here", cast_to=object)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
