"""The asset the pipeline updates, and how a downstream DAG reads the events it gets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset

#: Updated once per input file written in a run; the event's extra is that file's manifest summary
#: (``input``, ``input_sha256``, ``counts``, ``usage``, ``estimated_cost_usd``, ``results``), or
#: for a pack of small files (see :mod:`openai_batch.packs`), ``files``: one such summary per file.
RESULTS_ASSET = Asset("openai_batch_results", uri="file:///openai_batch/results")

#: The inbox, watched: an event per batch of files that landed and settled (``extra.payload.files``).
INBOX_ASSET_NAME = "openai_batch_inbox"


def inbox_asset(poll_interval: float = 10.0, settle_seconds: float = 30.0) -> Asset:
    """Return the inbox asset with its watcher (see :class:`openai_batch.watcher.InboxArrivalTrigger`)."""
    from airflow.sdk import AssetWatcher

    from openai_batch.watcher import InboxArrivalTrigger

    trigger = InboxArrivalTrigger(poll_interval=poll_interval, settle_seconds=settle_seconds)
    return Asset(
        INBOX_ASSET_NAME,
        uri="file:///openai_batch/inbox",
        watchers=[AssetWatcher(name="openai_batch_inbox_watcher", trigger=trigger)],
    )


_COUNT_KEYS = ("total", "succeeded", "failed", "expired", "cancelled", "rejected", "reused")


def event_extras(events: Mapping[Any, Iterable[Any]] | Iterable[Any] | None) -> list[dict[str, Any]]:
    """
    Return the extra of every results event, in order.

    ``events`` is a task's ``triggering_asset_events`` (asset -> events) or a plain list of events;
    anything with an ``extra`` attribute or key counts as an event. Events without a manifest
    summary (for instance one created by hand in the UI) are left out.
    """
    if events is None:
        return []
    if isinstance(events, Mapping):
        flat = [event for asset in events for event in events[asset]]
    else:
        flat = list(events)
    extras = []
    for event in flat:
        extra = event.get("extra") if isinstance(event, Mapping) else getattr(event, "extra", None)
        if isinstance(extra, Mapping) and "counts" in extra:
            extras.append(dict(extra))
        elif isinstance(extra, Mapping) and isinstance(extra.get("files"), list):  # a pack's files
            extras.extend(dict(f) for f in extra["files"] if isinstance(f, Mapping) and "counts" in f)
    return extras


def summarize_results(extras: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up the manifest summaries of several written files."""
    files = []
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    cost = 0.0
    cost_known = True
    for extra in extras:
        file_counts = extra.get("counts") or {}
        for key in _COUNT_KEYS:
            counts[key] += int(file_counts.get(key) or 0)
        if extra.get("estimated_cost_usd") is None:
            cost_known = False
        else:
            cost += float(extra["estimated_cost_usd"])
        files.append(
            {
                "input": extra.get("input"),
                "results": extra.get("results"),
                "counts": dict(file_counts),
            }
        )
    return {
        "files": files,
        "counts": counts,
        "estimated_cost_usd": round(cost, 6) if cost_known and files else None,
    }
