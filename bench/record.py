"""What the request record costs per request: the claim, ``sent``, the answers and the give-up.

Run: ``.venv/bin/python -m bench.record [--requests 100000] [--rounds 3] [--preload 0]``. Each round
runs a child process on a fresh ledger folder. With ``--preload N`` the record first holds N
requests of other owners (a deployment's history). The child then drives one content's requests
through the record as the DAG does: claimed by a state folder (an 84-character owner, as a real
state-folder URL), marked ``sent`` per batch of 50,000, answered (97 % ``succeeded``, 1 %
``final_failed``) and the rest given up. Printed per round: the CPU and wall seconds of those
four steps in all, the CPU seconds of each, and the record's file size after them. The child
checks that every request ended in the state it was given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from bench.common import run_script

_CHILD = r"""
import hashlib, json, os, resource, sys, time
from pathlib import Path
sys.path[:0] = ["plugins", "."]
from openai_batch.records import RECORD_FILE, RequestRecord
folder, count, preload = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path = folder / RECORD_FILE
def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()
record = RequestRecord(path)
for start in range(0, preload, 100_000):
    owner = f"file:///results/history/{start:08d}/_state/" + "e" * 16 + "-" + "f" * 8
    rows = [(digest(f"old-{i}"), f"old-{i}", 0) for i in range(start, min(preload, start + 100_000))]
    record.claim(owner, rows)
    record.mark_sent(owner, [d for d, _, _ in rows], f"batch_{start:024x}")
    record.mark_final(owner, [d for d, _, _ in rows], "succeeded", f"batch_{start:024x}")
owner = "file:///opt/airflow/results/2024-01-01/requests-xyz/_state/" + "a" * 16 + "-" + "b" * 8
assert len(owner) == 84, len(owner)
rows = [(digest(f"req-{i:09d}"), f"req-{i:09d}", i // 50_000) for i in range(count)]
digests = [d for d, _, _ in rows]
batches = {}
for d, _, shard in rows:
    batches.setdefault(shard, []).append(d)
ok = [d for i, d in enumerate(digests) if i % 100 >= 3]
bad = [d for i, d in enumerate(digests) if i % 100 == 0]
cpu0, t0 = time.process_time(), time.perf_counter()
steps = {}
def step(name, fn):
    c = time.process_time()
    fn()
    steps[name] = round(time.process_time() - c, 3)
step("claim", lambda: record.claim(owner, rows))
def sent():
    for shard, ds in batches.items():
        record.mark_sent(owner, ds, f"batch_{shard:032x}")
step("sent", sent)
def final():
    record.mark_final(owner, ok, "succeeded", "batch_answers")
    record.mark_final(owner, bad, "final_failed", "batch_answers")
step("final", final)
step("open", lambda: record.mark_open(owner, digests))
cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
states = {}
for start in range(0, count, 100_000):
    for entry in record.entries(digests[start:start + 100_000]).values():
        assert entry.owner == owner, entry
        states[entry.state] = states.get(entry.state, 0) + 1
want = {"succeeded": len(ok), "final_failed": len(bad), "open": count - len(ok) - len(bad)}
assert states == want, (states, want)
print(json.dumps({
    "requests": count, "preload": preload, "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
    "steps_cpu_seconds": steps, "db_mb": round(path.stat().st_size / 1e6, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print one JSON line per round, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preload", type=int, default=0)
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
            done, run = run_script(_CHILD, [tmp, str(args.requests), str(args.preload)])
        if run is None:
            raise SystemExit(f"bench.record: the child failed:\n{done.stderr}")
        print(json.dumps(run))
        runs.append(run)
    cpu = [r["cpu_seconds"] for r in runs]
    print(
        json.dumps(
            {
                "cpu_seconds_median": statistics.median(cpu),
                "cpu_seconds_min": min(cpu),
                "cpu_seconds_max": max(cpu),
                "db_mb_max": max(r["db_mb"] for r in runs),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
