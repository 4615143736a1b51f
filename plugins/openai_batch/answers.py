"""Opt-in cache of successful answers by request content: the same endpoint and body is paid once.

Pure logic, no Airflow imports. With the Variable ``openai_batch_reuse_identical`` set to true, a
collected round stores each successful answer under the digest of its request's method, url and
body (:func:`answer_key`; the custom_id is left out), and prepare takes a request whose key is
stored out of its shard: its answer is carried over instead of paid again, from whatever file, run
or settings it came. Off by default: model answers are not deterministic, and a user who sends the
same prompt twice may want two answers. The manifest's ``from_cache`` lists the custom_ids whose
answers came from the cache.

Only runs with the Variable on store answers, so the cache holds what was answered since it was
turned on. It lives in ``answers.sqlite`` in the ledger folder, next to the request record (see
:mod:`openai_batch.records` for why SQLite). It is only an optimisation: a file SQLite cannot read
is moved aside (kept as ``answers.sqlite.corrupt-<UTC time>``) and a new, empty cache is started.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from typing import TYPE_CHECKING, NamedTuple

from openai_batch.records import connect_shared, local_ledger

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = [
    "ANSWERS_FILE",
    "CACHED_FILE",
    "REUSE_IDENTICAL_VARIABLE",
    "AnswerCache",
    "Cached",
    "answer_key",
    "cache_for",
    "reuse_identical",
]

#: The cache's file name inside the ledger folder.
ANSWERS_FILE = "answers.sqlite"
#: Result lines (``results.jsonl`` form) of a state folder's requests answered from the cache.
CACHED_FILE = "cached.jsonl"
#: The Variable that turns the cache on.
REUSE_IDENTICAL_VARIABLE = "openai_batch_reuse_identical"

_CHUNK = 500
_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY, response BLOB NOT NULL, batch_id TEXT NOT NULL, source TEXT NOT NULL,
    stored REAL NOT NULL) WITHOUT ROWID"""
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"", "false", "0", "no", "off", "none"})


def reuse_identical(value: object) -> bool:
    """Return the Variable's setting: true/false (also 1/0, yes/no, on/off); empty is off.

    :raises ValueError: for anything else, naming the Variable.
    """
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"Variable {REUSE_IDENTICAL_VARIABLE} must be true or false, not {str(value)[:40]!r}")


def answer_key(line: bytes) -> str:
    """Return the cache key of a request line as sent: SHA-256 of its method, url and body.

    The body is serialised with sorted keys, so the same request written with its fields in
    another order has the same key; the custom_id is not part of it.
    """
    obj = json.loads(line)
    canonical = json.dumps(
        [obj.get("method"), obj.get("url"), obj.get("body")],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class Cached(NamedTuple):
    """A stored answer: the response body as the endpoint gave it, its batch and where it came from."""

    response: bytes
    batch_id: str
    source: str


def cache_for(ledger_dir: str | None) -> AnswerCache | None:
    """Return the cache in the local ledger folder, or None without one (object storage: no cache)."""
    folder = local_ledger(ledger_dir)
    return None if folder is None else AnswerCache(folder / ANSWERS_FILE)


class AnswerCache:
    """The cache in ``path`` (created on first use). Each method is its own transaction(s).

    :param path: the SQLite file.
    :param busy_timeout: seconds a write waits for another process's write to end.
    """

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        #: Where an unreadable cache file was moved, once that happened.
        self.set_aside: Path | None = None

    def _open(self) -> sqlite3.Connection:
        db = connect_shared(self.path, self.busy_timeout, _SCHEMA)
        db.execute("SELECT count(*) FROM (SELECT 1 FROM answers LIMIT 1)").fetchone()
        return db

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError:
            # Not a database (a torn or foreign file): keep it for a person, start empty.
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            self.path.replace(self.set_aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            return self._open()

    def store(self, answers: Iterable[tuple[str, bytes, str, str]]) -> int:
        """Store ``(key, response body, batch_id, source)`` answers; the first one of a key stays."""
        rows = [
            (bytes.fromhex(key), body, batch_id, source, time.time())
            for key, body, batch_id, source in answers
        ]
        if not rows:
            return 0
        db = self._connect()
        try:
            stored = 0
            for start in range(0, len(rows), _CHUNK):
                db.execute("BEGIN IMMEDIATE")
                cur = db.executemany(
                    "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?)", rows[start : start + _CHUNK]
                )
                stored += cur.rowcount
                db.execute("COMMIT")
            return stored
        finally:
            db.close()

    def lookup(self, keys: Sequence[str]) -> dict[str, Cached]:
        """Return the stored answers among ``keys`` (read only)."""
        found: dict[str, Cached] = {}
        if not keys:
            return found
        db = self._connect()
        try:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT key, response, batch_id, source FROM answers WHERE key IN ({marks})",
                    [bytes.fromhex(k) for k in chunk],
                ).fetchall()
                for key, body, batch_id, source in rows:
                    found[bytes(key).hex()] = Cached(bytes(body), batch_id, source)
        finally:
            db.close()
        return found
