"""What preparing a file and claiming its requests cost together: the prepare task's two passes.

Run: ``.venv/bin/python -m bench.claim [--mb 250] [--rounds 3] [--root DIR]``. The input is the
prepare bench's corpus at ``--mb`` megabytes (chat lines, 30% bare bodies, one broken line in
20,000). Each round runs a child process that calls ``prepare_requests`` on it, then
``claim_shards`` on its shards for one owner in a fresh request record, as the prepare task does,
and prints the CPU seconds of each. The child checks that every valid request was claimed by that
owner, under the digest of the line as its shard holds it. ``--root`` takes the ``plugins`` folder
of another checkout (an earlier commit, to compare); the default is this one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from bench.common import MB, ROOT, WORK, run_script
from bench.gen import ensure_requests

_CHILD = r"""
import hashlib, json, resource, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1] + "/plugins"]
from openai_batch.claims import claim_shards
from openai_batch.prepare import prepare_requests
from openai_batch.records import RequestRecord
src, folder = Path(sys.argv[2]), Path(sys.argv[3])
work = folder / "work"
cpu = time.process_time()
with src.open("rb") as fin:
    result = prepare_requests(fin, source_name=src.name, work_dir=work)
prepare = time.process_time() - cpu
owner = "file:///opt/airflow/results/2024-01-01/requests-xyz/_state/" + "a" * 16 + "-" + "b" * 8
record = RequestRecord(folder / "requests.sqlite")
cpu = time.process_time()
outcome = claim_shards(record, owner, result.shards, work)
claim = time.process_time() - cpu
assert not outcome.kept and not outcome.borrowed, outcome
digests = []
for shard in result.shards:
    with open(shard.path, "rb") as fin:
        digests += [hashlib.sha256(line.rstrip(b"\n")).hexdigest() for line in fin]
assert len(digests) == result.valid, (len(digests), result.valid)
claimed = 0
for start in range(0, len(digests), 100_000):
    entries = record.entries(digests[start:start + 100_000])
    assert all(e.owner == owner for e in entries.values())
    claimed += len(entries)
assert claimed == result.valid, (claimed, result.valid)
prepare, claim = round(prepare, 3), round(claim, 3)
print(json.dumps({
    "requests": result.valid, "prepare_cpu_seconds": prepare, "claim_cpu_seconds": claim,
    "cpu_seconds": round(prepare + claim, 3),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print one JSON line per round, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=str(ROOT))
    args = parser.parse_args(argv)
    path = WORK / f"claim-{args.mb}mb.jsonl"
    ensure_requests(path, args.mb * MB)
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-claim-") as tmp:
            done, run = run_script(_CHILD, [args.root, str(path), tmp])
        if run is None:
            raise SystemExit(f"bench.claim: the child failed:\n{done.stderr}")
        print(json.dumps(run))
        runs.append(run)
    summary = {"root": args.root}
    for key in ("prepare_cpu_seconds", "claim_cpu_seconds", "cpu_seconds"):
        values = [r[key] for r in runs]
        summary[f"{key}_median"] = statistics.median(values)
        summary[f"{key}_min"], summary[f"{key}_max"] = min(values), max(values)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
