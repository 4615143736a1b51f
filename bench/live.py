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


def run_trigger_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    import openai

    emu = _emulator("emu-trigger", ["--requests-per-second", "0.01", "--validating-seconds", "0"])
    try:
        client = openai.OpenAI(base_url=emu.base_url, api_key="k", max_retries=2)
        line = {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        batch_ids = []
        for n in range(5):
            data = "".join(json.dumps({**line, "custom_id": f"b{n}-{i}"}) + "\n" for i in range(20)).encode()
            uploaded = client.files.create(file=(f"in{n}.jsonl", data), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            batch_ids.append(batch.id)
        emu.set_faults(latency_ms=200, latency_routes=["GET /v1/batches/*"])
        home = WORK / "airflow-trigger"
        home.mkdir(parents=True, exist_ok=True)
        env = airflow_env(home, {"AIRFLOW_CONN_OPENAI_DEFAULT": openai_conn(emu.base_url)})
        args = {
            "batch_ids": batch_ids,
            "triggers": sizes["triggers"],
            "window_s": sizes["trigger_window_s"],
            "warmup_s": sizes["trigger_warmup_s"],
            "poll_interval": sizes["trigger_poll_interval_s"],
        }
        out: dict[str, Any] = {}
        for kind in ("ours", "provider"):
            before = _route_count(emu.stats(), "GET /v1/batches")
            res = run_worker(
                "trigger", {**args, "kind": kind}, env=env, log=WORK / "logs" / f"trigger-{kind}.log"
            )
            res["emulator_batch_gets"] = _route_count(emu.stats(), "GET /v1/batches") - before
            out[kind] = res
            results[f"trigger_lag_p99_ms_{kind}"] = round(res["p99_ms"], 1)
            # A lag figure only means something if the triggers really polled meanwhile.
            results[f"trigger_polls_{kind}"] = res["emulator_batch_gets"]
        statuses = {b: client.batches.retrieve(b).status for b in batch_ids}
        results["trigger_context"] = {
            **{k: v for k, v in args.items() if k != "batch_ids"},
            "emulator_latency_ms": 200,
            "batches": len(batch_ids),
            "batch_statuses_after": sorted(set(statuses.values())),
            "ours": out["ours"],
            "provider": out["provider"],
        }
    finally:
        emu.stop()


def trigger(args: dict[str, Any]) -> dict[str, Any]:  # noqa: C901 - one closure-heavy worker
    """Worker: run N triggers plus a 10 ms ticker on one loop; report the ticker's lag."""
    setup_paths()
    import logging

    if args["kind"] == "ours":
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
    triggers = [make(batch_ids[i % len(batch_ids)]) for i in range(args["triggers"])]
    tick = 0.010
    warmup, window = float(args["warmup_s"]), float(args["window_s"])
    samples: list[tuple[float, float]] = []  # (time, lag seconds)
    events: list[Any] = []
    state = {"expected": 0.0, "done": False}
    lock = threading.Lock()
    start = time.monotonic()

    def report(blocked: bool) -> None:
        with lock:
            if state["done"]:
                return
            state["done"] = True
        now = time.monotonic()
        lo, hi = start + warmup, start + warmup + window
        lags = [lag for at, lag in samples if lo <= at <= hi]
        pending = max(0.0, now - state["expected"]) if state["expected"] else now - start
        if blocked:
            lags.append(pending)  # the tick still waiting when the window closed
        lags.sort()
        all_lags = sorted(lag for _, lag in samples) + ([pending] if blocked else [])

        def pct(values: list[float], q: float) -> float:
            if not values:
                return 0.0
            return values[min(len(values) - 1, int(q * len(values)))] * 1000

        result = {
            "kind": args["kind"],
            "p99_ms": pct(lags, 0.99),
            "p50_ms": pct(lags, 0.50),
            "max_ms": (lags[-1] * 1000) if lags else 0.0,
            "ticks_in_window": len(lags),
            "expected_ticks": int(window / tick),
            "p99_ms_including_warmup": pct(all_lags, 0.99),
            "events": len(events),
            "loop_blocked_at_end": blocked,
            "blocked_for_ms_at_end": pending * 1000 if blocked else 0.0,
        }
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)

    async def ticker() -> None:
        loop_time = time.monotonic
        while True:
            state["expected"] = loop_time() + tick
            await asyncio.sleep(tick)
            now = loop_time()
            samples.append((now, now - state["expected"]))

    async def drive(t: Any) -> None:
        async for event in t.run():
            events.append(event)
            return

    async def main() -> None:
        asyncio.get_running_loop().create_task(ticker())
        for t in triggers:
            asyncio.get_running_loop().create_task(drive(t))
        await asyncio.sleep(warmup + window)
        report(blocked=False)

    def watchdog() -> None:
        time.sleep(warmup + window + 2.0)
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
