"""Load check: run a 50,000-request (~200 MB) batch through a real emulator process and report its peak RSS.

Run with ``python -m openai_emulator.loadcheck [--requests 50000] [--line-bytes 3900]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import openai

from openai_emulator.testing import EmulatorProcess


def write_input(path: Path, requests: int, line_bytes: int) -> int:
    """Write a chat-completions batch input file line by line; return its size."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(requests):
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]},
            }
            padding = max(0, line_bytes - len(json.dumps(line)) - 1)
            line["body"]["messages"][0]["content"] = f"question {i} " + "x" * padding  # type: ignore[index]
            handle.write(json.dumps(line) + "\n")
    return path.stat().st_size


def vm_hwm_kib(pid: int) -> int:
    """Return the peak resident set size (VmHWM) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM not found")


def main() -> None:
    """Generate the input, run it and print timings and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000, help="number of request lines")
    parser.add_argument("--line-bytes", type=int, default=3900, help="approximate bytes per line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emulator-loadcheck-") as tmp:
        root = Path(tmp)
        size = write_input(root / "input.jsonl", args.requests, args.line_bytes)
        print(f"input: {args.requests} requests, {size / 1e6:.1f} MB")
        flags = ["--requests-per-second", "0", "--log-level", "warning"]
        emulator = EmulatorProcess(root / "data", extra_args=flags)
        emulator.start()
        try:
            print(f"pid {emulator.pid}, VmHWM after start: {vm_hwm_kib(emulator.pid) / 1024:.1f} MiB")
            client = openai.OpenAI(base_url=emulator.base_url, api_key="loadcheck", timeout=600)
            started = time.monotonic()
            with (root / "input.jsonl").open("rb") as handle:
                uploaded = client.files.create(file=handle, purpose="batch")
            print(f"upload: {time.monotonic() - started:.1f} s")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            started = time.monotonic()
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.5)
                batch = client.batches.retrieve(batch.id)
            elapsed = time.monotonic() - started
            print(f"batch {batch.status} in {elapsed:.1f} s; counts {batch.request_counts}")
            lines = 0
            with client.files.with_streaming_response.content(batch.output_file_id or "") as response:
                for _ in response.iter_lines():
                    lines += 1
            print(f"output lines: {lines}")
            print(f"emulator peak RSS (VmHWM): {vm_hwm_kib(emulator.pid) / 1024:.1f} MiB")
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
