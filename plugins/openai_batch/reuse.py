"""Carry succeeded results over when a file comes back with some lines added or changed.

Pure logic, no Airflow imports. :func:`openai_batch.prepare.prepare_requests` writes, next to
``order.txt``, a ``requests.idx`` with one digest per valid request (of the exact line sent: its
custom_id, url and body). When the same input path comes back with another content, a
:class:`ReuseIndex` built from the earlier content's ``requests.idx`` and ``results.jsonl`` answers
which requests are unchanged and already succeeded: those are not sent again, and their earlier
result lines are written to ``reused.jsonl`` and merged into the new results.

Memory stays flat: the index is a scratch SQLite table, queried one chunk of ids at a time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = [
    "INDEX_FILE",
    "REUSED_FILE",
    "RequestDigests",
    "ReuseIndex",
    "legacy_request_digest",
    "request_digest",
]

#: One line per valid request, aligned with ``order.txt``: ``<digest>\n`` (see :func:`request_digest`).
INDEX_FILE = "requests.idx"
#: Result lines carried over from an earlier content, in ``results.jsonl`` form.
REUSED_FILE = "reused.jsonl"

_CHUNK = 20000


def request_digest(line: bytes) -> str:
    """Return the digest of a request line as sent (custom_id, method, url and body): its SHA-256."""
    return hashlib.sha256(line.rstrip(b"\r\n")).hexdigest()


class RequestDigests(msgspec.Struct):
    """A request file's digests file (:func:`openai_batch.layout.digests_file`), a cache of the file.

    :param sha256: SHA-256 of the request file the digests are of.
    :param count: its request count (a file cut short holds fewer ids).
    :param ids: ``{custom_id: request_digest(line)}`` in the file's order.
    """

    sha256: str
    count: int
    ids: dict[str, str]


def legacy_request_digest(line: bytes) -> str:
    """Return the digest that ``requests.idx`` held before :func:`request_digest`: a 16-byte BLAKE2b.

    Its 32 hex digits tell it from the 64 of a SHA-256, so an older index is still reused.
    """
    return hashlib.blake2b(line.rstrip(b"\r\n"), digest_size=16).hexdigest()


class ReuseIndex:
    """Succeeded requests of an earlier content of a file, by custom_id and request digest.

    :param path: scratch database file (created; delete it when done).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16384"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE prev (custom_id TEXT PRIMARY KEY, digest TEXT NOT NULL, line BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        self.size = 0
        #: How the loaded index digests a request line; compare :meth:`take` input made with it.
        self.digest = request_digest

    def load(self, digests: Iterable[bytes], results: Iterable[bytes]) -> int:
        """
        Add the succeeded results of an earlier content; return how many.

        :param digests: lines of that content's ``requests.idx``.
        :param results: lines of its complete ``results.jsonl`` (same order, same count).
        :raises ValueError: when the two files do not line up.
        """
        rows: list[tuple[str, str, bytes]] = []
        digest_iter = iter(digests)
        for line in results:
            if not line.strip():
                continue
            digest = next(digest_iter, b"").strip().decode()
            if not digest:
                raise ValueError("requests.idx is shorter than results.jsonl")
            if len(digest) == 32:
                self.digest = legacy_request_digest
            record = json.loads(line)
            if record.get("status") == "succeeded":
                rows.append((record["custom_id"], digest, line if line.endswith(b"\n") else line + b"\n"))
            if len(rows) >= _CHUNK:
                self._insert(rows)
                rows = []
        if next(digest_iter, b"").strip():
            raise ValueError("requests.idx is longer than results.jsonl")
        self._insert(rows)
        return self.size

    def _insert(self, rows: list[tuple[str, str, bytes]]) -> None:
        if not rows:
            return
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO prev VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")
        self.size += len(rows)

    def take(self, requests: list[tuple[str, str]]) -> dict[str, bytes]:
        """Return ``{custom_id: earlier result line}`` for the requests that are unchanged and succeeded."""
        if not self.size or not requests:
            return {}
        wanted = dict(requests)
        found: dict[str, bytes] = {}
        ids = list(wanted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = (
                f"SELECT custom_id, digest, line FROM prev WHERE custom_id IN ({','.join('?' * len(chunk))})"
            )
            for custom_id, digest, line in self._db.execute(query, chunk):
                if wanted.get(custom_id) == digest:
                    found[custom_id] = bytes(line)
        return found

    def close(self) -> None:
        """Close and delete the scratch database."""
        self._db.close()
        self.path.unlink(missing_ok=True)
