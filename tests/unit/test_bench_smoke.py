"""The benchmark harness: smoke run, and baselines that fail loudly when they did not do the work."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from bench import live, worker
from bench.__main__ import TARGETS, table, verdict
from bench.common import put_ratio, round_ratios
from bench.gen import write_requests
from tests.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEYS = (
    "prepare_mb_per_s",
    "prepare_ratio_vs_stdlib",
    "prepare_ratio_vs_stdlib_min",
    "prepare_ratio_vs_stdlib_max",
    "prepare_ratio_vs_floor",
    "prepare_ratio_vs_floor_min",
    "prepare_ratio_vs_floor_max",
    "prepare_peak_rss_mb_1gb",
    "merge_mb_per_s",
    "merge_ratio_vs_stdlib",
    "merge_ratio_vs_stdlib_min",
    "merge_ratio_vs_stdlib_max",
    "merge_ratio_vs_floor",
    "merge_ratio_vs_floor_min",
    "merge_ratio_vs_floor_max",
    "merge_peak_rss_mb_1m",
    "scale_prepare_seconds",
    "scale_merge_seconds",
    "scale_prepare_peak_rss_mb",
    "scale_merge_peak_rss_mb",
    "dag_parse_ms",
)


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            "prepare,merge,parse,scale",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(output.read_text())
    for key in KEYS:
        assert isinstance(results[key], int | float), key
        assert results[key] > 0, key
    assert results["context"]["mode"] == "smoke"
    assert results["context"]["failures"] == {}
    assert set(results["context"]["loadavg_1m_before_after"]) == {"prepare", "merge", "parse", "scale"}
    assert results["merge_context"]["counts"]["total"] == results["merge_context"]["lines"]
    rounds = results["scale_context"]["rounds"]
    assert len(rounds) == results["context"]["sizes"]["repeats"]
    for rnd in rounds:  # each round ran both sizes, each prepared and merged all its requests
        assert rnd["full"]["requests"] == 10 * rnd["tenth"]["requests"]
    for ratio in (
        "prepare_ratio_vs_stdlib",
        "prepare_ratio_vs_floor",
        "merge_ratio_vs_stdlib",
        "merge_ratio_vs_floor",
        "scale_prepare_growth_vs_tenth",
        "scale_merge_growth_vs_tenth",
    ):
        assert results[f"{ratio}_min"] <= results[ratio] <= results[f"{ratio}_max"], ratio
        assert f"| {ratio} |" in proc.stdout
    assert (
        len(results["prepare_context"]["ratio_vs_floor_per_round"]) == results["context"]["sizes"]["repeats"]
    )
    assert "1-minute load average:" in proc.stdout.splitlines()[0]


def _request_file(path: Path, count: int, invalid_every: int) -> int:
    return int(write_requests(path, count=count, invalid_every=invalid_every)["invalid"])


def test_floor_does_the_work(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    invalid = _request_file(path, 25, invalid_every=10)
    work = tmp_path / "floor"
    res = worker.floor(
        {
            "input": str(path),
            "work_dir": str(work),
            "shard_lines": 10,
            "expected_errors": invalid,
            "keep": True,
        }
    )
    assert (res["lines"], res["decoded"], res["errors"], res["shards"]) == (25, 23, 2, 3)
    assert res["written_bytes"] == path.stat().st_size
    assert b"".join(p.read_bytes() for p in sorted(work.glob("shard-*.jsonl"))) == b"".join(
        line for line in path.read_bytes().splitlines(keepends=True) if line.strip().endswith(b"}")
    )


@pytest.mark.parametrize(
    ("invalid_every", "expected_errors"),
    [
        pytest.param(10, 0, id="undecodable-line"),
        pytest.param(0, 1, id="missing-reject"),
    ],
)
def test_floor_fails_loudly(tmp_path: Path, invalid_every: int, expected_errors: int) -> None:
    path = tmp_path / "in.jsonl"
    _request_file(path, 25, invalid_every)
    args = {"input": str(path), "work_dir": str(tmp_path / "floor"), "expected_errors": expected_errors}
    with pytest.raises(RuntimeError, match="floor loop decoded"):
        worker.floor(args)


def test_merge_floor_fails_loudly_on_an_undecodable_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "output-0.jsonl", tmp_path / "errors-0.jsonl"
    good.write_text(_rows(["a", "b"]))
    bad.write_text(_rows(["c"])[:-10] + "\n")
    ok = worker.merge_floor({"files": [str(good)], "work_dir": str(tmp_path / "ok")})
    assert (ok["decoded"], ok["written_bytes"]) == (2, good.stat().st_size)
    with pytest.raises(RuntimeError, match="floor loop decoded 2 of 3 lines"):
        worker.merge_floor({"files": [str(good), str(bad)], "work_dir": str(tmp_path / "bad")})


@pytest.mark.parametrize(
    ("name", "spread", "expected"),
    [
        pytest.param("prepare_ratio_vs_stdlib", (2.6, 2.7, 2.9), "yes", id="at-least-clear"),
        pytest.param(
            "prepare_ratio_vs_stdlib", (2.4, 2.7, 2.9), "unclear (spread 2.400-2.900)", id="at-least-crossing"
        ),
        pytest.param("prepare_ratio_vs_stdlib", (2.1, 2.4, 2.6), "NO", id="at-least-median-short"),
        pytest.param("merge_ratio_vs_floor", (1.5, 1.8, 1.9), "yes", id="at-most-clear"),
        pytest.param(
            "merge_ratio_vs_floor", (1.5, 1.8, 2.2), "unclear (spread 1.500-2.200)", id="at-most-crossing"
        ),
        pytest.param("merge_ratio_vs_floor", (1.9, 2.1, 2.2), "NO", id="at-most-median-over"),
    ],
)
def test_verdict_needs_the_whole_spread(name: str, spread: tuple[float, float, float], expected: str) -> None:
    low, median, high = spread
    results = {name: median, f"{name}_min": low, f"{name}_max": high}
    assert verdict(name, TARGETS[name][1], results) == expected
    assert f"| {name} | {median:.3f} | {TARGETS[name][0]} | {expected} |" in table(results)


def test_e2e_ratios_pair_each_round_and_keep_the_spread() -> None:
    """Each round's DAG run is divided by the script run beside it, not the best by the best."""
    dags = [{"seconds": 30.0, "cpu_seconds": 9.0}, {"seconds": 26.0, "cpu_seconds": 12.0}]
    dags.append({"seconds": 27.0, "cpu_seconds": 10.0})
    scripts = [{"seconds": 25.0, "cpu_seconds": 6.0}, {"seconds": 26.0, "cpu_seconds": 4.0}]
    scripts.append({"seconds": 24.0, "cpu_seconds": 5.0})
    results: dict[str, Any] = {}
    put_ratio(results, "e2e_ratio_vs_script", round_ratios(dags, scripts, key="seconds"))
    put_ratio(results, "e2e_cpu_ratio_vs_script", round_ratios(dags, scripts))
    # Rounds 1.2, 1.0 and 1.125 (best of each would say 26/24 = 1.083); CPU 1.5, 3.0 and 2.0.
    assert (results["e2e_ratio_vs_script"], results["e2e_ratio_vs_script_min"]) == (1.125, 1.0)
    assert results["e2e_ratio_vs_script_max"] == 1.2
    assert [results[f"e2e_cpu_ratio_vs_script{end}"] for end in ("", "_min", "_max")] == [2.0, 1.5, 3.0]
    assert verdict("e2e_ratio_vs_script", TARGETS["e2e_ratio_vs_script"][1], results) == "NO"
    with pytest.raises(ValueError, match="zip"):  # a round without its other side is no pair
        round_ratios(dags, scripts[:2])


def test_verdict_without_a_spread() -> None:
    assert (
        verdict(
            "prepare_peak_rss_mb_1gb", TARGETS["prepare_peak_rss_mb_1gb"][1], {"prepare_peak_rss_mb_1gb": 90}
        )
        == "yes"
    )
    assert (
        verdict(
            "prepare_peak_rss_mb_1gb", TARGETS["prepare_peak_rss_mb_1gb"][1], {"prepare_peak_rss_mb_1gb": 400}
        )
        == "NO"
    )
    assert verdict("prepare_mb_per_s", None, {"prepare_mb_per_s": 50.0}) == ""


def _rows(ids: list[str], status: str = "succeeded") -> str:
    return "".join(
        json.dumps({"custom_id": i, "status": status, "response": {"id": i}, "error": None, "batch_id": "b"})
        + "\n"
        for i in ids
    )


@pytest.mark.parametrize(
    ("written", "status", "message"),
    [
        pytest.param(["b", "a", "c"], "succeeded", "input order", id="out-of-order"),
        pytest.param(["a", "b"], "succeeded", "input order", id="missing"),
        pytest.param(["a", "b", "c"], "failed", "not every request succeeded", id="failed"),
    ],
)
def test_result_check_fails_loudly(tmp_path: Path, written: list[str], status: str, message: str) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(_rows(written, status))
    with pytest.raises(RuntimeError, match=message):
        live._check_results(path, ["a", "b", "c"], "script")


def test_result_check_passes_complete_results(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(_rows(["a", "b", "c"]))
    assert live._check_results(path, ["a", "b", "c"], "script") == {"succeeded": 3}


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    from openai_emulator.testing import EmulatorServer

    server = EmulatorServer(tmp_path / "emu", validating_seconds=0, finalizing_seconds=0).start()
    yield server
    server.stop()


def test_e2e_script_does_the_dags_work(tmp_path: Path, emulator: Any) -> None:
    path = tmp_path / "in.jsonl"
    write_requests(path, count=60, short_fraction=0, invalid_every=0, models=live.E2E_MODELS)
    out = tmp_path / "out"
    result = live.e2e_script({"input": str(path), "base_url": emulator.base_url, "out_dir": str(out)})
    assert result["batches"] == 3  # one per model: a mixed batch would fail with model_mismatch
    assert result["requests"] == 60
    ids = live._input_ids(path)
    assert live._check_results(out / "results.jsonl", ids, "script") == {"succeeded": 60}


def test_e2e_script_fails_loudly_when_a_batch_does_not_complete(tmp_path: Path, emulator: Any) -> None:
    emulator.set_faults(expire_after_requests=5)
    path = tmp_path / "in.jsonl"
    write_requests(path, count=30, short_fraction=0, invalid_every=0, models=live.E2E_MODELS)
    with pytest.raises(RuntimeError, match="ended expired"):
        live.e2e_script({"input": str(path), "base_url": emulator.base_url, "out_dir": str(tmp_path / "out")})


def test_webhook_bench_smoke_counts_calls_and_wakes(tmp_path: Path) -> None:
    """The webhooks row at smoke size: a wait woken by its delivery costs a handful of status calls."""
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "bench", "--smoke", "--only", "webhooks", "--output", str(output)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["context"]["failures"] == {}
    context = results["webhook_context"]
    assert context["one_wait_webhooks"]["woken_by_webhook"] == 1
    assert context["one_wait_polling"]["woken_by_webhook"] == 0
    # Polling alone at a tenth of the net's interval costs about ten times the calls.
    assert (
        results["webhook_status_calls_per_batch_1h_polling_60s"]
        > 4 * results["webhook_status_calls_per_batch_1h_net_10min"]
    )
    assert results["webhook_status_calls_per_batch_1h_net_10min_many"] < 3
