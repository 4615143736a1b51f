"""Names of the files in each input file's result folder and state folder: one owner.

Pure, stdlib only. Every later run finds its earlier work by these names (see
``tests/golden/layout.json``): change none of them without a migration.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = [
    "BORROWED",
    "DAY_FORMAT",
    "MANIFEST_FILE",
    "ORDER_FILE",
    "ORDER_LINES_FILE",
    "PLAN_FILE",
    "REJECTS_FILE",
    "RESULTS_FILE",
    "SERVED_FILES",
    "SHARD_PATTERN",
    "round_file",
    "day_of",
    "dated_folder",
    "digests_file",
    "progress_file_name",
    "shard_state_file",
    "take_file",
    "utc_day",
]

#: Names inside each input file's result folder (contract: results, rejects, manifest).
RESULTS_FILE = "results.jsonl"
REJECTS_FILE = "rejects.jsonl"
MANIFEST_FILE = "manifest.json"
#: The files of a result folder the results view serves for download.
SERVED_FILES = (RESULTS_FILE, REJECTS_FILE, MANIFEST_FILE)
#: Names inside a state folder: the plan (written last: its presence means the folder is complete)
#: and the custom_ids of the valid requests in input order, with their input line numbers (int64,
#: little-endian, one per id of ``order.txt``; absent from state folders of older versions).
PLAN_FILE = "plan.json"
ORDER_FILE = "order.txt"
ORDER_LINES_FILE = "order.lines"


#: Name of a shard's request file (round 0) in a state folder, by its index.
SHARD_PATTERN = "shard-{:05d}.jsonl"


def shard_state_file(index: int) -> str:
    """Return the name of a shard's state record in its state folder."""
    return f"shard-{int(index):05d}.state.json"


def progress_file_name(index: int) -> str:
    """Return the name of a shard's live progress record (what the last poll saw) in its state folder."""
    return f"shard-{int(index):05d}.progress.json"


def round_file(index: int, round_no: int) -> str:
    """Return the name of the request file of a shard's follow-up round ``round_no`` (>= 1)."""
    return f"shard-{int(index):05d}.round{int(round_no)}.jsonl"


def take_file(shard_file: str, round_no: int) -> str:
    """Return the name of the file of borrowed requests taken over from their owner as round ``round_no``."""
    return f"{shard_file.removesuffix('.jsonl')}.take{int(round_no)}.jsonl"


def digests_file(request_file: str) -> str:
    """Return the name of a request file's digests (``{custom_id: request digest}``, a cache of it)."""
    return f"{request_file.removesuffix('.jsonl')}.digests.json"


#: The ``kind`` of a plan entry answered by another state folder's batches.
BORROWED = "borrowed"


#: A day as folders (``<inbox>/D/``), partitions and the spend ledger name it: ``YYYY-MM-DD``.
DAY_FORMAT = "%Y-%m-%d"


class _HasStrftime(Protocol):
    def strftime(self, fmt: str, /) -> str: ...


def utc_day(epoch: float | None = None) -> str:
    """Return the UTC day of ``epoch`` (default: now) as ``YYYY-MM-DD``."""
    return time.strftime(DAY_FORMAT, time.gmtime(time.time() if epoch is None else epoch))


def day_of(moment: _HasStrftime) -> str:
    """Return the day of a date or datetime (a run's logical date, in its own zone) as ``YYYY-MM-DD``."""
    return str(moment.strftime(DAY_FORMAT))


def dated_folder(key: str) -> str | None:
    """Return ``D`` when ``key`` (a path relative to the inbox) lies directly in a day folder ``D/``."""
    import datetime as dt

    parts = key.split("/")
    if len(parts) != 2:
        return None
    try:
        dt.datetime.strptime(parts[0], DAY_FORMAT)
    except ValueError:
        return None
    return parts[0] if len(parts[0]) == 10 else None
