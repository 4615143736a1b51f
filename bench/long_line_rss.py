"""Peak RSS of prepare on a ``.jsonl.gz`` holding one 1 GiB line between two good lines.

Run: ``.venv/bin/python -m bench.long_line_rss [--size-mib 1024]``. The archive is written to a
temporary folder (about 1 MB: the long line is one repeated byte), then a child process opens it
as prepare does (:class:`openai_batch.storage.InputFile`) and runs ``prepare_requests`` on it; the
child's peak RSS (``ru_maxrss``) is printed with the counts, so the figure covers the read,
decompression and rejection of the line, not this parent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path[:0] = ["plugins", "."]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from airflow.sdk import ObjectStoragePath
from openai_batch.prepare import prepare_requests
from openai_batch.storage import InputFile
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, work = Path(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
with InputFile(ObjectStoragePath(f"file://{path}")) as src, src.content() as fin:
    result = prepare_requests(fin, source_name=path.name, work_dir=work)
seconds = time.perf_counter() - start
rejects = [json.loads(line) for line in (work / "rejects.jsonl").read_text().splitlines()]
print(json.dumps({
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": after_imports / 1024,
    "seconds": round(seconds, 2),
    "valid": result.valid,
    "rejected": result.rejected,
    "reject_line": rejects[0]["line"],
    "reject_reason": rejects[0]["reason"],
    "reject_bytes": len(json.dumps(rejects[0]).encode()),
    "raw_truncated": rejects[0].get("raw_truncated"),
}))
"""


def _line(custom_id: str, text: str) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


def main(argv: list[str] | None = None) -> int:
    about = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m bench.long_line_rss", description=about)
    parser.add_argument("--size-mib", type=int, default=1024, help="length of the long line (MiB)")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="long-line-rss-") as tmp:
        archive = Path(tmp) / "long.jsonl.gz"
        with gzip.open(archive, "wb", compresslevel=9) as out:
            out.write(_line("before", "hi"))
            out.write(b'{"custom_id": "long", "body": {"text": "')
            chunk = b"x" * (1 << 20)
            for _ in range(args.size_mib):
                out.write(chunk)
            out.write(b'"}}\n')
            out.write(_line("after", "bye"))
        work = Path(tmp) / "work"
        work.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(archive), str(work)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        found["archive_bytes"] = archive.stat().st_size
        found["line_mib"] = args.size_mib
    print(json.dumps(found, indent=2))
    ok = found["valid"] == 2 and found["rejected"] == 1 and found["reject_line"] == 2
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
