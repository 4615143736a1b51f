"""Metrics of a written file, sent through Airflow's metrics layer (StatsD or OpenTelemetry).

Names (all under ``openai_batch.``):

- ``requests.<status>``: requests by outcome (succeeded, failed, expired, cancelled, rejected, reused)
- ``tokens.<kind>``: input, output and cached tokens
- ``cost_microusd.<model>``: estimated cost in millionths of a dollar, by model (or Azure deployment)
- ``sent.<provider>.<model>``: requests sent in batches (every round's), by API and model (or deployment)
- ``batches.<status>``: batches by final status (every round's batch)
- ``results_delay``: timer, from the moment a batch's end was seen to the results being written
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai_batch.state import ShardState

PREFIX = "openai_batch"
REQUEST_STATUSES = ("succeeded", "failed", "expired", "cancelled", "rejected", "reused")
TOKEN_KINDS = ("input_tokens", "output_tokens", "cached_tokens")


def stat_name(*parts: str) -> str:
    """Return a metric name whose parts keep only the characters every metrics backend accepts."""
    return ".".join([PREFIX, *(re.sub(r"[^A-Za-z0-9_-]+", "_", p) or "_" for p in parts)])


def cost_by_model(states: list[ShardState]) -> dict[str, float]:
    """Return the estimated cost in USD of every round's usage, summed by model (unpriced left out)."""
    from openai_batch.pricing import usage_cost_usd

    costs: dict[str, float] = {}
    for state in states:
        for rnd in state.rounds:
            cost = usage_cost_usd(state.endpoint, state.priced_as, rnd.usage)
            if cost is not None:
                costs[state.model] = costs.get(state.model, 0.0) + cost
    return costs


def file_metrics(
    manifest: dict[str, Any], states: list[ShardState], now: float | None = None
) -> list[tuple[str, str, float]]:
    """Return ``(kind, name, value)`` for one written file; kind is ``incr`` or ``timing`` (ms)."""
    out: list[tuple[str, str, float]] = []
    counts = manifest.get("counts") or {}
    for status in REQUEST_STATUSES:
        if counts.get(status):
            out.append(("incr", stat_name("requests", status), int(counts[status])))
    usage = manifest.get("usage") or {}
    for kind in TOKEN_KINDS:
        if usage.get(kind):
            out.append(("incr", stat_name("tokens", kind.removesuffix("_tokens")), int(usage[kind])))
    for model, cost in sorted(cost_by_model(states).items()):
        out.append(("incr", stat_name("cost_microusd", model), round(cost * 1_000_000)))
    provider = str(manifest.get("provider") or "openai")
    sent: dict[str, int] = {}
    for state in states:
        sent[state.model] = sent.get(state.model, 0) + sum(r.requests for r in state.rounds if r.batch_id)
    for model, n in sorted(sent.items()):
        if n:
            out.append(("incr", stat_name("sent", provider, model), n))
    ended = [r.ended_at for s in states for r in s.rounds if r.ended_at]
    for status in sorted({r.status for s in states for r in s.rounds if r.status}):
        n = sum(1 for s in states for r in s.rounds if r.status == status)
        out.append(("incr", stat_name("batches", status), n))
    if ended:
        delay = max(0.0, (time.time() if now is None else now) - max(ended))
        out.append(("timing", stat_name("results_delay"), delay * 1000.0))
    return out


def emit_file_metrics(manifest: dict[str, Any], states: list[ShardState]) -> None:
    """Send :func:`file_metrics` through Airflow's ``Stats``."""
    from airflow.sdk.observability.stats import Stats

    for kind, name, value in file_metrics(manifest, states):
        if kind == "timing":
            Stats.timing(name, timedelta(milliseconds=value))
        elif value:
            Stats.incr(name, count=int(value))
