"""Persistent state: raw file bytes on disk and file/batch records in SQLite."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from openai_emulator.models import TERMINAL_STATUSES, BatchRecord, FileRecord


class Store:
    """All state under one data directory; safe to use from several threads.

    :param data_dir: directory holding ``files/``, ``batches/`` and ``emulator.sqlite3``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.files_dir = self.root / "files"
        self.work_dir = self.root / "batches"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.root / "emulator.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT UNIQUE NOT NULL, purpose TEXT NOT NULL, data TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL)"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # Files

    def file_path(self, file_id: str) -> Path:
        """Return where the bytes of a file live."""
        return self.files_dir / file_id

    def put_file(self, record: FileRecord) -> None:
        """Insert or replace a file record."""
        with self._lock:
            self._db.execute(
                "INSERT INTO files (id, purpose, data) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET purpose=excluded.purpose, data=excluded.data",
                (record.id, record.purpose, json.dumps(record.to_json())),
            )

    def get_file(self, file_id: str) -> FileRecord | None:
        """Return a file record, or None."""
        with self._lock:
            row = self._db.execute("SELECT data FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRecord.from_json(json.loads(row[0])) if row else None

    def delete_file(self, file_id: str) -> bool:
        """Delete a file record and its bytes; return whether it existed."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)
        return cursor.rowcount > 0

    def list_files(
        self, purpose: str | None, limit: int, ascending: bool, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Return one page of files and whether more follow."""
        clauses: list[str] = []
        params: list[str | int] = []
        if purpose:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after:
            op = ">" if ascending else "<"
            clauses.append(f"seq {op} COALESCE((SELECT seq FROM files WHERE id = ?), ?)")
            params.extend([after, -1 if ascending else 2**62])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if ascending else "DESC"
        sql = f"SELECT data FROM files {where} ORDER BY seq {order} LIMIT ?"  # noqa: S608 - fixed fragments
        with self._lock:
            rows = self._db.execute(sql, (*params, limit + 1)).fetchall()
        records = [FileRecord.from_json(json.loads(r[0])) for r in rows]
        return records[:limit], len(records) > limit

    # Batches

    def batch_dir(self, batch_id: str) -> Path:
        """Return the working directory of a batch (partial output and error files)."""
        return self.work_dir / batch_id

    def put_batch(self, record: BatchRecord) -> None:
        """Insert or replace a batch record."""
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, status, data) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET status=excluded.status, data=excluded.data",
                (record.id, record.status, json.dumps(record.to_json())),
            )

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """Return a batch record, or None."""
        with self._lock:
            row = self._db.execute("SELECT data FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return BatchRecord.from_json(json.loads(row[0])) if row else None

    def list_batches(self, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Return one page of batches, newest first, and whether more follow."""
        with self._lock:
            if after:
                rows = self._db.execute(
                    "SELECT data FROM batches WHERE seq < COALESCE((SELECT seq FROM batches WHERE id = ?), ?)"
                    " ORDER BY seq DESC LIMIT ?",
                    (after, 2**62, limit + 1),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT data FROM batches ORDER BY seq DESC LIMIT ?", (limit + 1,)
                ).fetchall()
        records = [BatchRecord.from_json(json.loads(r[0])) for r in rows]
        return records[:limit], len(records) > limit

    def count_active(self) -> int:
        """Return how many batches are not in a terminal status (validating, in progress, finalizing...)."""
        marks = ",".join("?" for _ in TERMINAL_STATUSES)
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM batches WHERE status NOT IN ({marks})",  # noqa: S608
                tuple(TERMINAL_STATUSES),
            ).fetchone()
        return int(row[0])

    def _active(self, column: str) -> list[Any]:
        """Return ``column`` (``id`` or ``data``) of every batch not in a terminal status, oldest first."""
        marks = ",".join("?" for _ in TERMINAL_STATUSES)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column} FROM batches WHERE status NOT IN ({marks}) ORDER BY seq",  # noqa: S608
                tuple(TERMINAL_STATUSES),
            ).fetchall()
        return [r[0] for r in rows]

    def active_batch_ids(self) -> list[str]:
        """Return the id of every batch that is not in a terminal status, oldest first (no record decoded)."""
        return [str(i) for i in self._active("id")]

    def active_batches(self) -> list[BatchRecord]:
        """Return every batch that is not in a terminal status, oldest first."""
        return [BatchRecord.from_json(json.loads(d)) for d in self._active("data")]


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
