"""
Webhooks first: status calls per waiting batch, and how soon a wait wakes after its batch's end.

Time is scaled 1:100 so the row runs in minutes: a "1-hour batch" stays ``validating`` 36 s in the
emulator, the "10-minute net" is a 6 s ``poll_interval`` and "today's 60 s polling" is 0.6 s. The
emulator signs each batch's end and posts it to a receiver in the waits' process that calls the
plugin's own :func:`openai_batch.webhooks.receive` (the check the API server's route makes), so a
delivery goes through the SDK's signature check, the record in the ledger folder and the
triggerer's shared reader, exactly as deployed. Calls are the emulator's ``GET /v1/batches``
(one batch or a page of the listing) while the waits run, over the number of batches.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import WORK, airflow_env, openai_conn, run_worker, setup_paths

#: The scale of time: 1 s here stands for 100 s.
SCALE = 100.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_webhook_bench(sizes: dict[str, Any], results: dict[str, Any]) -> None:
    """Three scenarios against one emulator: webhooks on (1 and N waits), and polling alone (1 wait)."""
    from bench.live import _emulator

    batch_s = float(sizes["webhook_batch_s"])
    net_s = batch_s / 6
    # A batch ends between two rounds of the net, as a real one does: half an interval after the
    # sixth. One that ends on a round is a race between that round and its delivery, which the
    # round won in 4 smoke runs of 4 (10 waits, none woken by its webhook).
    validating_s = batch_s + net_s / 2
    scenarios = (
        ("one_wait_webhooks", 1, net_s, True),
        ("many_waits_webhooks", int(sizes["webhook_waits"]), net_s, True),
        ("one_wait_polling", 1, batch_s / 60, False),
    )
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    port = _free_port()
    emu = _emulator(
        "emu-webhooks",
        [
            "--validating-seconds",
            str(validating_s),
            "--webhook-urls",
            f"http://127.0.0.1:{port}/hook",
            "--webhook-secret",
            secret,
            "--webhook-retry-seconds",
            "0.2",
        ],
    )
    out: dict[str, Any] = {}
    try:
        home = WORK / "airflow-webhooks"
        home.mkdir(parents=True, exist_ok=True)
        env = airflow_env(home, {"AIRFLOW_CONN_OPENAI_DEFAULT": openai_conn(emu.base_url)})
        for name, waits, interval, webhooks in scenarios:
            events_dir = WORK / f"webhooks-{name}"
            shutil.rmtree(events_dir, ignore_errors=True)
            args = {
                "waits": waits,
                "poll_interval": interval,
                "webhooks": webhooks,
                "events_dir": str(events_dir),
                "secret": secret,
                "port": port,
                "base_url": emu.base_url,
                "stats_url": f"{emu.url}/_emulator/stats",
                "timeout_s": validating_s * 3 + 60,
            }
            res = run_worker("webhook_waits", args, env=env, log=WORK / "logs" / f"webhooks-{name}.log")
            if res["ended"] != waits or res["completed"] != waits:
                raise RuntimeError(
                    f"webhook bench ({name}): {res['completed']} of {waits} waits saw completed"
                )
            if webhooks and res["woken_by_webhook"] == 0:
                raise RuntimeError(f"webhook bench ({name}): no wait was woken by its webhook")
            if not webhooks and res["woken_by_webhook"]:
                raise RuntimeError(f"webhook bench ({name}): a wait without webhooks was woken by one")
            out[name] = res
        results["webhook_status_calls_per_batch_1h_net_10min"] = out["one_wait_webhooks"]["calls_per_batch"]
        results["webhook_status_calls_per_batch_1h_net_10min_many"] = out["many_waits_webhooks"][
            "calls_per_batch"
        ]
        results["webhook_status_calls_per_batch_1h_polling_60s"] = out["one_wait_polling"]["calls_per_batch"]
        many = out["many_waits_webhooks"]
        results["webhook_wait_woken_after_delivery_s_p95_scaled"] = many["woken_after_s_p95"]
        results["webhook_loadavg"] = out["many_waits_webhooks"]["loadavg_1m"]
        results["webhook_context"] = {
            "scale": f"1:{SCALE:g} (1 s stands for {SCALE:g} s)",
            "batch_seconds": batch_s,
            "validating_seconds": validating_s,
            **out,
            "note": "the triggerer's reading of recorded ends (EVENT_CHECK_SECONDS) is scaled too; "
            "calls are the emulator's GET /v1/batches (one batch or a listing page) from the first "
            "wait's start to the last one's end, over the batches; woken_after is from the receiver's "
            "record of the delivery to the wait's event, in wall-clock seconds (not scaled)",
        }
    finally:
        emu.stop()


def webhook_waits(args: dict[str, Any]) -> dict[str, Any]:  # noqa: C901 - the worker's whole run
    """Worker: a receiver and N waits on N new batches; report calls per batch and wake latency."""
    setup_paths()
    import logging
    import os
    import urllib.request

    import openai
    from aiohttp import web

    from openai_batch.triggers import OpenAIBatchTrigger
    from openai_batch.webhooks import EventStore, receive

    logging.getLogger().setLevel(logging.WARNING)
    # Which waits a delivery woke (the rest ended by a round of the net): the waiter says so.
    from openai_batch import triggers as triggers_module

    woken_ids: set[str] = set()
    original_next = triggers_module._Waiter.next

    async def noting_next(self: Any, delay: float) -> dict[str, Any]:
        answer: dict[str, Any] = await original_next(self, delay)
        if self.woken:
            woken_ids.add(self.batch_id)
        return answer

    triggers_module._Waiter.next = noting_next  # type: ignore[method-assign]
    # The triggerer reads the recorded ends every EVENT_CHECK_SECONDS; scaled 1:100 like the rest.
    from openai_batch import webhooks as webhooks_module

    webhooks_module.EVENT_CHECK_SECONDS = webhooks_module.EVENT_CHECK_SECONDS / SCALE
    store = EventStore(Path(args["events_dir"]))

    def gets() -> int:
        with urllib.request.urlopen(args["stats_url"], timeout=30) as response:  # noqa: S310 - loopback
            stats = json.loads(response.read())
        routes = stats.get("requests_by_route", {})
        return sum(n for route, n in routes.items() if route.startswith("GET /v1/batches"))

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verdict = await asyncio.to_thread(receive, store, body, headers, args["secret"])
        return web.json_response(verdict.body, status=verdict.status)

    client = openai.OpenAI(base_url=args["base_url"], api_key="k", max_retries=2)
    line = {
        "custom_id": "r0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    uploaded = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")

    async def main() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(args["port"])).start()
        before = await asyncio.to_thread(gets)

        def create(_: int) -> str:
            return client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id

        ids = [await asyncio.to_thread(create, i) for i in range(int(args["waits"]))]
        ended: dict[str, tuple[float, dict[str, Any]]] = {}

        async def wait(batch_id: str) -> None:
            trigger = OpenAIBatchTrigger(
                conn_id="openai_default",
                batch_id=batch_id,
                poll_interval=float(args["poll_interval"]),
                events_dir=str(store.folder) if args["webhooks"] else None,
            )
            async for event in trigger.run():
                ended[batch_id] = (time.time(), event.payload)
                return

        cpu_started, started = time.process_time(), time.time()
        await asyncio.wait_for(asyncio.gather(*(wait(b) for b in ids)), float(args["timeout_s"]))
        cpu = time.process_time() - cpu_started
        after = await asyncio.to_thread(gets)
        await runner.cleanup()
        lags = []
        for batch_id in woken_ids:
            record = json.loads((store.events / batch_id).read_text())
            lags.append(ended[batch_id][0] - float(record["received_at"]))
        lags.sort()
        woken = len(lags)
        return {
            "waits": len(ids),
            "poll_interval_s": float(args["poll_interval"]),
            "webhooks": bool(args["webhooks"]),
            "ended": len(ended),
            "completed": sum(1 for _, payload in ended.values() if payload.get("status") == "completed"),
            "woken_by_webhook": woken,
            "ended_by_the_net": len(ended) - woken,
            "status_calls": after - before,
            "calls_per_batch": round((after - before) / len(ids), 3),
            "wait_seconds": round(time.time() - started, 2),
            "woken_after_s_p50": round(lags[len(lags) // 2], 3) if lags else None,
            "woken_after_s_p95": round(lags[min(len(lags) - 1, int(0.95 * len(lags)))], 3) if lags else None,
            "cpu_seconds": round(cpu, 3),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }

    return asyncio.run(main())
