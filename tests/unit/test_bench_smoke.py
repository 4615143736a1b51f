"""The benchmark harness runs end to end at smoke size and writes its contract keys."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

from tests.conftest import ROOT

KEYS = (
    "prepare_mb_per_s",
    "prepare_ratio_vs_stdlib",
    "prepare_peak_rss_mb_1gb",
    "merge_mb_per_s",
    "merge_peak_rss_mb_1m",
    "dag_parse_ms",
)


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "prepare,merge,parse", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(output.read_text())
    for key in KEYS:
        assert isinstance(results[key], int | float), key
        assert results[key] > 0, key
    assert results["context"]["mode"] == "smoke"
    assert "| prepare_ratio_vs_stdlib |" in proc.stdout
