"""Fault injection through the control plane and through start-up settings."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TYPE_CHECKING

import openai
import pytest
from emulator_support import FAST, chat_file, create_batch, read_lines, wait_for

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path


def test_http_error_rate_without_retries(server: EmulatorServer, client: openai.OpenAI) -> None:
    server.set_faults(error_rate=1.0, error_codes=[429])
    with pytest.raises(openai.RateLimitError) as info:
        client.batches.list()
    assert info.value.status_code == 429
    server.set_faults(error_codes=[500])
    with pytest.raises(openai.InternalServerError):
        client.files.list()
    assert server.stats()["injected_errors"] == 2


def test_injected_errors_have_no_effect(server: EmulatorServer, client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch").id
    server.set_faults(error_rate=1.0, error_codes=[500], error_routes=["POST /v1/batches"])
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
    assert client.batches.list().data == []  # other routes are unaffected, and nothing was created
    assert "batches_created" not in server.stats()


def test_http_error_rate_with_default_retries_succeeds(server: EmulatorServer) -> None:
    server.set_faults(error_rate=0.5, error_codes=[429, 500], retry_after_ms=10, seed=7)
    client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=8)
    file_id = client.files.create(file=("in.jsonl", chat_file(5)), purpose="batch").id
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    assert len(client.batches.list().data) == 5  # each create took effect exactly once
    assert len(set(ids)) == 5
    stats = server.stats()
    assert stats["injected_errors"] > 0
    assert stats["batches_created"] == 5


def test_latency(server: EmulatorServer, client: openai.OpenAI) -> None:
    server.set_faults(latency_ms=300, latency_routes=["GET /v1/batches"])
    started = time.monotonic()
    client.batches.list()
    assert time.monotonic() - started >= 0.3
    assert server.stats()["calls_in_latency_total"] == 1
    client.files.list()  # another route: not held
    assert server.stats()["calls_in_latency_total"] == 1
    server.reset_faults()
    client.batches.list()  # latency off
    stats = server.stats()
    assert stats["calls_in_latency_total"] == 1
    assert stats["requests_by_route"]["GET /v1/batches"] == 2


def test_per_request_failures_go_to_error_file(server: EmulatorServer, client: openai.OpenAI) -> None:
    server.set_faults(request_failure_rate=0.3, request_failure_codes=[500, 429], seed=1)
    n = 200
    done = wait_for(client, create_batch(client, chat_file(n)).id)
    assert done.status == "completed"
    counts = done.request_counts
    assert counts is not None
    assert 0 < counts.failed < n
    assert counts.completed + counts.failed == n
    errors = read_lines(client, done.error_file_id)
    outputs = read_lines(client, done.output_file_id)
    assert len(errors) == counts.failed
    assert len(outputs) == counts.completed
    assert {e["response"]["status_code"] for e in errors} == {500, 429}
    assert all(e["error"] is None and "error" in e["response"]["body"] for e in errors)
    assert {x["custom_id"] for x in errors + outputs} == {f"req-{i}" for i in range(n)}


@pytest.mark.parametrize(
    ("faults", "expected_done"),
    [
        pytest.param({"expire_after_requests": 30}, 30, id="after-requests"),
        pytest.param({"expire_fraction": 0.25}, 25, id="fraction"),
    ],
)
def test_forced_expiry(
    server: EmulatorServer, client: openai.OpenAI, faults: dict[str, float], expected_done: int
) -> None:
    server.set_faults(**faults)
    done = wait_for(client, create_batch(client, chat_file(100)).id)
    assert done.status == "expired"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (expected_done, 100 - expected_done)
    assert len(read_lines(client, done.output_file_id)) == expected_done
    expired = read_lines(client, done.error_file_id)
    assert {e["error"]["code"] for e in expired} == {"batch_expired"}
    assert len(expired) == 100 - expected_done
    server.reset_faults()
    assert wait_for(client, create_batch(client, chat_file(10)).id).status == "completed"


def test_token_limit_on_own_size(server: EmulatorServer, client: openai.OpenAI) -> None:
    server.set_faults(token_limit=100)
    batch = create_batch(client, chat_file(50))
    assert batch.status == "validating"  # the create call itself succeeds
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data
    assert done.errors.data[0].code == "token_limit_exceeded"


def test_token_limit_counts_in_progress_batches(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, **{**FAST, "requests_per_second": 20}) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        content = chat_file(40)  # about 40 * 35 tokens
        emulator.set_faults(token_limit=2500)
        first = create_batch(client, content)
        assert wait_for(client, first.id, ("in_progress",)).status == "in_progress"
        second = wait_for(client, create_batch(client, content).id, ("failed", "in_progress"))
        assert second.status == "failed"
        assert second.errors is not None
        assert second.errors.data
        assert second.errors.data[0].code == "token_limit_exceeded"
        client.batches.cancel(first.id)
        assert wait_for(client, first.id).status == "cancelled"
        assert wait_for(client, create_batch(client, content).id, ("in_progress", "completed")).status in (
            "in_progress",
            "completed",
        )


def test_most_batches_in_flight_at_once_is_counted(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, **{**FAST, "requests_per_second": 20}) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        content = chat_file(20)  # one second in progress each
        first = [create_batch(client, content) for _ in range(3)]  # three at once
        assert emulator.stats()["batches_in_flight_max"] == 3
        for batch in first:
            assert wait_for(client, batch.id).status == "completed"
        later = [wait_for(client, create_batch(client, content).id).status for _ in range(2)]
        assert later == ["completed", "completed"]
        assert emulator.stats()["batches_in_flight_max"] == 3  # one at a time later: the mark stays
        urllib.request.urlopen(urllib.request.Request(f"{emulator.url}/_emulator/reset", method="POST"))
        assert "batches_in_flight_max" not in emulator.stats()
        assert wait_for(client, create_batch(client, content).id).status == "completed"
        assert emulator.stats()["batches_in_flight_max"] == 1


def test_faults_from_settings_and_control_plane(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, error_rate=1.0, error_codes=[503], **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.models.list()
        assert info.value.status_code == 503
        assert emulator.faults()["error_rate"] == 1.0
        emulator.reset_faults()
        assert emulator.faults()["error_rate"] == 0.0
        client.models.list()
        stats = emulator.stats()
        assert stats["requests_by_route"]["GET /v1/models"] == 2
        assert stats["injected_errors"] == 1


def test_bad_fault_fields_are_rejected(server: EmulatorServer) -> None:
    with pytest.raises(Exception, match="400"):
        server.set_faults(no_such_fault=1)
    with pytest.raises(Exception, match="400"):
        server.set_faults(error_rate=2)


def test_reset_restores_startup_faults_and_zeroes_stats(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, latency_ms=1, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        client.models.list()
        emulator.set_faults(latency_ms=5, error_rate=0.1)
        urllib.request.urlopen(urllib.request.Request(f"{emulator.url}/_emulator/reset", method="POST"))
        assert emulator.faults()["latency_ms"] == 1
        assert emulator.faults()["error_rate"] == 0
        assert emulator.stats() == {"requests_by_route": {}}


def test_cancel_while_validating(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, **{**FAST, "validating_seconds": 5}) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        batch = create_batch(client, chat_file(5))
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = wait_for(client, batch.id, timeout=3)
        assert done.status == "cancelled"
        assert done.output_file_id is None
        assert done.error_file_id is None


def test_output_corruption_of_the_next_batch_only(server: EmulatorServer, client: openai.OpenAI) -> None:
    server.set_faults(output_corruption=["drop", "duplicate", "foreign", "without_id", "unparseable"])
    done = wait_for(client, create_batch(client, chat_file(5)).id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.completed == 5  # the counts still claim every request answered
    assert done.output_file_id is not None
    raw = client.files.content(done.output_file_id).text.splitlines()
    assert len(raw) == 8  # 4 answered + duplicate + foreign + id-less + unparseable
    parsed = [json.loads(line) for line in raw[:-1]]
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw[-1])
    ids = [line.get("custom_id") for line in parsed]
    sent = {f"req-{i}" for i in range(5)}
    assert len(sent - set(ids)) == 1  # one dropped
    assert len([i for i in ids if i in sent]) == 5  # four answers, one of them twice
    assert f"foreign-{done.id}-1" in ids
    assert None in ids
    assert server.stats()["outputs_corrupted"] == 1

    clean = wait_for(client, create_batch(client, chat_file(5)).id)
    assert len(read_lines(client, clean.output_file_id)) == 5
    assert server.faults()["output_corruption_batches"] == 0


def test_unknown_output_corruption_is_rejected(server: EmulatorServer) -> None:
    with pytest.raises(Exception, match="400"):
        server.set_faults(output_corruption=["shuffle"])
