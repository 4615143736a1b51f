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

from bench.common import WORK, airflow_env, openai_conn, run_worker, setup_paths
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

TRIGGER_KINDS = tuple(os.environ.get("BENCH_TRIGGER_KINDS", "ours,ours_gc_freeze,provider").split(","))


def run_trigger_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    """1,000 waits on 1,000 distinct batches against a 200 ms server; ticker lag, CPU per poll, load."""
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

        with ThreadPoolExecutor(8) as pool:
            batch_ids = list(pool.map(create, range(sizes["triggers"])))
        create_s = time.perf_counter() - started
        if len(set(batch_ids)) != sizes["triggers"]:
            raise RuntimeError(f"expected {sizes['triggers']} distinct batches, got {len(set(batch_ids))}")
        emu.set_faults(latency_ms=200, latency_routes=["GET /v1/batches/*"])
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
            res = run_worker(
                "trigger", {**args, "kind": kind}, env=env, log=WORK / "logs" / f"trigger-{kind}.log"
            )
            # A lag figure means something only if the triggers really polled, each its own batch.
            if kind != "provider" and res["distinct_batches_polled"] < 0.9 * len(batch_ids):
                raise RuntimeError(
                    f"trigger bench ({kind}): only {res['distinct_batches_polled']} of {len(batch_ids)} "
                    "batches were polled in the window"
                )
            out[kind] = res
            results[f"trigger_lag_p99_ms_{kind}"] = round(res["p99_ms"], 1)
            results[f"trigger_loadavg_{kind}"] = res["loadavg_1m"]
            if res["cpu_ms_per_poll"] is not None:
                results[f"trigger_cpu_ms_per_poll_{kind}"] = round(res["cpu_ms_per_poll"], 3)
        statuses = {client.batches.retrieve(b).status for b in batch_ids[:20]}
        results["trigger_context"] = {
            **{k: v for k, v in args.items() if k not in ("batch_ids", "stats_url")},
            "emulator_latency_ms": 200,
            "batches": len(batch_ids),
            "create_batches_seconds": round(create_s, 2),
            "batch_statuses_after (first 20)": sorted(statuses),
            **out,
            "note": "lag of a 10 ms ticker on the triggers' loop; a late tick also counts every tick it "
            "swallowed (lag, lag-10ms, ...), so a stall weighs what it blocked; cpu_ms_per_poll is the "
            "worker's CPU time in the window over the emulator's batch GETs in the window; loadavg_1m is "
            "the machine's 1-minute load average at the end of the window (2 cores)",
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
    batch_ids = args["batch_ids"]
    triggers = [make(b) for b in batch_ids]
    polled: set[str] = set()
    if kind.startswith("ours"):
        from openai_batch import poller as poller_module

        original = poller_module.BatchStatusPoller.get_batch

        async def counting(self: Any, batch_id: str) -> Any:
            polled.add(batch_id)
            return await original(self, batch_id)

        poller_module.BatchStatusPoller.get_batch = counting  # type: ignore[method-assign]
    # ours_gc_freeze: the triggerer setting OPENAI_BATCH_GC_FREEZE=1 (the first poller freezes).
    os.environ["OPENAI_BATCH_GC_FREEZE"] = "1" if kind == "ours_gc_freeze" else "0"
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
            "gc_collections_in_window": len(gc_pauses),
            "gc_full_collections_in_window": len(gen2),
            "gc_full_max_ms": round(max(gen2) * 1000, 1) if gen2 else 0.0,
            "gc_frozen_objects": gc.get_freeze_count(),
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
        marks["gets_start"] = (await asyncio.to_thread(_emulator_gets, args["stats_url"]))["gets"]
        polled.clear()
        profile_to = os.environ.get("BENCH_PROFILE_DIR")
        profiler = None
        if profile_to:  # BENCH_PROFILE_DIR=dir: a cProfile of the window, one file per kind
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        marks["cpu_start"] = time.process_time()
        state["in_window"] = True
        await asyncio.sleep(window)
        state["in_window"] = False
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_to, f"trigger-{kind}.prof"))
        marks["cpu_end"] = time.process_time()
        marks["gets_end"] = (await asyncio.to_thread(_emulator_gets, args["stats_url"]))["gets"]
        report(blocked=False)

    def watchdog() -> None:
        time.sleep(warmup + window + 10.0)
        report(blocked=True)  # the loop is stuck in a blocking call

    threading.Thread(target=watchdog, daemon=True).start()
    asyncio.run(main())
    return {}


# -- end to end --------------------------------------------------------------------------------


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


def run_e2e_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    count = sizes["e2e_requests"]
    t0 = time.perf_counter()
    home = _airflow_home()
    migrate_s = time.perf_counter() - t0
    run_dir = WORK / "e2e"
    shutil.rmtree(run_dir, ignore_errors=True)
    inbox, results_dir = run_dir / "inbox", run_dir / "results"
    inbox.mkdir(parents=True)
    results_dir.mkdir()
    name = f"e2e-{count}.jsonl"
    info = write_requests(inbox / name, count=count, short_fraction=0, invalid_every=0, seed=3)
    emu = _emulator(
        "emu-e2e",
        # The emulator as `make run` starts it (2,000 requests/s): the batch itself takes time, as
        # a real one does, so the ratio shows the pipeline's overhead over a plain SDK script.
        ["--validating-seconds", "0.1", "--finalizing-seconds", "0.1"],
    )
    try:
        script = run_worker(
            "e2e_script",
            {"input": str(inbox / name), "base_url": emu.base_url, "out_dir": str(run_dir / "script-out")},
            log=WORK / "logs" / "e2e-script.log",
        )
        env = airflow_env(
            home,
            {
                "AIRFLOW_CONN_OPENAI_DEFAULT": openai_conn(emu.base_url),
                "AIRFLOW_VAR_OPENAI_BATCH_INBOX": str(inbox),
                "AIRFLOW_VAR_OPENAI_BATCH_RESULTS": str(results_dir),
            },
        )
        dag = run_worker("e2e_dag", {"input": name}, env=env, log=WORK / "logs" / "e2e-dag.log")
    finally:
        emu.stop()
    if dag["state"] != "success":
        raise RuntimeError(f"dag run ended {dag['state']}: {dag.get('task_states')}")
    manifests = list(results_dir.glob("*/*/manifest.json"))
    counts = json.loads(manifests[0].read_text())["counts"] if manifests else None
    results["e2e_seconds"] = round(dag["seconds"], 2)
    results["e2e_ratio_vs_script"] = round(dag["seconds"] / script["seconds"], 3)
    results["e2e_context"] = {
        "requests": info["lines"],
        "input_bytes": info["bytes"],
        "script_seconds": round(script["seconds"], 2),
        "script_batches": script["batches"],
        "dag_seconds": round(dag["seconds"], 2),
        "dag_process_seconds": dag.get("process_seconds"),
        "dag_import_and_parse_seconds": round(dag["setup_seconds"], 2),
        "dag_task_seconds": dag.get("task_seconds"),
        "manifest_counts": counts,
        "airflow_db_migrate_seconds": round(migrate_s, 2),
        "note": "emulator at its default 2,000 requests/s; both sides poll every 1 s",
    }


def e2e_script(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: the minimal SDK script — split, upload, create, poll, download."""
    import openai

    client = openai.OpenAI(base_url=args["base_url"], api_key="k")
    out_dir = Path(args["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    chunks: list[bytes] = []
    with open(args["input"], "rb") as fh:
        lines: list[bytes] = []
        for line in fh:
            lines.append(line)
            if len(lines) >= MAX_REQUESTS_PER_BATCH:
                chunks.append(b"".join(lines))
                lines = []
        if lines:
            chunks.append(b"".join(lines))
    batch_ids = []
    for n, data in enumerate(chunks):
        uploaded = client.files.create(file=(f"part-{n}.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch_ids.append(batch.id)
    pending = set(batch_ids)
    outputs = []
    while pending:
        time.sleep(1)
        for batch_id in sorted(pending):
            batch = client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                pending.discard(batch_id)
                outputs.extend(f for f in (batch.output_file_id, batch.error_file_id) if f)
    size = 0
    for file_id in outputs:
        target = out_dir / f"{file_id}.jsonl"
        client.files.content(file_id).write_to_file(target)
        size += target.stat().st_size
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "batches": len(batch_ids), "output_bytes": size}


def e2e_dag(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: ``dag.test()`` of ``openai_batch`` on one input file."""
    started = time.perf_counter()
    setup_paths()
    from airflow.dag_processing.dagbag import DagBag

    from bench.common import ROOT

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    dag = bag.get_dag("openai_batch")
    ready = time.perf_counter()
    dag_run = dag.test(run_conf={"input": args["input"], "poll_interval": 1})
    finished = time.perf_counter()
    tis = dag_run.get_task_instances()
    states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state) for ti in tis}
    task_seconds: dict[str, float] = {}
    for ti in tis:
        if ti.start_date and ti.end_date:
            task_seconds[ti.task_id] = round(
                task_seconds.get(ti.task_id, 0.0) + (ti.end_date - ti.start_date).total_seconds(), 2
            )
    return {
        "seconds": finished - ready,
        "setup_seconds": ready - started,
        "state": str(dag_run.state),
        "task_states": states,
        "task_seconds": task_seconds,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
