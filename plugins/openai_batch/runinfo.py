"""What a task knows of its run: the run type, and the partition (day) a run or a file belongs to.

Airflow adapter helpers shared by the sensors and the operators (which do not import each other).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openai_batch.layout import dated_folder, day_of

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["PARTITIONED_RUN_TYPES", "file_partition", "run_date", "run_type"]

#: Run types that take their date's partition; every other run (a person's, an asset's) takes ``input``.
PARTITIONED_RUN_TYPES = frozenset({"scheduled", "backfill"})


def run_type(context: Context) -> str:
    """Return the run's type as Airflow names it: manual, scheduled, backfill, asset_triggered."""
    dag_run = context.get("dag_run")
    kind = getattr(dag_run, "run_type", "")
    return str(getattr(kind, "value", kind))


def run_date(context: Context) -> str | None:
    """Return the partition date (``YYYY-MM-DD``) of a scheduled or backfill run, else None."""
    logical_date = context.get("logical_date")
    if run_type(context) not in PARTITIONED_RUN_TYPES or logical_date is None:
        return None
    return day_of(logical_date)


def file_partition(context: Context, key: str) -> str | None:
    """Return the day a file belongs to: its run's date, else its day folder (``<inbox>/D/``), else None."""
    return run_date(context) or dated_folder(key)
