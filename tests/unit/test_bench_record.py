"""``python -m bench.record`` and ``python -m bench.claim`` run end to end small and check what they drove."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> list[dict[str, object]]:
    """Run ``python -m bench.<args>``; return the JSON lines it printed (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def test_bench_record_drives_every_request_to_its_state_and_reports_it() -> None:
    run, summary = _bench("bench.record", "--requests", "3000", "--rounds", "1", "--preload", "1000")
    assert (run["requests"], run["preload"]) == (3000, 1000)
    assert set(run["steps_cpu_seconds"]) == {"claim", "sent", "final", "open"}
    assert run["db_mb"] > 0
    assert summary["cpu_seconds_median"] == run["cpu_seconds"]


def test_bench_claim_prepares_and_claims_every_request_and_reports_both() -> None:
    run, summary = _bench("bench.claim", "--mb", "1", "--rounds", "1")
    assert run["requests"] > 1000  # the child checked each was claimed by its one owner
    assert run["cpu_seconds"] == round(run["prepare_cpu_seconds"] + run["claim_cpu_seconds"], 3)
    assert summary["claim_cpu_seconds_median"] == run["claim_cpu_seconds"]
