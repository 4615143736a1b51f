"""
### openai_batch_downstream

Example consumer of the `openai_batch_results` asset: runs whenever `openai_batch` has written
results for a file, reads the manifest summaries carried by the asset events (input, counts,
results path, estimated cost) and logs one line per file plus the totals. Replace the task with
whatever should happen next (load into a warehouse, notify, start an evaluation).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task

from openai_batch.assets import RESULTS_ASSET


@task
def summarize(triggering_asset_events: Any = None) -> dict[str, Any]:
    """Log and return the summary of the results that triggered this run."""
    import logging

    from openai_batch.assets import event_extras, summarize_results

    log = logging.getLogger(__name__)
    summary = summarize_results(event_extras(triggering_asset_events))
    for item in summary["files"]:
        log.info("%s -> %s: %s", item["input"], item["results"], item["counts"])
    log.info(
        "%d file(s): %s; estimated cost %s USD",
        len(summary["files"]),
        summary["counts"],
        summary["estimated_cost_usd"],
    )
    return summary


@dag(
    dag_id="openai_batch_downstream",
    schedule=[RESULTS_ASSET],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["openai", "batch", "example"],
    doc_md=__doc__,
)
def openai_batch_downstream() -> None:
    """Summarize the results each asset event points to."""
    summarize()


openai_batch_downstream()
