"""
Seconds from a batch's end to its file's results, webhooks on, on a real ``airflow standalone``.

Run: ``.venv/bin/python -m bench.webhook_latency [--runs 20] [--poll-interval 3600]``. Starts the
stack the deployment tests use (``tests/deploy/standalone.py``: ``airflow standalone`` with its
scheduler, triggerer and LocalExecutor, and the emulator posting signed webhooks to the API
server's receiver), then runs the DAG N times one after another on a 2-request file whose batch
the emulator holds until the wait has deferred and settled. Each run must succeed, with its batch's
end recorded by the receiver. Printed: p50, p95 and max of the seconds from the batch's end (the
API's ``completed_at``, whole seconds, so up to 1 s early) to the end of its wait and of its
file's ``write_results``, and the load average. About 40 s per run; not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench.common import standalone_stack


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--poll-interval", type=int, default=3600, help="the net: no round comes in time")
    args = parser.parse_args(argv)
    waits, writes, loads = [], [], []
    with standalone_stack("webhook-latency-") as stack:
        from tests.deploy.standalone import HELD_MODEL

        for n in range(args.runs):
            folder = f"latency-{n:03d}"
            stack.write_requests(stack.inbox / folder / "requests.jsonl", folder, HELD_MODEL)
            run_id, batch_id, ended = stack.run_held(folder, HELD_MODEL, args.poll_interval)
            run = stack.wait_for_run(run_id, timeout=max(120, args.poll_interval + 60))
            if run["state"] != "success":
                raise RuntimeError(f"run {run_id} ended {run['state']}: {stack.task_states(run_id)}")
            if batch_id not in stack.recorded_ends():
                raise RuntimeError(f"the receiver recorded no end of {batch_id}")
            phases = stack.ended_after(run_id, ended)
            waits.append(phases["wait_for_batch end"])
            writes.append(phases["write_results end"])
            loads.append(round(os.getloadavg()[0], 2))
            print(f"run {n + 1}/{args.runs}: wait ended {waits[-1]} s, results {writes[-1]} s after")
    summary = {
        "runs": len(writes),
        "poll_interval": args.poll_interval,
        "wait_ended_after_s": {"p50": _pct(waits, 0.5), "p95": _pct(waits, 0.95), "max": max(waits)},
        "results_written_after_s": {"p50": _pct(writes, 0.5), "p95": _pct(writes, 0.95), "max": max(writes)},
        "mean_results_written_after_s": round(statistics.mean(writes), 2),
        "loadavg_1m": {"min": min(loads), "max": max(loads)},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
