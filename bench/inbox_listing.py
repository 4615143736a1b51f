"""What the inbox watcher costs per listing, for an inbox of N files (default 10,000 and 100,000).

Run: ``.venv/bin/python -m bench.inbox_listing [--files 10000 100000]``. For each N, a child process
fills a temporary inbox (a tenth of the files in dated folders), then lists it with the watcher's
``look``: the first listings announce every file (and record them, at most ``MAX_PER_LOOK`` per
listing), the next one finds nothing due, and once every file is marked done a last one finds
nothing due either. Printed per N: the seconds of the first and of the steady listings, the
listings it took to announce all, the files announced, and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from bench.common import run_script

_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
sys.path[:0] = ["plugins", "."]
from openai_batch.arrivals import ArrivalRecord, FileStat
from openai_batch.watcher import InboxArrivalTrigger
base, count = Path(sys.argv[1]), int(sys.argv[2])
inbox, ledger = base / "inbox", base / "ledger"
line = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}\n'
old = time.time() - 3600
for i in range(count):
    folder = inbox / (f"2024-01-{i % 28 + 1:02d}" if i % 10 == 0 else "")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"f{i:07d}.jsonl"
    path.write_bytes(line)
    os.utime(path, (old, old))
watcher = InboxArrivalTrigger(inbox=str(inbox), ledger_dir=str(ledger), settle_seconds=30)
out = {"files": count}
looks, announced = [], 0
while True:  # announced over several listings (MAX_PER_LOOK per listing)
    start = time.perf_counter()
    due = watcher.look({})
    looks.append(time.perf_counter() - start)
    announced += len(due)
    if not due:
        break
out["listings_to_announce_all"] = len(looks) - 1
out["first_look_s"] = round(looks[0], 3)
out["first_look_announced"] = announced
out["second_look_s"] = round(looks[-1], 3)  # the listing that found nothing more to announce
out["second_look_announced"] = 0
record = ArrivalRecord(ledger / "arrivals.sqlite")
rows = record.snapshot()
record.mark([FileStat(s, r.size, r.mtime_ns, r.ino) for s, r in rows.items()], "done", time.time(), "bench")
start = time.perf_counter()
due = watcher.look({})
out["look_after_done_s"] = round(time.perf_counter() - start, 3)
out["look_after_done_announced"] = len(due)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    for count in args.files:
        with tempfile.TemporaryDirectory(prefix="inbox-bench-") as tmp:
            done, result = run_script(_CHILD, [tmp, str(count)])
            if result is None:
                print(done.stderr, file=sys.stderr)
                return done.returncode or 1
            expected = count
            if result["first_look_announced"] != expected or result["second_look_announced"] != 0:
                print(f"the watcher announced the wrong files: {result}", file=sys.stderr)
                return 1
            if result["look_after_done_announced"] != 0:
                print(f"files marked done were announced again: {result}", file=sys.stderr)
                return 1
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
