"""Run the benchmarks, print a markdown table and write ``bench/results.json``.

``python -m bench``            full sizes (1 GB prepare, 1M-line merge, 1,000 triggers, 100k-request DAG)
``python -m bench --only scale``  prepare and merge 10M requests (and 1M, to show the growth)
``python -m bench --smoke``    tiny sizes, well under a minute (CI); e2e only with ``--only e2e``
``python -m bench --scale F``  multiply the data sizes by F
``python -m bench --only prepare,merge``  some benchmarks only (prepare, merge, parse, trigger, e2e, scale)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

from bench.common import BENCH_DIR, MB, ROOT, WORK, put_ratio, round_ratios, run_worker
from bench.gen import ensure_requests, ensure_results, ensure_small_requests

NAMES = ("prepare", "merge", "parse", "trigger", "webhooks", "e2e", "scale")

# metric -> (target text, check); a None check means the metric is informational. A metric with
# ``<metric>_min`` and ``<metric>_max`` in the results (its spread over the rounds) meets its target
# only if the whole spread does (see ``verdict``).
TARGETS: dict[str, tuple[str, Any]] = {
    "prepare_mb_per_s": ("", None),
    "prepare_ratio_vs_stdlib": (">= 2.5", lambda v: v >= 2.5),
    "prepare_ratio_vs_floor": ("<= 2.0", lambda v: v <= 2.0),
    "prepare_peak_rss_mb_1gb": ("<= 300", lambda v: v <= 300),
    "merge_mb_per_s": ("", None),
    "merge_ratio_vs_stdlib": (">= 2.0", lambda v: v >= 2.0),
    "merge_ratio_vs_floor": ("<= 2.0", lambda v: v <= 2.0),
    "merge_peak_rss_mb_1m": ("<= 300", lambda v: v <= 300),
    "trigger_lag_p99_ms_ours": ("", None),
    "trigger_lag_p99_ms_ours_net": ("<= 20", lambda v: v <= 20),
    "trigger_loadavg_ours": ("", None),
    "trigger_lag_p99_ms_ours_gc_freeze_net": ("<= 20", lambda v: v <= 20),
    "trigger_lag_p99_ms_provider": ("", None),
    "trigger_lag_p99_ms_provider_net": ("", None),
    "trigger_lag_p99_ms_ours_many": ("", None),
    "trigger_lag_p99_ms_ours_many_net": ("<= 20 (10,000 waits)", lambda v: v <= 20),
    "trigger_idle_loop_p99_ms_ours_many": ("", None),
    "trigger_loadavg_ours_many": ("", None),
    "trigger_cpu_ms_per_batch_hour_ours_gc_freeze": ("", None),
    "trigger_cpu_ms_per_batch_hour_provider": ("", None),
    "trigger_cpu_ms_per_batch_hour_ours_many": ("", None),
    "trigger_status_calls_per_batch_per_interval_ours_gc_freeze": ("", None),
    "trigger_status_calls_per_batch_per_interval_provider": ("", None),
    "trigger_status_calls_per_batch_per_interval_ours_many": ("", None),
    "webhook_status_calls_per_batch_1h_net_10min": ("<= 8", lambda v: v <= 8),
    "webhook_status_calls_per_batch_1h_net_10min_many": ("", None),
    "webhook_status_calls_per_batch_1h_polling_60s": ("", None),
    "webhook_wait_woken_after_delivery_s_p95_scaled": ("", None),
    "webhook_loadavg": ("", None),
    "e2e_seconds": ("", None),
    "e2e_script_seconds": ("", None),
    "e2e_ratio_vs_script": ("<= 0.85", lambda v: v <= 0.85),
    "e2e_cpu_ratio_vs_script": ("<= 1.0", lambda v: v <= 1.0),
    "e2e_airflow_startup_seconds": ("", None),
    "scale_requests": ("", None),
    "scale_prepare_seconds": ("", None),
    "scale_prepare_peak_rss_mb": ("<= 300", lambda v: v <= 300),
    "scale_merge_seconds": ("", None),
    "scale_merge_peak_rss_mb": ("<= 300", lambda v: v <= 300),
    "scale_prepare_growth_vs_tenth": ("<= 1.1", lambda v: v <= 1.1),
    "scale_merge_growth_vs_tenth": ("<= 1.1", lambda v: v <= 1.1),
    "dag_parse_ms": ("", None),
}


def sizes_for(smoke: bool, scale: float) -> dict[str, Any]:
    if smoke:
        base = {
            "prepare_bytes": 8 * MB,
            "merge_lines": 20_000,
            "triggers": 50,
            "triggers_many": 200,
            "trigger_many_poll_interval_s": 2.0,
            "trigger_many_warmup_s": 1.5,
            "trigger_many_window_s": 2.0,
            "webhook_batch_s": 12.0,  # a 2 s net: deliveries wake most waits before one of its rounds
            "webhook_waits": 10,
            "trigger_window_s": 2.0,
            "trigger_warmup_s": 2.0,
            "trigger_poll_interval_s": 1.0,
            "e2e_requests": 1_000,
            "e2e_repeats": 1,
            "scale_requests": 50_000,
            "repeats": 3,
            "parse_runs": 1,
        }
    else:
        base = {
            "prepare_bytes": 1024 * MB,
            "merge_lines": 1_000_000,
            "triggers": 1_000,
            "triggers_many": 10_000,
            # 10,000 waits at the DAG's default poll interval: the first shared round comes 30-60 s
            # after the waits start, and starting 10,000 takes the loop 10-20 s more; the window
            # holds the round (100 listing pages at 200 ms each, and the answers). Measured on a slow
            # day: the round's first listing page 61 s after the waits were created, its answers
            # 86-92 s after, so a 40 s window (50-90 s) missed them.
            "trigger_many_poll_interval_s": 60.0,
            "trigger_many_warmup_s": 50.0,
            "trigger_many_window_s": 70.0,
            # A "1-hour batch" at 1:100 (bench/webhooks.py), 100 waits at once.
            "webhook_batch_s": 36.0,
            "webhook_waits": 100,
            "trigger_window_s": 15.0,
            # The window starts once all 1,000 triggers have started polling (first polls come
            # 0.5-1.5 intervals after the start).
            "trigger_warmup_s": 10.0,
            # 1,000 waits polling every 5 s: 200 status calls per second against a 200 ms server.
            "trigger_poll_interval_s": 5.0,
            "e2e_requests": 100_000,
            "e2e_repeats": 3,
            "scale_requests": 10_000_000,
            "repeats": 3,
            "parse_runs": 5,
        }
    for key in ("prepare_bytes", "merge_lines", "triggers", "e2e_requests", "scale_requests"):
        base[key] = max(1, int(base[key] * scale))
    return base


def interleaved(runs: dict[str, tuple[str, dict[str, Any]]], repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Run each worker ``repeats`` times, alternating the order every round; return every result.

    With three workers, put ours in the middle: it then runs next to each baseline in every round.
    """
    names = list(runs)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            worker, args = runs[name]
            out[name].append(run_worker(worker, args))
    return out


def best(results: list[dict[str, Any]], key: str = "cpu_seconds") -> dict[str, Any]:
    return min(results, key=lambda r: r[key])


def bench_prepare(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    path = WORK / f"requests-{sizes['prepare_bytes'] // MB}mb.jsonl"
    t0 = time.perf_counter()
    info = ensure_requests(path, sizes["prepare_bytes"])
    gen_s = time.perf_counter() - t0
    with path.open("rb") as fh:  # warm the page cache so every loop reads from memory
        while fh.read(16 * MB):
            pass
    floor_args = {"input": str(path), "work_dir": str(WORK / "floor-out"), "expected_errors": info["invalid"]}
    runs = interleaved(
        {
            "stdlib": ("baseline", {"input": str(path)}),
            "prepare": ("prepare", {"input": str(path), "work_dir": str(WORK / "prepare-out")}),
            "floor": ("floor", floor_args),
        },
        sizes["repeats"],
    )
    for base in runs["stdlib"]:
        if base["lines"] != info["lines"]:
            raise RuntimeError(f"stdlib loop read {base['lines']} lines of {info['lines']}")
    for low in runs["floor"]:
        if low["decoded"] + low["errors"] != info["lines"] or low["written_bytes"] != info["bytes"]:
            raise RuntimeError(
                f"floor loop decoded {low['decoded']} of {info['lines']} lines, "
                f"wrote {low['written_bytes']} of {info['bytes']} bytes"
            )
    for prep in runs["prepare"]:
        if prep["valid"] + prep["rejected"] != info["lines"] or prep["valid"] == 0:
            raise RuntimeError(
                f"prepare accounted for {prep['valid']}+{prep['rejected']} of {info['lines']} lines"
            )
    prep = best(runs["prepare"])
    results["prepare_mb_per_s"] = round(info["bytes"] / MB / best(runs["prepare"], "seconds")["seconds"], 2)
    vs_stdlib = round_ratios(runs["stdlib"], runs["prepare"])
    vs_floor = round_ratios(runs["prepare"], runs["floor"])
    put_ratio(results, "prepare_ratio_vs_stdlib", vs_stdlib)
    put_ratio(results, "prepare_ratio_vs_floor", vs_floor)
    results["prepare_peak_rss_mb_1gb"] = round(max(p["peak_rss_mb"] for p in runs["prepare"]), 1)
    results["prepare_context"] = {
        "input_bytes": info["bytes"],
        "input_lines": info["lines"],
        "generate_seconds": round(gen_s, 2),
        "ratio": "median over interleaved rounds of (CPU seconds of the stdlib loop / CPU seconds of "
        "prepare) and of (CPU seconds of prepare / CPU seconds of the floor loop), each round's runs "
        "side by side; _min and _max are the spread over the rounds",
        "rounds": len(vs_stdlib),
        "ratio_vs_stdlib_per_round": [round(r, 3) for r in vs_stdlib],
        "ratio_vs_floor_per_round": [round(r, 3) for r in vs_floor],
        "prepare_cpu_seconds": [round(p["cpu_seconds"], 3) for p in runs["prepare"]],
        "prepare_seconds": [round(p["seconds"], 3) for p in runs["prepare"]],
        "stdlib_cpu_seconds": [round(b["cpu_seconds"], 3) for b in runs["stdlib"]],
        "stdlib_seconds": [round(b["seconds"], 3) for b in runs["stdlib"]],
        "floor_cpu_seconds": [round(f["cpu_seconds"], 3) for f in runs["floor"]],
        "floor_seconds": [round(f["seconds"], 3) for f in runs["floor"]],
        "floor_shards": runs["floor"][0]["shards"],
        "wall_ratio": round(
            best(runs["stdlib"], "seconds")["seconds"] / best(runs["prepare"], "seconds")["seconds"], 3
        ),
        "valid": prep["valid"],
        "rejected": prep["rejected"],
        "shards": prep["shards"],
    }


def _merge_runs(
    directory: Path, info: dict[str, Any], name: str, repeats: int
) -> dict[str, list[dict[str, Any]]]:
    runs = interleaved(
        {
            "stdlib": ("merge_baseline", {"files": info["files"]}),
            "merge": (
                "merge",
                {
                    "directory": str(directory),
                    "files": info["files"],
                    "db": str(WORK / name / "store.sqlite"),
                },
            ),
            "floor": ("merge_floor", {"files": info["files"], "work_dir": str(WORK / f"{name}-floor")}),
        },
        repeats,
    )
    for res in runs["merge"]:
        if res["lines"] != info["lines"] or res["counts"]["total"] != info["lines"]:
            raise RuntimeError(f"merge accounted for {res['counts']['total']} of {info['lines']} results")
    for res in runs["stdlib"]:
        if res["lines"] != info["lines"]:
            raise RuntimeError(f"stdlib merge loop read {res['lines']} of {info['lines']} lines")
    for res in runs["floor"]:
        if res["decoded"] != info["lines"] or res["written_bytes"] != res["bytes"]:
            raise RuntimeError(
                f"merge floor loop decoded {res['decoded']} of {info['lines']} lines, "
                f"wrote {res['written_bytes']} of {res['bytes']} bytes"
            )
    return runs


def bench_merge(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    directory = WORK / f"results-{sizes['merge_lines']}"
    t0 = time.perf_counter()
    info = ensure_results(directory, sizes["merge_lines"])
    gen_s = time.perf_counter() - t0
    runs = _merge_runs(directory, info, "merge-out", sizes["repeats"])
    res = best(runs["merge"])
    results["merge_mb_per_s"] = round(res["bytes"] / MB / best(runs["merge"], "seconds")["seconds"], 2)
    vs_stdlib = round_ratios(runs["stdlib"], runs["merge"])
    vs_floor = round_ratios(runs["merge"], runs["floor"])
    put_ratio(results, "merge_ratio_vs_stdlib", vs_stdlib)
    put_ratio(results, "merge_ratio_vs_floor", vs_floor)
    results["merge_peak_rss_mb_1m"] = round(max(r["peak_rss_mb"] for r in runs["merge"]), 1)
    results["merge_context"] = {
        "lines": res["lines"],
        "files": len(info["files"]),
        "input_bytes": res["bytes"],
        "generate_seconds": round(gen_s, 2),
        "ratio": "median over interleaved rounds of (CPU seconds of json.loads+json.dumps over the same "
        "result lines / CPU seconds of the merge, ResultStore.add_lines + write_results) and of (CPU "
        "seconds of the merge / CPU seconds of the floor loop), each round's runs side by side; _min and "
        "_max are the spread over the rounds",
        "rounds": len(vs_stdlib),
        "ratio_vs_stdlib_per_round": [round(r, 3) for r in vs_stdlib],
        "ratio_vs_floor_per_round": [round(r, 3) for r in vs_floor],
        "merge_cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs["merge"]],
        "merge_seconds": [round(r["seconds"], 3) for r in runs["merge"]],
        "stdlib_cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs["stdlib"]],
        "floor_cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs["floor"]],
        "add_lines_seconds": round(res["add_seconds"], 3),
        "write_results_seconds": round(res["write_seconds"], 3),
        "counts": res["counts"],
    }


def bench_scale(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    """Prepare and merge N requests (10M at --scale 1) and a tenth of that: time, peak RSS, growth.

    Both sizes are generated first and written to disk (``os.sync``), so no run pays for the
    generator's writeback. Each of ``repeats`` rounds runs the four workers (prepare and merge at
    each size), the sizes in alternating order; a round's growth compares its own two runs, and the
    growth reported is the median over the rounds with its spread.
    """
    n = sizes["scale_requests"]
    counts = {"tenth": max(1, n // 10), "full": n}
    data: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    generate: dict[str, float] = {}
    for label, count in counts.items():
        t0 = time.perf_counter()
        req = ensure_small_requests(WORK / f"scale-requests-{count}.jsonl", count)
        res_dir = WORK / f"scale-results-{count}"
        data[label] = (req, {**ensure_results(res_dir, count, small=True), "directory": str(res_dir)})
        generate[label] = round(time.perf_counter() - t0, 2)
    os.sync()

    def run(label: str) -> dict[str, Any]:
        count = counts[label]
        req, res = data[label]
        prep = run_worker(
            "prepare", {"input": req["path"], "work_dir": str(WORK / "scale-prepare-out")}, timeout=3600
        )
        if prep["valid"] != count:
            raise RuntimeError(f"scale: prepare accepted {prep['valid']} of {count} requests")
        merge = run_worker(
            "merge",
            {
                "directory": res["directory"],
                "files": res["files"],
                "db": str(WORK / "scale-merge" / "store.sqlite"),
            },
            timeout=3600,
        )
        if merge["counts"]["total"] != count:
            raise RuntimeError(f"scale: merge wrote {merge['counts']['total']} of {count} results")
        return {
            "requests": count,
            "request_bytes": req["bytes"],
            "result_bytes": merge["bytes"],
            "prepare_seconds": round(prep["seconds"], 2),
            "prepare_cpu_seconds": round(prep["cpu_seconds"], 2),
            "prepare_peak_rss_mb": round(prep["peak_rss_mb"], 1),
            "merge_seconds": round(merge["seconds"], 2),
            "merge_cpu_seconds": round(merge["cpu_seconds"], 2),
            "merge_peak_rss_mb": round(merge["peak_rss_mb"], 1),
            "shards": prep["shards"],
        }

    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(sizes["repeats"]):
        order = ("tenth", "full") if r % 2 == 0 else ("full", "tenth")
        rounds.append({label: run(label) for label in order})
    per = counts["full"] / counts["tenth"]
    for step in ("prepare", "merge"):
        key = f"{step}_cpu_seconds"
        put_ratio(
            results,
            f"scale_{step}_growth_vs_tenth",
            [rnd["full"][key] / rnd["tenth"][key] / per for rnd in rounds],
        )
        full_runs = [rnd["full"] for rnd in rounds]
        results[f"scale_{step}_seconds"] = round(
            statistics.median(r[f"{step}_seconds"] for r in full_runs), 2
        )
        results[f"scale_{step}_peak_rss_mb"] = max(r[f"{step}_peak_rss_mb"] for r in full_runs)
    results["scale_requests"] = n
    results["scale_context"] = {
        "rounds": rounds,
        "generate_seconds": generate,
        "note": "growth_vs_tenth = CPU seconds per request at N / CPU seconds per request at N/10 in the "
        "same round: 1.0 is linear, above 1 grows faster than the input; median over the rounds, _min "
        "and _max their spread; seconds: median of the full-size runs; peak RSS: the largest",
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


def bench_webhooks(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    from bench import webhooks

    webhooks.run_webhook_bench(sizes, results)


def bench_e2e(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    from bench import live

    live.run_e2e_bench(sizes, results)


RUNNERS = {
    "prepare": bench_prepare,
    "merge": bench_merge,
    "parse": bench_parse,
    "trigger": bench_trigger,
    "webhooks": bench_webhooks,
    "e2e": bench_e2e,
    "scale": bench_scale,
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def verdict(name: str, check: Any, results: dict[str, Any]) -> str:
    """``yes`` or ``NO`` for a metric's target; ``unclear (spread a-b)`` when the median meets it but not
    the whole spread (``<name>_min`` to ``<name>_max``, when the results have them)."""
    if check is None:
        return ""
    value = results[name]
    low, high = results.get(f"{name}_min"), results.get(f"{name}_max")
    if low is None or high is None:
        return "yes" if check(value) else "NO"
    if check(low) and check(high):
        return "yes"
    return f"unclear (spread {_fmt(low)}-{_fmt(high)})" if check(value) else "NO"


def _load_line(results: dict[str, Any]) -> str:
    loads = results.get("context", {}).get("loadavg_1m_before_after", {})
    per = ", ".join(f"{name} {before}-{after}" for name, (before, after) in loads.items())
    return f"1-minute load average: {os.getloadavg()[0]:.2f} now" + (
        f"; before-after each benchmark: {per}" if per else ""
    )


def table(results: dict[str, Any]) -> str:
    rows = [_load_line(results), "| metric | value | target | ok? |", "|---|---:|---|---|"]
    for name, (target, check) in TARGETS.items():
        if name not in results:
            continue
        rows.append(f"| {name} | {_fmt(results[name])} | {target} | {verdict(name, check, results)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the data sizes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--output", default=str(BENCH_DIR / "results.json"), help="results file")
    opts = parser.parse_args(argv)
    # Smoke mode leaves the DAG run out (Airflow's start-up alone takes ~10 s); a full run leaves the
    # 10M-request scale row out (about 16 minutes on 2 cores): `--only scale` runs it.
    default = [n for n in NAMES if n != ("e2e" if opts.smoke else "scale")]
    only = [n.strip() for n in opts.only.split(",") if n.strip()] or default
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    WORK.mkdir(parents=True, exist_ok=True)
    sizes = sizes_for(opts.smoke, opts.scale)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    loads: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    for name in NAMES:
        if name not in only:
            continue
        started = time.perf_counter()
        load_before = round(os.getloadavg()[0], 2)
        print(f"# {name} ... (load average {load_before})", file=sys.stderr, flush=True)
        try:
            RUNNERS[name](sizes, results)
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other benchmarks
            failures[name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"# {name} FAILED: {failures[name]}", file=sys.stderr, flush=True)
        timings[name] = round(time.perf_counter() - started, 2)
        loads[name] = [load_before, round(os.getloadavg()[0], 2)]
        print(
            f"# {name} done in {timings[name]} s (load average {loads[name][1]})", file=sys.stderr, flush=True
        )
    results["context"] = {
        "mode": "smoke" if opts.smoke else "full",
        "scale": opts.scale,
        "sizes": sizes,
        "bench_seconds": timings,
        "loadavg_1m_before_after": loads,
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
