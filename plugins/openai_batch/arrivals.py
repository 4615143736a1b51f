"""The inbox's arrival record: which files were announced, taken by a run, and done.

The inbox watcher (:class:`openai_batch.triggers.InboxArrivalTrigger`) lists the inbox every few
seconds and announces each file that settled and is not done yet; the run an announcement starts
takes the files (``taken``, with its run id) and, once their results are written, marks them
``done``. Each row holds the file's stat identity (size, mtime in ns, inode), so a file is known as
done without being read again, and a file that changes is due again. Listing 100,000 files costs
one ``scandir`` walk plus one query.

A file announced but not taken (the run that would take it was not created) is announced again
after :data:`REANNOUNCE_AFTER`, and at once when the run was handed it and took only its first
``max_files`` (:meth:`ArrivalRecord.due_now`), so the next run starts within one listing; a file
taken by a run that
never finished (its worker died, the run was deleted) after :data:`TAKEN_LEASE`, longer than a
batch's 24-hour window. Neither pays twice: a file whose results exist for the same content is
skipped, and a request in flight elsewhere is borrowed (see :mod:`openai_batch.records`).

Pure logic on the standard library's SQLite, in the local ledger folder (``arrivals.sqlite``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from openai_batch.records import connect_shared, local_ledger

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
    from pathlib import Path

__all__ = [
    "ARRIVALS_FILE",
    "REANNOUNCE_AFTER",
    "TAKEN_LEASE",
    "ArrivalRecord",
    "FileStat",
    "arrivals_for",
    "is_due",
]

#: The record's file in the ledger folder.
ARRIVALS_FILE = "arrivals.sqlite"

#: Seconds after which a file announced and never taken is announced again.
REANNOUNCE_AFTER = 300.0

#: Seconds after which a file taken by a run that never wrote its results is announced again.
TAKEN_LEASE = 26 * 3600.0

State = Literal["announced", "taken", "done"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS arrivals (
    source TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
    state TEXT NOT NULL, at REAL NOT NULL, run_id TEXT) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class FileStat:
    """A file's identity as listed: where it is, and what a change of content changes."""

    source: str
    size: int
    mtime_ns: int
    ino: int = 0

    def key(self) -> tuple[int, int, int]:
        """What must be equal for two listings to be the same content without reading it."""
        return self.size, self.mtime_ns, self.ino


@dataclass(frozen=True, slots=True)
class Row:
    """What the record knows of one source."""

    size: int
    mtime_ns: int
    ino: int
    state: State
    at: float
    run_id: str | None

    def key(self) -> tuple[int, int, int]:
        """The stat identity the row was written for."""
        return self.size, self.mtime_ns, self.ino


def is_due(
    stat: FileStat,
    row: Row | None,
    now: float,
    reannounce_after: float = REANNOUNCE_AFTER,
    lease: float = TAKEN_LEASE,
) -> bool:
    """Whether a listed file is to be announced: new, changed, or its announcement or run went stale."""
    if row is None or row.key() != stat.key():
        return True
    if row.state == "done":
        return False
    if row.state == "announced":
        return now - row.at >= reannounce_after
    return now - row.at >= lease  # taken


class ArrivalRecord:
    """
    The record in ``path`` (created on first use); each method is one transaction.

    :param path: The SQLite file (shared by the triggerer and the workers: WAL, a busy timeout).
    :param busy_timeout: Seconds a write waits for another process's write.
    """

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout

    def _connect(self) -> sqlite3.Connection:
        return connect_shared(self.path, self.busy_timeout, _SCHEMA)

    def snapshot(self) -> dict[str, Row]:
        """Return every row, by source."""
        db = self._connect()
        try:
            rows = db.execute("SELECT source, size, mtime_ns, ino, state, at, run_id FROM arrivals")
            return {r[0]: Row(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}
        finally:
            db.close()

    def mark(self, files: Iterable[FileStat], state: State, now: float, run_id: str | None = None) -> None:
        """Record ``files`` in ``state`` (at ``now``), replacing what was known of them."""
        db = self._connect()
        try:
            with db:
                db.executemany(
                    "INSERT INTO arrivals (source, size, mtime_ns, ino, state, at, run_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET size = excluded.size, "
                    "mtime_ns = excluded.mtime_ns, ino = excluded.ino, state = excluded.state, "
                    "at = excluded.at, run_id = excluded.run_id",
                    [(f.source, f.size, f.mtime_ns, f.ino, state, now, run_id) for f in files],
                )
        finally:
            db.close()

    def due_now(self, files: Iterable[FileStat]) -> None:
        """
        Make ``files`` due for announcement at once: a run was handed them and took others.

        Only a file not announced yet, or announced (as it is now) and not taken, is changed: one a
        run took meanwhile, or that is done, stays as it is, so no second run is started for it.
        """
        rows = [(f.source, f.size, f.mtime_ns, f.ino) for f in files]
        db = self._connect()
        try:
            with db:
                db.executemany(
                    "INSERT INTO arrivals (source, size, mtime_ns, ino, state, at, run_id) "
                    "VALUES (?, ?, ?, ?, 'announced', 0, NULL) ON CONFLICT (source) DO NOTHING",
                    rows,
                )
                db.executemany(
                    "UPDATE arrivals SET at = 0 WHERE source = ? AND size = ? AND mtime_ns = ? AND ino = ? "
                    "AND state = 'announced'",
                    rows,
                )
        finally:
            db.close()

    def done_keys(self, sources: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """Return the stat identity each of ``sources`` was done for (sources not done are left out)."""
        known = self.snapshot()
        return {s: row.key() for s in sources if (row := known.get(s)) is not None and row.state == "done"}


def arrivals_for(ledger_dir: str | None) -> ArrivalRecord | None:
    """Return the arrival record in the local ledger folder, or None without one (object storage)."""
    folder = local_ledger(ledger_dir)
    return None if folder is None else ArrivalRecord(folder / ARRIVALS_FILE)
