"""Persistent state of message batches: records in SQLite, each batch's requests and results on disk."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

from openai_emulator.anthropic_models import MessageBatchRecord


class MessageBatchStore:
    """Message batches under one data directory; safe to use from several threads.

    :param data_dir: the emulator's data directory; this store keeps ``message_batches.sqlite3`` and
        ``message_batches/<id>/{requests,results}.jsonl`` in it, apart from the OpenAI state.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "message_batches"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            Path(data_dir) / "message_batches.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS message_batches (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL)"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def batch_dir(self, batch_id: str) -> Path:
        """Return the directory holding a batch's ``requests.jsonl`` and ``results.jsonl``."""
        return self.root / batch_id

    def requests_path(self, batch_id: str) -> Path:
        """Return where a batch's requests live, one ``{"custom_id", "params"}`` per line."""
        return self.batch_dir(batch_id) / "requests.jsonl"

    def results_path(self, batch_id: str) -> Path:
        """Return where a batch's result lines live."""
        return self.batch_dir(batch_id) / "results.jsonl"

    def put(self, record: MessageBatchRecord) -> None:
        """Insert or replace a batch record."""
        with self._lock:
            self._db.execute(
                "INSERT INTO message_batches (id, status, data) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET status=excluded.status, data=excluded.data",
                (record.id, record.processing_status, json.dumps(record.to_json())),
            )

    def get(self, batch_id: str) -> MessageBatchRecord | None:
        """Return a batch record, or None."""
        with self._lock:
            row = self._db.execute("SELECT data FROM message_batches WHERE id = ?", (batch_id,)).fetchone()
        return MessageBatchRecord.from_json(json.loads(row[0])) if row else None

    def delete(self, batch_id: str) -> bool:
        """Delete a batch record and its files; return whether it existed."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM message_batches WHERE id = ?", (batch_id,))
        shutil.rmtree(self.batch_dir(batch_id), ignore_errors=True)
        return cursor.rowcount > 0

    def page(
        self, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[MessageBatchRecord], bool]:
        """Return one page of batches, newest first, and whether more follow in the paging direction.

        ``after_id`` pages towards older batches (the ones listed after it); ``before_id`` returns the
        ``limit`` batches listed just before it (newer ones), still newest first.
        """
        with self._lock:
            if before_id is not None:
                rows = self._db.execute(
                    "SELECT data FROM message_batches"
                    " WHERE seq > COALESCE((SELECT seq FROM message_batches WHERE id = ?), ?)"
                    " ORDER BY seq ASC LIMIT ?",
                    (before_id, 2**62, limit + 1),
                ).fetchall()
                rows = rows[:limit][::-1] + rows[limit:]
            elif after_id is not None:
                rows = self._db.execute(
                    "SELECT data FROM message_batches"
                    " WHERE seq < COALESCE((SELECT seq FROM message_batches WHERE id = ?), ?)"
                    " ORDER BY seq DESC LIMIT ?",
                    (after_id, -1, limit + 1),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT data FROM message_batches ORDER BY seq DESC LIMIT ?", (limit + 1,)
                ).fetchall()
        records = [MessageBatchRecord.from_json(json.loads(r[0])) for r in rows[:limit]]
        return records, len(rows) > limit

    def active_ids(self) -> list[str]:
        """Return the id of every batch whose processing has not ended, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM message_batches WHERE status != 'ended' ORDER BY seq"
            ).fetchall()
        return [str(r[0]) for r in rows]
