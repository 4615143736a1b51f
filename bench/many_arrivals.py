"""
Many small files landing in the inbox of a real ``airflow standalone``, processed with no trigger.

Run: ``.venv/bin/python -m bench.many_arrivals [--files 10000] [--timeout 3600]``. Starts the stack
the deployment tests use (``tests/deploy/standalone.py``: ``airflow standalone`` with its scheduler,
triggerer and LocalExecutor, and the emulator), turns the inbox watcher on, and writes N 3-line
files into the inbox root as a careful user does (each written aside, then renamed in). Nobody
triggers a run: the watcher announces the files once settled (30 s), each run takes up to 1,000,
packs them, and the next run takes the rest. Waits until every file has its manifest, then checks
that every request has exactly one result and was sent exactly once. Printed: seconds from the
last file landing to the last result, runs, batches, the most any Airflow process of the stack held
in memory (RSS, sampled every 2 s) and their sum at its peak, and the load average. Not part of
``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from bench.common import standalone_stack

if TYPE_CHECKING:
    from pathlib import Path


def _write(path: Path, ids: list[str]) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
        for cid in ids
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)


def _airflow_rss() -> tuple[int, int]:
    """Return the largest RSS of one of the stack's Airflow processes and their sum, in KiB."""
    out = subprocess.run(["ps", "-eo", "rss=,args="], capture_output=True, text=True, check=True).stdout
    sizes = []
    for row in out.splitlines():
        rss, _, args = row.strip().partition(" ")
        if "airflow" in args and rss.isdigit():
            sizes.append(int(rss))
    return (max(sizes, default=0), sum(sizes))


def _done(results: Path, names: set[str]) -> int:
    return sum(1 for name in names if (results / name / "manifest.json").exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    out: dict[str, object] = {"files": args.files}
    with standalone_stack("many-arrivals-") as stack:
        _measure(stack, args.files, args.timeout, out)
    print(json.dumps(out, indent=2))
    return 0 if out.get("results_match") and out.get("each_sent_once") else 1


def _measure(stack: Any, files: int, timeout: float, out: dict[str, object]) -> None:
    from tests.deploy.processes import http_json
    from tests.deploy.standalone import DAG_ID
    from tests.reliability.support import sent_ids

    stack.watch_inbox(True)
    names = {f"arr-{n:06d}" for n in range(files)}
    expected = sorted(f"{name}-{i}" for name in names for i in range(3))
    started = time.time()
    for name in sorted(names):
        _write(stack.inbox / f"{name}.jsonl", [f"{name}-{i}" for i in range(3)])
    landed = time.time()
    out["seconds_to_land"] = round(landed - started, 1)
    peak_one = peak_sum = 0
    loads = []
    last = -1
    while True:
        done = _done(stack.results, names)
        one, total = _airflow_rss()
        peak_one, peak_sum = max(peak_one, one), max(peak_sum, total)
        loads.append(os.getloadavg()[0])
        if done != last:
            print(f"{time.time() - landed:7.1f} s after the last landing: {done} of {files} files")
            last = done
        if done == files or time.time() - landed > timeout:
            break
        time.sleep(2)
    out["seconds_last_landing_to_last_result"] = round(time.time() - landed, 1)
    out["files_with_results"] = done
    got = []
    for name in sorted(names):
        path = stack.results / name / "results.jsonl"
        if path.exists():
            got += [json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line.strip()]
    out["results_match"] = got == expected
    sent = [i for i in sent_ids(stack.emulator) if i.startswith("arr-")]
    out["each_sent_once"] = sorted(sent) == expected
    out["batches_created"] = stack.batches_created()
    runs = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns?limit=200")["dag_runs"]
    out["runs"] = {state: sum(1 for r in runs if r["state"] == state) for state in {r["state"] for r in runs}}
    out["peak_rss_mb_one_process"] = round(peak_one / 1024, 1)
    out["peak_rss_mb_all_airflow_processes"] = round(peak_sum / 1024, 1)
    out["loadavg_1m"] = {"min": round(min(loads), 2), "max": round(max(loads), 2)}


if __name__ == "__main__":
    sys.exit(main())
