"""Metrics of a real ``dag.test()`` run arrive as StatsD lines at a real UDP listener."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.test_openai_batch_e2e import full_line, run_dag, task_states, write_input

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A UDP socket on loopback, with Airflow's metrics configured to send StatsD lines to it."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability.metrics import stats_utils

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    # What a task process does at start (task_runner.main); dag.test() runs tasks in this process.
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    try:
        yield sock
    finally:
        stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
        sock.close()


def received(sock: socket.socket) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return lines
        lines.extend(data.decode().splitlines())


def metric(lines: list[str], name: str) -> list[str]:
    full = f"airflow.openai_batch.{name}"
    return [line.split(":", 1)[1] for line in lines if line.split(":", 1)[0] == full]


def test_run_sends_request_token_cost_batch_and_delay_metrics(
    pipeline: dict[str, Any], statsd: socket.socket
) -> None:
    lines = [full_line(f"a{i}", f"hello {i}") for i in range(3)] + [
        full_line("b0", "bonjour", model="gpt-4o"),
        "{not json",
    ]
    write_input(pipeline["inbox"] / "metrics.jsonl", lines)

    dag_run = run_dag({"input": "metrics.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    got = received(statsd)
    assert metric(got, "requests.succeeded") == ["4|c"], got
    assert metric(got, "requests.rejected") == ["1|c"]
    assert metric(got, "requests.failed") == []  # nothing failed: no zero counters sent
    assert metric(got, "batches.completed") == ["2|c"]  # one batch per model
    (input_tokens,) = metric(got, "tokens.input")
    assert int(input_tokens.removesuffix("|c")) > 0
    for model in ("gpt-4o-mini", "gpt-4o"):
        (cost,) = metric(got, f"cost_microusd.{model}")
        assert int(cost.removesuffix("|c")) > 0, (model, got)
    assert metric(got, "sent.openai.gpt-4o-mini") == ["3|c"]
    assert metric(got, "sent.openai.gpt-4o") == ["1|c"]
    (delay,) = metric(got, "results_delay")
    assert delay.endswith("|ms")
    assert 0 <= float(delay.removesuffix("|ms")) < 120_000
