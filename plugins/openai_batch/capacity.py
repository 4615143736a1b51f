"""Capacity rules: who may have enqueued tokens, who waits, and which ledger entries went stale.

Pure functions over the ledger's data (plain dicts); :class:`openai_batch.budget.Ledger` applies
them under its file lock. Standard library only.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "STALE_SECONDS",
    "UNCREATED_STALE_SECONDS",
    "WAITING_STALE_POLLS",
    "Admission",
    "admission",
    "capacity_summary",
    "drop_stale",
    "drop_stale_waiting",
    "round_key",
    "usage",
    "waiting_count",
    "waiting_stale_after",
]

#: An in-flight entry older than this is dropped (the batch window is 24 h; its wait never released it).
STALE_SECONDS = 27 * 3600
#: An entry taken but never given a batch (the task died between upload and create) is dropped after this.
UNCREATED_STALE_SECONDS = 3600
#: A waiting entry not checked again within this many poll intervals (plus a minute) is dropped.
WAITING_STALE_POLLS = 3

#: ``admit``: take the tokens now; ``wait``: fits once others end; ``never``: larger than the limit.
Admission = Literal["admit", "wait", "never"]


def round_key(identity: str, round_no: int, attempt: int) -> str:
    """Return the ledger key of one round of a shard: one per batch the shard may create."""
    return f"{identity}-r{round_no}a{attempt}"


def usage(inflight: dict[str, Any], model: str) -> tuple[int, int]:
    """Return ``(tokens, batches)`` of ``model`` in flight."""
    entries = [e for e in inflight.values() if e["model"] == model]
    return sum(int(e["tokens"]) for e in entries), len(entries)


def waiting_count(waiting: dict[str, Any], model: str) -> int:
    """Return how many shards of ``model`` wait for capacity."""
    return sum(1 for e in waiting.values() if e["model"] == model)


def admission(inflight: dict[str, Any], key: str, model: str, tokens: int, limit: int | None) -> Admission:
    """Decide whether batch ``key`` (``tokens`` of ``model``) may be sent under ``limit`` now.

    A key already in flight stays admitted (admission is idempotent); no limit admits everything.
    """
    if key in inflight or limit is None or usage(inflight, model)[0] + tokens <= limit:
        return "admit"
    return "wait" if tokens <= limit else "never"


def waiting_stale_after(poll: float) -> float:
    """Return after how many seconds without a check a waiting entry polling every ``poll`` s is dropped."""
    return WAITING_STALE_POLLS * max(0.0, float(poll)) + 60.0


def drop_stale_waiting(waiting: dict[str, Any], now: float) -> None:
    """Drop the waiting entries no task checked for a while (their task stopped)."""
    for key in [
        k
        for k, e in waiting.items()
        if now - float(e.get("seen", e["since"])) > waiting_stale_after(e.get("poll", 30.0))
    ]:
        del waiting[key]


def drop_stale(inflight: dict[str, Any], now: float) -> None:
    """Drop the in-flight entries whose wait never released them (see :data:`STALE_SECONDS`)."""
    for key in [
        k
        for k, e in inflight.items()
        if now - e["since"] > STALE_SECONDS
        or (e.get("batch_id") is None and now - e["since"] > UNCREATED_STALE_SECONDS)
    ]:
        del inflight[key]


def capacity_summary(data: dict[str, Any], now: float) -> dict[str, Any]:
    """
    Return what the ledger's ``data`` says is in flight and waiting, stale entries left out.

    ``{"models": {model: {"tokens", "batches", "waiting"}}, "waiting": [entry, ...]}``: per model
    the enqueued tokens and batches in flight and how many shards wait; then every waiting entry
    (``model``, ``tokens``, ``label``, ``since``), longest waiting first. Pure: ``data`` is not changed.
    """
    inflight = {k: dict(e) for k, e in (data.get("inflight") or {}).items()}
    waiting = {k: dict(e) for k, e in (data.get("waiting") or {}).items()}
    drop_stale(inflight, now)
    drop_stale_waiting(waiting, now)
    models: dict[str, dict[str, int]] = {}
    for entry in inflight.values():
        row = models.setdefault(entry["model"], {"tokens": 0, "batches": 0, "waiting": 0})
        row["tokens"] += int(entry["tokens"])
        row["batches"] += 1
    for entry in waiting.values():
        models.setdefault(entry["model"], {"tokens": 0, "batches": 0, "waiting": 0})["waiting"] += 1
    queue = sorted(({"key": k, **e} for k, e in waiting.items()), key=lambda e: (float(e["since"]), e["key"]))
    return {"models": models, "waiting": queue}
