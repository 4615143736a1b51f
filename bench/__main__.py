"""Run the benchmarks, print a markdown table and write ``bench/results.json``.

``python -m bench``            full sizes (1 GB prepare, 1M-line merge, 1,000 triggers, 100k-request DAG)
``python -m bench --smoke``    tiny sizes, well under a minute (CI); e2e only with ``--only e2e``
``python -m bench --scale F``  multiply the data sizes by F
``python -m bench --only prepare,merge``   run some benchmarks only (prepare, merge, trigger, e2e, parse)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

from bench.common import BENCH_DIR, MB, ROOT, WORK, run_worker
from bench.gen import ensure_requests, ensure_results

NAMES = ("prepare", "merge", "parse", "trigger", "e2e")

# metric -> (target text, check); a None check means the metric is informational.
TARGETS: dict[str, tuple[str, Any]] = {
    "prepare_mb_per_s": ("", None),
    "prepare_ratio_vs_stdlib": (">= 1.0", lambda v: v >= 1.0),
    "prepare_peak_rss_mb_1gb": ("<= 300", lambda v: v <= 300),
    "merge_mb_per_s": ("", None),
    "merge_peak_rss_mb_1m": ("<= 300", lambda v: v <= 300),
    "trigger_lag_p99_ms_ours": ("<= 50", lambda v: v <= 50),
    "trigger_lag_p99_ms_provider": ("", None),
    "e2e_seconds": ("", None),
    "e2e_ratio_vs_script": ("<= 2.0", lambda v: v <= 2.0),
    "dag_parse_ms": ("", None),
}


def sizes_for(smoke: bool, scale: float) -> dict[str, Any]:
    if smoke:
        base = {
            "prepare_bytes": 8 * MB,
            "merge_lines": 20_000,
            "triggers": 50,
            "trigger_window_s": 2.0,
            "trigger_warmup_s": 1.0,
            "trigger_poll_interval_s": 1.0,
            "e2e_requests": 1_000,
            "parse_runs": 1,
        }
    else:
        base = {
            "prepare_bytes": 1024 * MB,
            "merge_lines": 1_000_000,
            "triggers": 1_000,
            "trigger_window_s": 15.0,
            # The window starts once all 1,000 triggers have started polling (first polls come
            # 0.5-1.5 intervals after the start).
            "trigger_warmup_s": 10.0,
            # 1,000 waits polling every 5 s: 200 status calls per second against a 200 ms server.
            "trigger_poll_interval_s": 5.0,
            "e2e_requests": 100_000,
            "parse_runs": 5,
        }
    for key in ("prepare_bytes", "merge_lines", "triggers", "e2e_requests"):
        base[key] = max(1, int(base[key] * scale))
    return base


def bench_prepare(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    path = WORK / f"requests-{sizes['prepare_bytes'] // MB}mb.jsonl"
    t0 = time.perf_counter()
    info = ensure_requests(path, sizes["prepare_bytes"])
    gen_s = time.perf_counter() - t0
    with path.open("rb") as fh:  # warm the page cache so both loops read from memory
        while fh.read(16 * MB):
            pass
    base = run_worker("baseline", {"input": str(path)})
    prep = run_worker("prepare", {"input": str(path), "work_dir": str(WORK / "prepare-out")})
    results["prepare_mb_per_s"] = round(prep["mb_per_s"], 2)
    results["prepare_ratio_vs_stdlib"] = round(base["seconds"] / prep["seconds"], 3)
    results["prepare_peak_rss_mb_1gb"] = round(prep["peak_rss_mb"], 1)
    results["prepare_context"] = {
        "input_bytes": info["bytes"],
        "input_lines": info["lines"],
        "generate_seconds": round(gen_s, 2),
        "prepare_seconds": round(prep["seconds"], 3),
        "stdlib_seconds": round(base["seconds"], 3),
        "stdlib_mb_per_s": round(base["mb_per_s"], 2),
        "valid": prep["valid"],
        "rejected": prep["rejected"],
        "shards": prep["shards"],
        "rss_measured_on_bytes": info["bytes"],
    }


def bench_merge(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    directory = WORK / f"results-{sizes['merge_lines']}"
    t0 = time.perf_counter()
    info = ensure_results(directory, sizes["merge_lines"])
    gen_s = time.perf_counter() - t0
    res = run_worker(
        "merge",
        {"directory": str(directory), "files": info["files"], "db": str(WORK / "merge-out" / "store.sqlite")},
    )
    results["merge_mb_per_s"] = round(res["mb_per_s"], 2)
    results["merge_peak_rss_mb_1m"] = round(res["peak_rss_mb"], 1)
    results["merge_context"] = {
        "lines": res["lines"],
        "files": len(info["files"]),
        "input_bytes": res["bytes"],
        "generate_seconds": round(gen_s, 2),
        "add_lines_seconds": round(res["add_seconds"], 3),
        "write_results_seconds": round(res["write_seconds"], 3),
        "total_seconds": round(res["seconds"], 3),
        "counts": res["counts"],
    }


def bench_parse(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    dag_file = str(ROOT / "dags" / "openai_batch.py")
    cold = []
    warm: list[float] = []
    for n in range(sizes["parse_runs"]):
        res = run_worker("parse", {"dag_file": dag_file, "warm_runs": 5 if n == 0 else 0})
        cold.append(res["cold_ms"])
        warm.extend(res["warm_ms"])
    results["dag_parse_ms"] = round(statistics.median(cold), 1)
    results["parse_context"] = {
        "fresh_process_runs_ms": [round(c, 1) for c in cold],
        "in_process_repeat_median_ms": round(statistics.median(warm), 1) if warm else None,
        "note": "dag_parse_ms: median over fresh processes of DagBag(dags/openai_batch.py) after "
        "importing airflow and airflow.sdk (the plugin modules it imports are included)",
    }


def bench_trigger(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    from bench import live

    live.run_trigger_bench(sizes, results)


def bench_e2e(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    from bench import live

    live.run_e2e_bench(sizes, results)


RUNNERS = {
    "prepare": bench_prepare,
    "merge": bench_merge,
    "parse": bench_parse,
    "trigger": bench_trigger,
    "e2e": bench_e2e,
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    rows = ["| metric | value | target | ok? |", "|---|---:|---|---|"]
    for name, (target, check) in TARGETS.items():
        if name not in results:
            continue
        value = results[name]
        ok = "" if check is None else ("yes" if check(value) else "NO")
        rows.append(f"| {name} | {_fmt(value)} | {target} | {ok} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the data sizes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--output", default=str(BENCH_DIR / "results.json"), help="results file")
    opts = parser.parse_args(argv)
    # The DAG run alone has ~40 s of fixed Airflow start-up, so smoke mode leaves it out unless asked.
    default = [n for n in NAMES if n != "e2e"] if opts.smoke else list(NAMES)
    only = [n.strip() for n in opts.only.split(",") if n.strip()] or default
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    WORK.mkdir(parents=True, exist_ok=True)
    sizes = sizes_for(opts.smoke, opts.scale)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in NAMES:
        if name not in only:
            continue
        started = time.perf_counter()
        print(f"# {name} ...", file=sys.stderr, flush=True)
        try:
            RUNNERS[name](sizes, results)
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other benchmarks
            failures[name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"# {name} FAILED: {failures[name]}", file=sys.stderr, flush=True)
        timings[name] = round(time.perf_counter() - started, 2)
        print(f"# {name} done in {timings[name]} s", file=sys.stderr, flush=True)
    results["context"] = {
        "mode": "smoke" if opts.smoke else "full",
        "scale": opts.scale,
        "sizes": sizes,
        "bench_seconds": timings,
        "failures": failures,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(opts.output, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, sort_keys=False)
        fh.write("\n")
    print(table(results))
    print(f"\nwrote {opts.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
