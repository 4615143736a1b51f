"""The inbox watcher: the trigger behind the inbox asset, which starts a run for each file that lands.

Kept apart from :mod:`openai_batch.triggers` so that the DAG file, which names it in the inbox
asset, imports no API client when it is parsed.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FILES_PER_EVENT", "MAX_PER_LOOK", "InboxArrivalTrigger"]


#: Most files announced by one listing (an inbox of 100,000 new files is announced over 20 listings;
#: a run takes 1,000 at most anyway).
MAX_PER_LOOK = 5000

#: Most files named in one arrival event (an asset event's extra is stored in the metadata database).
FILES_PER_EVENT = 500


class InboxArrivalTrigger(BaseEventTrigger):
    """
    Watch the inbox and announce every file that lands and settles there: the inbox asset's watcher.

    Every ``poll_interval`` seconds the inbox (its root and every folder below it, see
    :func:`openai_batch.storage.walk_inbox`) is listed in a worker thread; each input file that has
    not changed for ``settle_seconds`` and is due in the arrival record
    (:func:`openai_batch.arrivals.is_due`: new, changed, or its announcement went stale) is
    announced: recorded, then named in an event (up to :data:`FILES_PER_EVENT` per event). Airflow
    turns each event into an event of the inbox asset, which starts a run of the DAG that takes
    exactly the files it names. The inbox and the ledger are read from the deployment's Variables
    at each listing, so a change in the UI takes effect without a restart.

    :param poll_interval: Seconds between two listings.
    :param settle_seconds: How long a file must stay unchanged before it is announced.
    :param inbox: The inbox; None: the Variable ``openai_batch_inbox`` (or its default).
    :param ledger_dir: The ledger folder holding the arrival record; None: from the Variables.
    """

    def __init__(
        self,
        poll_interval: float = 10.0,
        settle_seconds: float = 30.0,
        inbox: str | None = None,
        ledger_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.settle_seconds = settle_seconds
        self.inbox = inbox
        self.ledger_dir = ledger_dir

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "poll_interval": self.poll_interval,
                "settle_seconds": self.settle_seconds,
                "inbox": self.inbox,
                "ledger_dir": self.ledger_dir,
            },
        )

    def _where(self) -> tuple[str, str, bool]:
        """Return the inbox, the ledger folder and whether to watch (blocking: Variables are read
        through the API server)."""
        from openai_batch import settings

        def get(key: str) -> str | None:
            from airflow.sdk import Variable

            try:
                found = Variable.get(key, default=None)
            except Exception:  # the API server is restarting: use the defaults this time
                return None
            return None if found is None else str(found)

        inbox = self.inbox or settings.value(settings.INBOX, get)
        return (
            inbox,
            self.ledger_dir or settings.ledger_folder(get),
            settings.is_on(settings.WATCH_INBOX, get),
        )

    def look(
        self, announced: dict[str, tuple[int, int, int]], now: float | None = None
    ) -> list[dict[str, Any]]:
        """
        List the inbox once and return the files to announce, recorded as announced (blocking).

        ``announced`` keeps what this trigger announced (source: stat identity) for when there is no
        arrival record (an object-storage ledger); it is updated in place.
        """
        from openai_batch.arrivals import FileStat, arrivals_for, is_due
        from openai_batch.storage import walk_inbox

        now = time.time() if now is None else now
        inbox, ledger_dir, watching = self._where()
        if not watching:  # the Variable openai_batch_watch_inbox is false
            return []
        record = arrivals_for(ledger_dir)
        known = record.snapshot() if record is not None else {}
        due: list[dict[str, Any]] = []
        stats: list[FileStat] = []
        seen: set[str] = set()
        for found in walk_inbox(inbox, now, float(self.settle_seconds)):
            stat = FileStat(found["source"], found["size"], found["mtime_ns"], found["ino"])
            if stat.source in seen:  # a link to a file of the inbox: the file itself is listed too
                continue
            seen.add(stat.source)
            if record is None:
                if announced.get(stat.source) == stat.key():
                    continue
            elif not is_due(stat, known.get(stat.source), now):
                continue
            announced[stat.source] = stat.key()
            due.append({k: found[k] for k in ("source", "key", "root", "size", "mtime")})
            stats.append(stat)
            if len(due) >= MAX_PER_LOOK:  # the rest at the next listings: memory stays bounded
                break
        if record is not None and stats:
            record.mark(stats, "announced", now)
        return due

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Announce new settled files for ever, one listing every ``poll_interval`` seconds."""
        announced: dict[str, tuple[int, int, int]] = {}
        while True:
            try:
                due = await asyncio.to_thread(self.look, announced)
            except Exception as err:  # a listing that failed is tried again at the next interval
                self.log.warning("Listing the inbox failed: %s", err)
                due = []
            for start in range(0, len(due), FILES_PER_EVENT):
                files = due[start : start + FILES_PER_EVENT]
                self.log.info("Announcing %s new file(s): %s", len(files), [f["key"] for f in files[:20]])
                yield TriggerEvent({"status": "arrived", "files": files})
            await asyncio.sleep(float(self.poll_interval))
