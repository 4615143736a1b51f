"""Benchmarks against a running emulator process: trigger event-loop lag and the DAG end to end."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    WORK,
    airflow_env,
    openai_conn,
    profiled,
    put_ratio,
    round_ratios,
    run_worker,
    setup_paths,
)
from bench.gen import write_requests

MAX_REQUESTS_PER_BATCH = 50_000


def _emulator(name: str, extra: list[str]) -> Any:
    setup_paths()
    from openai_emulator.testing import EmulatorProcess

    data_dir = WORK / name
    shutil.rmtree(data_dir, ignore_errors=True)
    return EmulatorProcess(data_dir, extra_args=["--log-level", "warning", *extra]).start()


def _route_count(stats: dict[str, Any], needle: str) -> int:
    total = 0
    for key, value in stats.items():
        if isinstance(value, dict):
            total += _route_count(value, needle)
        elif needle in key and isinstance(value, int):
            total += value
    return total


# -- trigger lag -------------------------------------------------------------------------------

TRIGGER_KINDS = tuple(
    os.environ.get("BENCH_TRIGGER_KINDS", "ours,ours_gc_freeze,provider,ours_many").split(",")
)

#: A 10 ms ticker alone on an event loop in its own process, for ``window`` seconds after ``delay``:
#: the lag a loaded machine gives any loop, measured at the same moment as the triggers' loop.
IDLE_PROBE = """
import asyncio, json, sys, time
delay, window, tick, lags = float(sys.argv[1]), float(sys.argv[2]), 0.010, []
async def main():
    await asyncio.sleep(delay)
    end = time.monotonic() + window
    while time.monotonic() < end:
        expected = time.monotonic() + tick
        await asyncio.sleep(tick)
        lag = time.monotonic() - expected
        lags.extend(lag - k * tick for k in range(int(lag / tick) + 1))
asyncio.run(main())
lags.sort()
print(json.dumps({"p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000 if lags else 0.0}))
"""


def run_trigger_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    """
    1,000 waits on 1,000 distinct batches against a 200 ms server (and ``ours_many``: 10,000 waits);
    ticker lag minus an idle loop's at the same moment, CPU per waiting batch-hour, load.
    """
    import openai

    # Batches stay `validating` for an hour: every poll answers "not done", and the emulator spends
    # no CPU on processing them, so it takes as little as possible from the triggerer's cores.
    emu = _emulator("emu-trigger", ["--validating-seconds", "3600"])
    try:
        client = openai.OpenAI(base_url=emu.base_url, api_key="k", max_retries=2)
        line = {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        data = "".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in range(20)).encode()
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        started = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        def create(_: int) -> str:
            return client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id

        most = max(sizes["triggers"], sizes["triggers_many"] if "ours_many" in TRIGGER_KINDS else 0)
        with ThreadPoolExecutor(8) as pool:
            all_ids = list(pool.map(create, range(most)))
        create_s = time.perf_counter() - started
        if len(set(all_ids)) != most:
            raise RuntimeError(f"expected {most} distinct batches, got {len(set(all_ids))}")
        # The 1,000 newest: a triggerer's waits are on recent batches (older ones are read one by one
        # after the listing pages a round reads, see tests/unit/test_poller.py).
        batch_ids = all_ids[-sizes["triggers"] :]
        # Every status read is slow: a GET of one batch and a page of the listing alike.
        emu.set_faults(latency_ms=200, latency_routes=["GET /v1/batches*"])
        home = WORK / "airflow-trigger"
        home.mkdir(parents=True, exist_ok=True)
        env = airflow_env(home, {"AIRFLOW_CONN_OPENAI_DEFAULT": openai_conn(emu.base_url)})
        args = {
            "batch_ids": batch_ids,
            "window_s": sizes["trigger_window_s"],
            "warmup_s": sizes["trigger_warmup_s"],
            "poll_interval": sizes["trigger_poll_interval_s"],
            "stats_url": f"{emu.url}/_emulator/stats",
        }
        out: dict[str, Any] = {}
        for kind in TRIGGER_KINDS:
            ids, kind_args = batch_ids, dict(args)
            if kind == "ours_many":
                # 10,000 waits at the DAG's default interval (60 s); the window holds a whole round.
                ids = all_ids[-sizes["triggers_many"] :]
                kind_args.update(
                    window_s=sizes["trigger_many_window_s"],
                    warmup_s=sizes["trigger_many_warmup_s"],
                    poll_interval=sizes["trigger_many_poll_interval_s"],
                )
            ids_file = WORK / f"trigger-{kind}-batch-ids.json"  # 10,000 ids are too long for argv
            ids_file.write_text(json.dumps(ids))
            kind_args.pop("batch_ids", None)
            res = run_worker(
                "trigger",
                {**kind_args, "batch_ids_file": str(ids_file), "kind": kind},
                env=env,
                log=WORK / "logs" / f"trigger-{kind}.log",
            )
            # A lag figure means something only if the triggers really polled, each its own batch.
            if kind != "provider" and res["distinct_batches_polled"] < 0.9 * len(ids):
                raise RuntimeError(
                    f"trigger bench ({kind}): only {res['distinct_batches_polled']} of {len(ids)} "
                    "batches were polled in the window"
                )
            out[kind] = res
            results[f"trigger_lag_p99_ms_{kind}"] = round(res["p99_ms"], 1)
            results[f"trigger_lag_p99_ms_{kind}_net"] = round(res["p99_ms"] - res["idle_loop_p99_ms"], 1)
            results[f"trigger_idle_loop_p99_ms_{kind}"] = round(res["idle_loop_p99_ms"], 1)
            results[f"trigger_loadavg_{kind}"] = res["loadavg_1m"]
            results[f"trigger_cpu_ms_per_batch_hour_{kind}"] = round(res["cpu_ms_per_batch_hour"], 1)
            intervals = float(kind_args["window_s"]) / float(kind_args["poll_interval"])
            calls = res["emulator_batch_gets_in_window"] / len(ids) / intervals
            results[f"trigger_status_calls_per_batch_per_interval_{kind}"] = round(calls, 3)
        statuses = {client.batches.retrieve(b).status for b in batch_ids[:20]}
        results["trigger_context"] = {
            **{k: v for k, v in args.items() if k not in ("batch_ids", "stats_url")},
            "waits_on": "the newest batches of the emulator",
            "emulator_latency_ms": 200,
            "batches": len(batch_ids),
            "create_batches_seconds": round(create_s, 2),
            "batch_statuses_after (first 20)": sorted(statuses),
            **out,
            "note": "lag of a 10 ms ticker on the triggers' loop; a late tick also counts every tick it "
            "swallowed (lag, lag-10ms, ...), so a stall weighs what it blocked; _net subtracts the p99 "
            "of the same ticker alone in another process over the same window (the machine's load); "
            "cpu_ms_per_batch_hour is the worker's CPU time in the window per waiting batch, scaled to "
            "an hour, at the bench's poll interval; status calls count the emulator's GET /v1/batches "
            "(one batch or a page of the listing) in the window; loadavg_1m is the machine's 1-minute "
            "load average at the end of the window (2 cores)",
        }
    finally:
        emu.stop()


def _emulator_gets(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback URL
        stats = json.loads(response.read())
    return {"gets": _route_count(stats, "GET /v1/batches")}


def trigger(args: dict[str, Any]) -> dict[str, Any]:  # noqa: C901 - one closure-heavy worker
    """Worker: run one trigger per batch plus a 10 ms ticker on one loop; report the ticker's lag."""
    setup_paths()
    import gc
    import logging

    kind = args["kind"]
    if kind.startswith("ours"):
        from openai_batch.triggers import OpenAIBatchTrigger as Ours

        def make(batch_id: str) -> Any:
            return Ours(conn_id="openai_default", batch_id=batch_id, poll_interval=args["poll_interval"])
    else:
        from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger as Provider

        def make(batch_id: str) -> Any:
            return Provider(
                conn_id="openai_default", batch_id=batch_id, poll_interval=args["poll_interval"], timeout=3600
            )

    logging.getLogger().setLevel(logging.WARNING)
    batch_ids = json.loads(Path(args["batch_ids_file"]).read_text())
    triggers = [make(b) for b in batch_ids]
    polled: set[str] = set()
    if kind.startswith("ours"):
        from openai_batch import poller as poller_module

        original = poller_module.BatchStatusPoller.status_after

        async def counting(self: Any, batch_id: str, delay: float) -> Any:
            answer = await original(self, batch_id, delay)
            if answer.get("id") == batch_id:  # answered with its own batch (a shared round or a GET)
                polled.add(batch_id)
            return answer

        poller_module.BatchStatusPoller.status_after = counting  # type: ignore[method-assign]
    # ours_gc_freeze, ours_many: the triggerer setting OPENAI_BATCH_GC_FREEZE=1 (the first poller freezes).
    os.environ["OPENAI_BATCH_GC_FREEZE"] = "1" if kind in ("ours_gc_freeze", "ours_many") else "0"
    tick = 0.010
    warmup, window = float(args["warmup_s"]), float(args["window_s"])
    samples: list[float] = []
    gc_pauses: list[tuple[int, float]] = []
    gc_started: list[float] = [0.0]
    events: list[Any] = []
    state: dict[str, Any] = {"expected": 0.0, "done": False, "in_window": False}
    lock = threading.Lock()
    marks: dict[str, Any] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif state["in_window"]:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)

    def pct(values: list[float], q: float) -> float:
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    def report(blocked: bool) -> None:
        with lock:
            if state["done"]:
                return
            state["done"] = True
        lags = list(samples)
        if blocked:  # the loop is stuck: count the ticks it has swallowed so far
            pending = time.monotonic() - state["expected"]
            lags.extend(pending - k * tick for k in range(int(pending / tick) + 1))
        lags.sort()
        cpu = marks.get("cpu_end", time.process_time()) - marks.get("cpu_start", 0.0)
        gets = marks["gets_end"] - marks["gets_start"] if "gets_end" in marks else 0
        gen2 = [p for g, p in gc_pauses if g == 2]
        result = {
            "kind": kind,
            "triggers": len(triggers),
            "distinct_batches_polled": len(polled) if kind.startswith("ours") else None,
            "p99_ms": pct(lags, 0.99),
            "p50_ms": pct(lags, 0.50),
            "max_ms": (lags[-1] * 1000) if lags else 0.0,
            "ticks_counted": len(lags),
            "ticks_nominal": int(window / tick),
            "emulator_batch_gets_in_window": gets,
            "polls_per_s": round(gets / window, 1),
            "cpu_seconds_in_window": round(cpu, 3),
            "cpu_ms_per_poll": (cpu / gets * 1000) if gets else None,
            "cpu_ms_per_batch_hour": cpu / len(triggers) / window * 3600 * 1000,
            "idle_loop_p99_ms": marks.get("idle_p99_ms", 0.0),
            "gc_collections_in_window": len(gc_pauses),
            "gc_full_collections_in_window": len(gen2),
            "gc_full_max_ms": round(max(gen2) * 1000, 1) if gen2 else 0.0,
            "gc_frozen_objects": gc.get_freeze_count(),
            "gc_tracked_objects": len(gc.get_objects()),  # what a full collection walks
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "loadavg_at_start": marks.get("load_start"),
            "events": len(events),
            "loop_blocked_at_end": blocked,
        }
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)

    async def ticker() -> None:
        clock = time.monotonic
        while True:
            state["expected"] = clock() + tick
            await asyncio.sleep(tick)
            lag = clock() - state["expected"]
            if state["in_window"]:
                # A tick that comes late by N intervals stands for the N ticks that could not run.
                samples.extend(lag - k * tick for k in range(int(lag / tick) + 1))

    async def drive(t: Any) -> None:
        async for event in t.run():
            events.append(event)
            return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.create_task(ticker())
        for t in triggers:
            loop.create_task(drive(t))
        await asyncio.sleep(warmup)
        marks["load_start"] = round(os.getloadavg()[0], 2)
        # Started before the window (a fork is not free), measuring over the window only.
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-c", IDLE_PROBE, "0.5", str(window), stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(0.5)
        marks["gets_start"] = (await asyncio.to_thread(_emulator_gets, args["stats_url"]))["gets"]
        polled.clear()
        with profiled(f"trigger-{kind}"):  # BENCH_PROFILE_DIR=dir: a cProfile of the window
            marks["cpu_start"] = time.process_time()
            state["in_window"] = True
            await asyncio.sleep(window)
            state["in_window"] = False
        marks["cpu_end"] = time.process_time()
        marks["gets_end"] = (await asyncio.to_thread(_emulator_gets, args["stats_url"]))["gets"]
        probed, _ = await probe.communicate()
        marks["idle_p99_ms"] = float(json.loads(probed.decode().strip().splitlines()[-1])["p99_ms"])
        report(blocked=False)

    def watchdog() -> None:
        time.sleep(warmup + window + 10.0)
        report(blocked=True)  # the loop is stuck in a blocking call

    threading.Thread(target=watchdog, daemon=True).start()
    asyncio.run(main())
    return {}


# -- end to end --------------------------------------------------------------------------------

E2E_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
RESULT_MARK = "BENCH-RESULT "


def _airflow_home() -> Path:
    home = WORK / "airflow-e2e"
    if not (home / "airflow.db").exists():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=airflow_env(home),
            check=True,
            capture_output=True,
            timeout=600,
        )
    return home


def _input_ids(path: Path) -> list[str]:
    with path.open("rb") as fh:
        return [json.loads(line)["custom_id"] for line in fh if line.strip()]


def _check_results(path: Path, ids: list[str], who: str) -> dict[str, int]:
    """Fail loudly unless ``path`` has one line per input request, in input order, all succeeded."""
    if not path.exists():
        raise RuntimeError(f"{who}: no results file at {path}")
    got: list[str] = []
    statuses: dict[str, int] = {}
    with path.open("rb") as fh:
        for line in fh:
            row = json.loads(line)
            got.append(row["custom_id"])
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            if row["status"] == "succeeded" and not row.get("response"):
                raise RuntimeError(f"{who}: {row['custom_id']} succeeded without a response body")
    if got != ids:
        raise RuntimeError(
            f"{who}: results are not the {len(ids)} requests in input order ({len(got)} lines)"
        )
    if statuses.get("succeeded") != len(ids):
        raise RuntimeError(f"{who}: not every request succeeded: {statuses}")
    return statuses


class _DagWorker:
    """A long-lived ``e2e_dag`` worker: Airflow starts once, then runs the DAG on command."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", "e2e_dag", "{}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            if line.startswith(RESULT_MARK):
                result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
                if "error" in result:
                    raise RuntimeError(f"DAG worker failed: {result['error']}")
                return result
            self._log.write(raw)
        raise RuntimeError(f"DAG worker exited ({self.proc.wait()}); see {self._log.name}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def run_e2e_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: C901 - one sequence
    """The DAG vs a script doing the same work in N interleaved rounds, after a warm-up DAG run.

    Each round's ratio compares the two runs of that round (they ran side by side, on the same
    load); the ratio reported is the median of the rounds, with its spread.
    """
    count, repeats = sizes["e2e_requests"], sizes["e2e_repeats"]
    t0 = time.perf_counter()
    home = _airflow_home()
    migrate_s = time.perf_counter() - t0
    run_dir = WORK / "e2e"
    shutil.rmtree(run_dir, ignore_errors=True)
    inputs = []
    for r in range(repeats):  # new content each round: the DAG never reuses earlier results
        path = run_dir / f"round{r}" / "inbox" / f"e2e-{count}-r{r}.jsonl"
        write_requests(path, count=count, short_fraction=0, invalid_every=0, seed=3 + r, models=E2E_MODELS)
        inputs.append(path)
    warm = run_dir / "warmup" / "inbox" / "warmup.jsonl"
    write_requests(warm, count=30, short_fraction=0, invalid_every=0, seed=99, models=E2E_MODELS)
    # The emulator as `make run` starts it (2,000 requests/s per batch): the batches take time, as
    # real ones do, so the ratio shows the pipeline's overhead over a script doing the same work.
    emu = _emulator("emu-e2e", ["--validating-seconds", "0.1", "--finalizing-seconds", "0.1"])
    env = airflow_env(home, {"AIRFLOW_CONN_OPENAI_DEFAULT": openai_conn(emu.base_url)})
    dag_worker = _DagWorker(env, WORK / "logs" / "e2e-dag.log")
    scripts: list[dict[str, Any]] = []
    dags: list[dict[str, Any]] = []
    try:
        started = time.perf_counter()
        warmup = dag_worker.run(
            {"inbox": str(warm.parent), "results": str(run_dir / "warmup" / "results"), "input": warm.name}
        )
        warmup["worker_start_to_end_seconds"] = round(time.perf_counter() - started, 2)
        if warmup["state"] != "success":
            raise RuntimeError(f"warm-up DAG run ended {warmup['state']}: {warmup['task_states']}")
        for r, path in enumerate(inputs):
            ids = _input_ids(path)

            def script_run(path: Path = path, r: int = r, ids: list[str] = ids) -> None:
                out = run_dir / f"round{r}" / "script-out"
                res = run_worker(
                    "e2e_script",
                    {"input": str(path), "base_url": emu.base_url, "out_dir": str(out)},
                    log=WORK / "logs" / "e2e-script.log",
                )
                res["statuses"] = _check_results(out / "results.jsonl", ids, "script")
                scripts.append(res)

            def dag_run(path: Path = path, r: int = r, ids: list[str] = ids) -> None:
                results_root = run_dir / f"round{r}" / "results"
                res = dag_worker.run(
                    {"inbox": str(path.parent), "results": str(results_root), "input": path.name}
                )
                if res["state"] != "success":
                    raise RuntimeError(f"DAG run ended {res['state']}: {res['task_states']}")
                found = list(results_root.glob("**/results.jsonl"))
                if len(found) != 1:
                    raise RuntimeError(f"DAG: expected one results.jsonl under {results_root}, found {found}")
                res["statuses"] = _check_results(found[0], ids, "DAG")
                manifest = json.loads(found[0].with_name("manifest.json").read_text())
                res["manifest_counts"] = manifest["counts"]
                res["manifest_batches"] = [
                    (b.get("batch_id"), b.get("status")) for b in manifest.get("batches", [])
                ]
                dags.append(res)

            for step in (script_run, dag_run) if r % 2 == 0 else (dag_run, script_run):
                step()
    finally:
        dag_worker.close()
        emu.stop()
    wall_ratios, cpu_ratios = round_ratios(dags, scripts, key="seconds"), round_ratios(dags, scripts)
    results["e2e_seconds"] = round(statistics.median(d["seconds"] for d in dags), 2)
    results["e2e_script_seconds"] = round(statistics.median(s["seconds"] for s in scripts), 2)
    put_ratio(results, "e2e_ratio_vs_script", wall_ratios)
    put_ratio(results, "e2e_cpu_ratio_vs_script", cpu_ratios)
    best_dag = min(dags, key=lambda x: x["seconds"])
    results["e2e_airflow_startup_seconds"] = round(warmup["seconds"], 2)
    results["e2e_context"] = {
        "requests": count,
        "models": list(E2E_MODELS),
        "repeats": repeats,
        "order": "round 0 script then DAG, round 1 DAG then script, ...",
        "ratio_per_round": [round(r, 3) for r in wall_ratios],
        "cpu_ratio_per_round": [round(r, 3) for r in cpu_ratios],
        "script_runs_seconds": [round(s["seconds"], 2) for s in scripts],
        "dag_runs_seconds": [round(d["seconds"], 2) for d in dags],
        "script_runs_cpu_seconds": [round(s["cpu_seconds"], 2) for s in scripts],
        "dag_runs_cpu_seconds": [round(d["cpu_seconds"], 2) for d in dags],
        "script_batches": [s["batches"] for s in scripts],
        "dag_task_seconds": best_dag["task_seconds"],
        "dag_manifest_counts": best_dag["manifest_counts"],
        "dag_batches": best_dag["manifest_batches"],
        "warmup": {k: warmup[k] for k in ("seconds", "cpu_seconds", "setup_seconds", "task_seconds")},
        "warmup_worker_seconds": warmup["worker_start_to_end_seconds"],
        "airflow_db_migrate_seconds": round(migrate_s, 2),
        "note": "Airflow's one-time start-up (imports, DagBag, the in-process Execution API that dag.test "
        "builds on its first task) is paid by a 30-request warm-up run in the same process before the clock "
        "(e2e_airflow_startup_seconds); then the DAG and the script alternate on new inputs of "
        f"{count} requests; each round's DAG run is compared with its script run, and the ratios are the "
        "median of the rounds (_min and _max their spread; seconds: medians; dag_task_seconds: the "
        "fastest DAG run's). Both poll every 1 s; both results are "
        "checked line by line (every request succeeded, input order). Emulator at its default 2,000 "
        "requests/s per batch.",
    }


def e2e_script(args: dict[str, Any]) -> dict[str, Any]:  # noqa: C901 - the whole script in one place
    """Worker: the script doing the DAG's work with the SDK and nothing else.

    Split by (url, model) into batches of at most 50,000, upload, create, poll every 1 s, check that
    every batch completed with all its requests, download the output and error files, join them to
    the requests by custom_id and write one result per request in input order.
    """
    import openai

    client = openai.OpenAI(base_url=args["base_url"], api_key="k")
    out_dir = Path(args["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    groups: dict[tuple[str, str], list[bytes]] = {}
    order: list[str] = []
    with open(args["input"], "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            request = json.loads(line)
            order.append(request["custom_id"])
            groups.setdefault((request["url"], request["body"]["model"]), []).append(line)
    expected: dict[str, int] = {}
    for n, ((url, _model), lines) in enumerate(sorted(groups.items())):
        for start in range(0, len(lines), MAX_REQUESTS_PER_BATCH):
            part = lines[start : start + MAX_REQUESTS_PER_BATCH]
            uploaded = client.files.create(file=(f"part-{n}-{start}.jsonl", b"".join(part)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint=url,  # type: ignore[arg-type]
                completion_window="24h",
            )
            expected[batch.id] = len(part)
    pending = set(expected)
    finished: dict[str, Any] = {}
    while pending:
        time.sleep(1)
        for batch_id in sorted(pending):
            batch = client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                pending.discard(batch_id)
                finished[batch_id] = batch
    for batch_id, batch in finished.items():
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.total != expected[batch_id]:
            raise RuntimeError(
                f"script: batch {batch_id} ended {batch.status} with {counts} for "
                f"{expected[batch_id]} requests (errors: {batch.errors})"
            )
    joined: dict[str, tuple[bytes, str]] = {}
    for batch_id, batch in finished.items():
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id).content.splitlines():
                if line.strip():
                    joined[json.loads(line)["custom_id"]] = (line, batch_id)
    missing = [cid for cid in order if cid not in joined]
    if missing:
        raise RuntimeError(f"script: {len(missing)} requests have no result, e.g. {missing[:3]}")
    with (out_dir / "results.jsonl").open("w", encoding="utf-8") as out:
        for custom_id in order:
            raw, batch_id = joined[custom_id]
            result = json.loads(raw)
            response, error = result.get("response"), result.get("error")
            ok = error is None and response is not None and response.get("status_code") == 200
            if ok:
                row_error = None
            elif error:
                row_error = {"code": error.get("code"), "message": error.get("message")}
            else:
                body_error = ((response or {}).get("body") or {}).get("error") or {}
                row_error = {"code": body_error.get("code"), "message": body_error.get("message")}
            row = {
                "custom_id": custom_id,
                "status": "succeeded" if ok else "failed",
                "response": response.get("body") if ok and response else None,
                "error": row_error,
                "batch_id": batch_id,
            }
            out.write(json.dumps(row) + "\n")
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "batches": len(expected),
        "requests": len(order),
    }


def e2e_dag(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: start Airflow once, then ``dag.test()`` of ``openai_batch`` for each command on stdin."""
    started = time.perf_counter()
    setup_paths()
    from airflow.dag_processing.dagbag import DagBag

    from bench.common import ROOT as root

    bag = DagBag(dag_folder=str(root / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    dag = bag.get_dag("openai_batch")
    setup_s = time.perf_counter() - started
    runs = 0
    for raw in sys.stdin:
        command = json.loads(raw)
        try:
            os.environ["AIRFLOW_VAR_OPENAI_BATCH_INBOX"] = command["inbox"]
            os.environ["AIRFLOW_VAR_OPENAI_BATCH_RESULTS"] = command["results"]
            runs += 1
            # BENCH_PROFILE_DIR=dir: a cProfile of each run, e2e-<pid>-<n>.prof (not timed runs)
            with profiled(f"e2e-{os.getpid()}-{runs}"):
                t0, c0 = time.perf_counter(), time.process_time()
                dag_run = dag.test(run_conf={"input": command["input"], "poll_interval": 1})
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            tis = dag_run.get_task_instances()
            states = {
                ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state) for ti in tis
            }
            task_seconds: dict[str, float] = {}
            for ti in tis:
                if ti.start_date and ti.end_date:
                    task_seconds[ti.task_id] = round(
                        task_seconds.get(ti.task_id, 0.0) + (ti.end_date - ti.start_date).total_seconds(), 2
                    )
            result = {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "setup_seconds": setup_s,
                "state": str(dag_run.state),
                "task_states": states,
                "task_seconds": task_seconds,
            }
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails loudly
            result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        setup_s = 0.0
        sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
        sys.stdout.flush()
    return {}
