"""Measurements that run in a fresh process: ``python -m bench.worker NAME JSON_ARGS``.

Each prints one JSON object as its last stdout line; the parent's memory never counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import MB, peak_rss_mb, profiled, setup_paths


def _throughput(seconds: float, cpu: float, size: int) -> dict[str, Any]:
    """The figures every pass over a file reports: wall and CPU seconds, bytes, MB/s, peak RSS."""
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": size,
        "mb_per_s": size / MB / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def prepare(args: dict[str, Any]) -> dict[str, Any]:
    setup_paths()
    from openai_batch.prepare import prepare_requests

    src = Path(args["input"])
    work = Path(args["work_dir"])
    shutil.rmtree(work, ignore_errors=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    with profiled(f"prepare-{os.getpid()}"), src.open("rb") as fh:
        result = prepare_requests(fh, source_name=src.name, work_dir=work)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    size = src.stat().st_size
    out = {
        **_throughput(seconds, cpu, size),
        "lines": result.lines,
        "valid": result.valid,
        "rejected": result.rejected,
        "shards": len(result.shards),
    }
    if not args.get("keep"):
        shutil.rmtree(work, ignore_errors=True)
    return out


def baseline(args: dict[str, Any]) -> dict[str, Any]:
    """The reference loop: ``json.loads`` + ``json.dumps`` over every line, nothing else."""
    src = Path(args["input"])
    loads, dumps = json.loads, json.dumps
    errors = lines = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    with src.open("rb") as fh:
        for line in fh:
            lines += 1
            try:
                dumps(loads(line))
            except ValueError:
                errors += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    size = src.stat().st_size
    return {**_throughput(seconds, cpu, size), "lines": lines, "errors": errors}


def merge_baseline(args: dict[str, Any]) -> dict[str, Any]:
    """The merge's reference loop: ``json.loads`` + ``json.dumps`` over every result line of every file."""
    files = [Path(f) for f in args["files"]]
    loads, dumps = json.loads, json.dumps
    lines = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for path in files:
        with path.open("rb") as fh:
            for line in fh:
                dumps(loads(line))
                lines += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    size = sum(p.stat().st_size for p in files)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": size,
        "lines": lines,
        "peak_rss_mb": peak_rss_mb(),
    }


def _floor_pass(sources: list[Path], work: Path, shard_lines: int, expected_errors: int) -> dict[str, Any]:
    """Decode every line with msgspec, hash it and write it out: the work no prepare or merge can skip.

    Lines go unchanged to ``shard-NNNNN.jsonl`` files in ``work``, a new one every ``shard_lines``
    lines (0: one file); a line msgspec cannot decode goes to ``rejects.jsonl``. Every decoded line
    gets its own SHA-256 digest, as prepare gives every request (its ``requests.idx``). Raises
    unless every line read was decoded (or counted as one of ``expected_errors`` rejects), hashed,
    and every byte read was written.
    """
    import msgspec

    decode, decode_error, sha256 = msgspec.json.decode, msgspec.DecodeError, hashlib.sha256
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lines = decoded = errors = in_shard = hashed = 0
    shards = 1
    started, cpu_started = time.perf_counter(), time.process_time()
    rejects = (work / "rejects.jsonl").open("wb", buffering=MB)
    shard = (work / "shard-00000.jsonl").open("wb", buffering=MB)
    write = shard.write
    for path in sources:
        with path.open("rb") as fh:
            for line in fh:
                lines += 1
                try:
                    decode(line)
                except decode_error:
                    errors += 1
                    rejects.write(line)
                    continue
                decoded += 1
                hashed += len(sha256(line).digest())
                write(line)
                in_shard += 1
                if in_shard == shard_lines:
                    shard.close()
                    shard = (work / f"shard-{shards:05d}.jsonl").open("wb", buffering=MB)
                    shards += 1
                    write = shard.write
                    in_shard = 0
    shard.close()
    rejects.close()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    size = sum(p.stat().st_size for p in sources)
    written = sum(p.stat().st_size for p in work.glob("*.jsonl"))
    if decoded + errors != lines or errors != expected_errors:
        raise RuntimeError(
            f"floor loop decoded {decoded} of {lines} lines ({errors} rejects, {expected_errors} expected)"
        )
    if written != size:
        raise RuntimeError(f"floor loop wrote {written} of {size} bytes read")
    if hashed != decoded * sha256().digest_size:
        raise RuntimeError(f"floor loop hashed {hashed // sha256().digest_size} of {decoded} decoded lines")
    return {
        **_throughput(seconds, cpu, size),
        "lines": lines,
        "decoded": decoded,
        "errors": errors,
        "written_bytes": written,
        "shards": shards,
    }


def floor(args: dict[str, Any]) -> dict[str, Any]:
    """prepare's floor: decode, hash and write every line of the input to shards of ``shard_lines``."""
    setup_paths()
    from openai_batch.limits import MAX_REQUESTS_PER_BATCH

    work = Path(args["work_dir"])
    shard_lines = int(args.get("shard_lines", MAX_REQUESTS_PER_BATCH))
    out = _floor_pass([Path(args["input"])], work, shard_lines, int(args.get("expected_errors", 0)))
    if not args.get("keep"):
        shutil.rmtree(work, ignore_errors=True)
    return out


def merge_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The merge's floor: decode, hash and write every result line of every file to one results file."""
    work = Path(args["work_dir"])
    out = _floor_pass([Path(f) for f in args["files"]], work, 0, 0)
    if not args.get("keep"):
        shutil.rmtree(work, ignore_errors=True)
    return out


def merge(args: dict[str, Any]) -> dict[str, Any]:
    setup_paths()
    from openai_batch.results import ResultStore, read_order

    directory = Path(args["directory"])
    db = Path(args["db"])
    scratch = [db, db.with_name(db.name + ".bodies")]  # the store's database and its bodies file
    for path in scratch:
        path.unlink(missing_ok=True)
    files = [Path(f) for f in args["files"]]
    started, cpu_started = time.perf_counter(), time.process_time()
    lines = 0
    with profiled(f"merge-{os.getpid()}"), ResultStore(db) as store:
        for n, path in enumerate(files):
            with path.open("rb") as fh:
                lines += store.add_lines(fh, batch_id=f"batch_{n:04d}", round=0)
        added = time.perf_counter()
        out_path = db.with_name("results.jsonl")
        with out_path.open("wb") as out:
            counts = store.write_results(read_order(directory / "order.txt"), out)
    finished, cpu = time.perf_counter(), time.process_time() - cpu_started
    size = sum(p.stat().st_size for p in files)
    result = {
        "cpu_seconds": cpu,
        "lines": lines,
        "bytes": size,
        "add_seconds": added - started,
        "write_seconds": finished - added,
        "seconds": finished - started,
        "mb_per_s": size / MB / (finished - started),
        "results_bytes": out_path.stat().st_size,
        "counts": counts.to_dict(),
        "peak_rss_mb": peak_rss_mb(),
    }
    for path in [*scratch, out_path]:
        path.unlink(missing_ok=True)
    return result


def parse(args: dict[str, Any]) -> dict[str, Any]:
    """Time the DAG file alone: airflow (and its SDK) is imported before the clock starts."""
    import tempfile

    import airflow  # noqa: F401
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    dag_file = args["dag_file"]
    with tempfile.TemporaryDirectory() as empty:  # DagBag's own first-use cost is not the file's
        DagBag(dag_folder=empty)
    started = time.perf_counter()
    bag = DagBag(dag_folder=dag_file)
    cold = time.perf_counter() - started
    if bag.import_errors or "openai_batch" not in bag.dag_ids:
        raise RuntimeError(f"DAG did not parse: {bag.import_errors}")
    warm = []
    for _ in range(int(args.get("warm_runs", 0))):
        started = time.perf_counter()
        DagBag(dag_folder=dag_file)
        warm.append(time.perf_counter() - started)
    return {"cold_ms": cold * 1000, "warm_ms": [w * 1000 for w in warm]}


def main() -> None:
    name, raw = sys.argv[1], sys.argv[2]
    args = json.loads(raw)
    if name in ("trigger", "e2e_dag", "e2e_script"):
        from bench import live

        func = getattr(live, name)
    elif name == "webhook_waits":
        from bench import webhooks

        func = webhooks.webhook_waits
    else:
        func = globals()[name]
    result = func(args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
