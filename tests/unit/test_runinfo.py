"""The day a file belongs to in its manifest: the run's date, else its day folder, else none."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from openai_batch.layout import dated_folder
from openai_batch.runinfo import file_partition, run_type

DAY = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def _context(kind: str) -> Any:
    return {"dag_run": SimpleNamespace(run_type=SimpleNamespace(value=kind)), "logical_date": DAY}


@pytest.mark.parametrize(
    ("key", "day"),
    [
        ("2024-06-03/reviews.jsonl", "2024-06-03"),
        ("reviews.jsonl", None),
        ("2024-06-03/deeper/reviews.jsonl", None),
        ("2024-13-01/reviews.jsonl", None),  # not a date
        ("2024-6-3/reviews.jsonl", None),  # not the day format
        ("notes/reviews.jsonl", None),
    ],
)
def test_a_file_directly_in_a_day_folder_has_that_day(key: str, day: str | None) -> None:
    assert dated_folder(key) == day


@pytest.mark.parametrize(
    ("kind", "key", "partition"),
    [
        ("scheduled", "reviews.jsonl", "2024-06-01"),
        ("backfill", "2024-06-03/reviews.jsonl", "2024-06-01"),  # the run's day wins
        ("manual", "reviews.jsonl", None),  # a person's run over the inbox root has no day
        ("manual", "2024-06-03/reviews.jsonl", "2024-06-03"),
        ("asset_triggered", "2024-06-03/reviews.jsonl", "2024-06-03"),
        ("asset_triggered", "reviews.jsonl", None),
    ],
)
def test_the_manifest_partition_is_the_runs_day_or_the_files(
    kind: str, key: str, partition: str | None
) -> None:
    assert run_type(_context(kind)) == kind
    assert file_partition(_context(kind), key) == partition
