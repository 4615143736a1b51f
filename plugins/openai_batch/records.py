"""The deployment's record of every request sent, so that the same request is never paid twice.

Pure logic, no Airflow imports. A request's identity is the SHA-256 of its line as sent (see
:func:`openai_batch.reuse.request_digest`: custom_id, url and body), whatever file, content, split
settings, run or worker sends it. The first state folder (content digest + split variant) that
claims a digest owns it: it sends it, and records the batch and the outcome here. Another owner
that prepares the same request does not send it; it borrows the owner's answer, waiting while the
owner's batch runs, and takes the request over only when the owner gave it up (``open``) or claimed
it and never sent it for longer than :data:`STALE_AFTER` seconds.

States: ``claimed`` -> ``sent`` -> ``succeeded`` | ``final_failed`` | ``open`` (abandoned).

The record is one SQLite file, ``requests.sqlite``, in the ledger folder: SQLite is transactional
across processes on one host (WAL, a busy timeout) and its journal makes a write that was cut short
(a killed process, a crash) roll back on the next open instead of leaving a torn file. A deployment
on several hosts needs the ledger folder on one host's disk or a shared mount whose locks work (NFS
locking is not safe for SQLite).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "FINAL_STATES",
    "RECORD_FILE",
    "STALE_AFTER",
    "Entry",
    "RequestRecord",
    "connect_shared",
    "local_ledger",
    "record_for",
]

#: The record's file name inside the ledger folder.
RECORD_FILE = "requests.sqlite"
#: A request claimed but not sent for this long (seconds) may be taken over by another owner.
STALE_AFTER = 3600.0
#: States that carry an answer: a borrower uses it and never sends the request.
FINAL_STATES = frozenset({"succeeded", "final_failed"})

_CHUNK = 500
#: Rows written per transaction: one transaction writes each page of the table once, however many of
#: its rows change, where a transaction per 500-row statement wrote most pages again every time (the
#: digests are random). Bounded, so the write lock is held for a fraction of a second at a time.
_TXN_ROWS = 50_000
#: The record's layout version (SQLite's ``user_version``). 0: the first layout, one table whose rows
#: named their owner and batch in full (an 84-character state-folder URL and a batch id on every row);
#: a record in it is migrated on first open (:func:`_migrate_v1`).
SCHEMA_VERSION = 2
#: Owners (state-folder URLs) and batch ids are kept once each and referred to by number from every
#: request: the rows stay about a third of their size, so more of them fit in each page. The check on
#: ``owner`` refuses a row of the first layout (an owner in full), so a process of an earlier version
#: still running fails its claim instead of writing rows this layout cannot read.
_TABLES = (
    "CREATE TABLE IF NOT EXISTS owners (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE TABLE IF NOT EXISTS requests (
    digest BLOB PRIMARY KEY, custom_id TEXT NOT NULL,
    owner INTEGER NOT NULL CHECK (typeof(owner) = 'integer'), shard INTEGER NOT NULL,
    state TEXT NOT NULL, batch INTEGER, updated REAL NOT NULL) WITHOUT ROWID""",
)
#: The columns of an :class:`Entry`, names resolved.
_SELECT = (
    "SELECT r.digest, r.custom_id, o.name, r.shard, r.state, b.name, r.updated FROM requests r"
    " JOIN owners o ON o.id = r.owner LEFT JOIN batches b ON b.id = r.batch"
)
_OWNER_ID = "(SELECT id FROM owners WHERE name = ?)"


@dataclass(frozen=True)
class Entry:
    """One request as the record knows it.

    :param digest: the request digest (64 hex digits).
    :param custom_id: its custom_id.
    :param owner: the state folder that sends it.
    :param shard: the owner's shard index holding it.
    :param state: ``claimed``, ``sent``, ``succeeded``, ``final_failed`` or ``open``.
    :param batch_id: the owner's batch, once sent.
    :param updated: epoch seconds of the last change.
    """

    digest: str
    custom_id: str
    owner: str
    shard: int
    state: str
    batch_id: str | None
    updated: float

    def takeable(self, now: float, stale_after: float = STALE_AFTER) -> bool:
        """Return True when another owner may take this request over: abandoned, or claimed and stale."""
        return self.state == "open" or (self.state == "claimed" and now - self.updated > stale_after)


def local_ledger(ledger_dir: str | None) -> Path | None:
    """Return the ledger folder as a local path, or None without one or in object storage."""
    if not ledger_dir or ledger_dir == "None":
        return None
    if ledger_dir.startswith("file://"):
        ledger_dir = ledger_dir[len("file://") :]
    elif "://" in ledger_dir:
        return None
    return Path(ledger_dir)


#: Page cache of a connection to a shared file, in KiB (SQLite's default is 2,000 KiB). The record's
#: keys are random digests, so a chunk of updates touches pages all over the table: with 2 MB, a
#: 100,000-request claim, ``sent``, answers and give-up read most pages back from the kernel again
#: and again. Taken only as pages are read, and freed when the connection closes.
SHARED_CACHE_KIB = 65536


def connect_shared(path: Path, busy_timeout: float, schema: str) -> sqlite3.Connection:
    """Open a SQLite file shared by the deployment's processes (WAL, a busy timeout) with ``schema``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    db.execute(f"PRAGMA cache_size=-{SHARED_CACHE_KIB}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(schema)
    return db


def record_for(ledger_dir: str | None) -> RequestRecord | None:
    """Return the record in the local ledger folder, or None without one (object storage: no record)."""
    folder = local_ledger(ledger_dir)
    return None if folder is None else RequestRecord(folder / RECORD_FILE)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class RequestRecord:
    """The shared record in ``path`` (created on first use). Each method is its own transaction(s).

    :param path: the SQLite file.
    :param busy_timeout: seconds a write waits for another process's write to end.
    """

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout

    def _connect(self) -> sqlite3.Connection:
        db = connect_shared(self.path, self.busy_timeout, _TABLES[0])
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                _upgrade(db)
        except BaseException:
            db.close()
            raise
        return db

    def claim(
        self, owner: str, requests: Iterable[tuple[str, str, int]], *, force: bool = False
    ) -> list[Entry]:
        """
        Claim ``(digest, custom_id, shard)`` requests for ``owner``; return those another owner keeps.

        A request nobody claimed, or one its owner gave up (``open``), becomes ``owner``'s; one that
        ``owner`` claimed before (a retry, a clear) stays its own. ``force`` takes every request
        over whatever its state: a deliberate re-run sends everything again. One write transaction
        per chunk of requests.
        """
        others: list[Entry] = []
        batch: list[tuple[str, str, int]] = []
        db = self._connect()
        try:
            for item in requests:
                batch.append(item)
                if len(batch) >= _TXN_ROWS:
                    others += self._claim_rows(db, owner, batch, force)
                    batch = []
            if batch:
                others += self._claim_rows(db, owner, batch, force)
        finally:
            db.close()
        return others

    def _claim_rows(
        self, db: sqlite3.Connection, owner: str, rows: list[tuple[str, str, int]], force: bool
    ) -> list[Entry]:
        """Claim ``rows`` in one transaction, 500 per statement, in digest order (see :meth:`_update`)."""
        rows = sorted(rows)
        found: list[Entry] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            owner_id = _name_id(db, "owners", owner)
            for start in range(0, len(rows), _CHUNK):
                found += self._claim_chunk(db, owner_id, rows[start : start + _CHUNK], force)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                db.execute("ROLLBACK")
            raise
        return found

    def _claim_chunk(
        self, db: sqlite3.Connection, owner: int, rows: list[tuple[str, str, int]], force: bool
    ) -> list[Entry]:
        """Claim up to 500 rows inside the caller's transaction; return those another owner keeps."""
        now = time.time()
        keys = [bytes.fromhex(d) for d, _, _ in rows]
        inserted = db.executemany(
            "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, 'claimed', NULL, ?)",
            [(key, cid, owner, shard, now) for key, (_, cid, shard) in zip(keys, rows, strict=True)],
        ).rowcount
        if inserted == len(rows):
            # Every row was new (the usual first claim): all are ``owner``'s now, in this transaction,
            # so nothing is open to take and nobody else holds one. Skip both lookups.
            return []
        # Abandoned requests are taken; with force, every request another owner holds.
        where = "owner != ?" if force else "state = 'open'"
        db.executemany(
            "UPDATE requests SET owner = ?, shard = ?, state = 'claimed', batch = NULL, updated = ?"
            f" WHERE digest = ? AND {where}",
            [
                (owner, shard, now, key, *((owner,) if force else ()))
                for key, (_, _, shard) in zip(keys, rows, strict=True)
            ],
        )
        found = db.execute(
            f"{_SELECT} WHERE r.owner != ? AND r.digest IN ({_marks(len(keys))})", [owner, *keys]
        ).fetchall()
        return [_entry(row) for row in found]

    def _update(
        self, sql: str, params: Sequence[object], digests: Sequence[str], batch: str | None = None
    ) -> int:
        """Run ``sql`` over ``digests``, 500 per statement, 50,000 per transaction.

        ``params`` come before the digests; with ``batch``, its number (added to ``batches`` in the
        first transaction) comes first.
        """
        changed = 0
        db = self._connect()
        try:
            for start in range(0, len(digests), _TXN_ROWS):
                db.execute("BEGIN IMMEDIATE")
                try:
                    if batch is not None and start == 0:
                        params = [_name_id(db, "batches", batch), *params]
                    # In key order, the statements walk the table's pages once each instead of
                    # jumping all over it (the digests are random).
                    for chunk in _chunks(sorted(digests[start : start + _TXN_ROWS])):
                        cur = db.execute(
                            sql.format(marks=_marks(len(chunk)), owner=_OWNER_ID),
                            [*params, *(bytes.fromhex(d) for d in chunk)],
                        )
                        changed += cur.rowcount
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled back already
                        db.execute("ROLLBACK")
                    raise
        finally:
            db.close()
        return changed

    def mark_sent(self, owner: str, digests: Sequence[str], batch_id: str) -> int:
        """Record that ``owner`` sent ``digests`` in ``batch_id``; return how many rows it owns."""
        return self._update(
            "UPDATE requests SET state = 'sent', batch = ?, updated = ?"
            " WHERE owner = {owner} AND state NOT IN ('succeeded', 'final_failed') AND digest IN ({marks})",
            [time.time(), owner],
            digests,
            batch_id,
        )

    def mark_final(self, owner: str, digests: Sequence[str], state: str, batch_id: str) -> int:
        """Record a final answer (``succeeded`` or ``final_failed``) of ``owner``'s batch for ``digests``."""
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state}")
        return self._update(
            "UPDATE requests SET batch = ?, state = ?, updated = ?"
            " WHERE owner = {owner} AND digest IN ({marks})",
            [state, time.time(), owner],
            digests,
            batch_id,
        )

    def mark_open(self, owner: str, digests: Sequence[str]) -> int:
        """Give up ``owner``'s requests among ``digests`` that have no final answer, for others to take."""
        return self._update(
            "UPDATE requests SET state = 'open', updated = ?"
            " WHERE owner = {owner} AND state NOT IN ('succeeded', 'final_failed') AND digest IN ({marks})",
            [time.time(), owner],
            digests,
        )

    def touch(self, owner: str, digests: Sequence[str]) -> int:
        """Refresh ``owner``'s claims that are not sent yet (it waits for capacity): not stale."""
        return self._update(
            "UPDATE requests SET updated = ?"
            " WHERE owner = {owner} AND state = 'claimed' AND digest IN ({marks})",
            [time.time(), owner],
            digests,
        )

    def batch_owner(self, batch_id: str) -> str | None:
        """Return the owner whose requests went in ``batch_id``, or None when no request names it."""
        db = self._connect()
        try:
            row = db.execute(
                "SELECT o.name FROM requests r JOIN owners o ON o.id = r.owner"
                " WHERE r.batch = (SELECT id FROM batches WHERE name = ?) LIMIT 1",
                (batch_id,),
            ).fetchone()
        finally:
            db.close()
        return None if row is None else str(row[0])

    def entries(self, digests: Sequence[str]) -> dict[str, Entry]:
        """Return what the record holds for ``digests`` (read only)."""
        found: dict[str, Entry] = {}
        db = self._connect()
        try:
            for chunk in _chunks(digests):
                rows = db.execute(
                    f"{_SELECT} WHERE r.digest IN ({_marks(len(chunk))})", [bytes.fromhex(d) for d in chunk]
                ).fetchall()
                for row in rows:
                    entry = _entry(row)
                    found[entry.digest] = entry
        finally:
            db.close()
        return found

    def take_over(self, owner: str, shard: int, seen: Iterable[Entry]) -> list[str]:
        """
        Make ``owner`` the owner of the ``seen`` entries that nobody changed since they were read.

        A compare-and-swap per request (its owner and ``updated`` unchanged), so of two borrowers
        that both saw a request abandoned only one takes it. Return the digests taken.
        """
        taken: list[str] = []
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            owner_id = _name_id(db, "owners", owner)
            for entry in seen:
                cur = db.execute(
                    "UPDATE requests SET owner = ?, shard = ?, state = 'claimed', batch = NULL,"
                    f" updated = ? WHERE digest = ? AND owner = {_OWNER_ID} AND updated = ? AND state = ?",
                    (
                        owner_id,
                        shard,
                        now,
                        bytes.fromhex(entry.digest),
                        entry.owner,
                        entry.updated,
                        entry.state,
                    ),
                )
                if cur.rowcount:
                    taken.append(entry.digest)
            db.execute("COMMIT")
        finally:
            db.close()
        return taken


def _entry(row: tuple[bytes, str, str, int, str, str | None, float]) -> Entry:
    digest, custom_id, owner, shard, state, batch_id, updated = row
    return Entry(bytes(digest).hex(), custom_id, owner, int(shard), state, batch_id, float(updated))


def _name_id(db: sqlite3.Connection, table: str, name: str) -> int:
    """Return the number of ``name`` in ``owners`` or ``batches`` (added if new), in the open transaction."""
    db.execute(f"INSERT OR IGNORE INTO {table} (name) VALUES (?)", (name,))  # noqa: S608 (two fixed tables)
    return int(db.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()[0])  # noqa: S608


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring the record to :data:`SCHEMA_VERSION`: create it, or migrate a record of the first layout.

    One write transaction, and the version read again inside it: of two processes opening an old
    record at once, the second finds it migrated and changes nothing.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            db.execute("COMMIT")
            return
        if version != 0:
            raise RuntimeError(
                f"request record of layout {version}: this version knows layouts 0 to {SCHEMA_VERSION}"
            )
        columns = [row[1] for row in db.execute("PRAGMA table_info(requests)")]
        if columns:
            _migrate_v1(db, columns)
        for statement in _TABLES:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _migrate_v1(db: sqlite3.Connection, columns: list[str]) -> None:
    """Move the rows of the first layout (owner and batch id in full on every row) to the numbered one."""
    if "batch_id" not in columns or "owner" not in columns:
        raise RuntimeError(f"request record: unknown layout of the requests table ({', '.join(columns)})")
    db.execute("ALTER TABLE requests RENAME TO requests_v1")
    for statement in _TABLES:
        db.execute(statement)
    db.execute("INSERT OR IGNORE INTO owners (name) SELECT DISTINCT owner FROM requests_v1")
    db.execute(
        "INSERT OR IGNORE INTO batches (name)"
        " SELECT DISTINCT batch_id FROM requests_v1 WHERE batch_id IS NOT NULL"
    )
    db.execute(
        "INSERT INTO requests SELECT v.digest, v.custom_id, o.id, v.shard, v.state, b.id, v.updated"
        " FROM requests_v1 v JOIN owners o ON o.name = v.owner LEFT JOIN batches b ON b.name = v.batch_id"
    )
    db.execute("DROP TABLE requests_v1")
