"""
Batch webhooks: what the receiver records, and how waiting triggers learn of it.

OpenAI posts an event when a batch ends (``batch.completed``, ``batch.failed``, ``batch.expired``,
``batch.cancelled``), signed with the endpoint's secret as Standard Webhooks specifies. The
receiver (a route of the plugin's app on the API server, see :mod:`openai_batch.ui.app`) calls
:func:`receive`: the SDK checks the signature and the timestamp, each ``webhook-id`` is taken once,
and a batch's end is recorded as one small file in the deployment's ledger folder, which the API
server, the triggerer and the workers share. The triggers of one triggerer share one reader of
that folder (:func:`shared_ended_batches`), so a wait learns of its batch's end within seconds,
without a status call; status polling stays as the net for a lost delivery.

Layout under ``<ledger>/webhooks/``: ``events/<batch_id>`` (one per ended batch, kept
``EVENT_KEEP_SECONDS``), ``seen/<sha256 of webhook-id>`` (kept while a replay could still pass
the timestamp check) and ``counts.json`` (deliveries by outcome, updated under a file lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openai_batch.storage import check_batch_id, fsync_dir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

#: Folder under the ledger folder that holds what the receiver records.
WEBHOOKS_FOLDER = "webhooks"
#: Largest delivery accepted; OpenAI's batch events are about 200 bytes.
MAX_BODY_BYTES = 64 * 1024
#: A delivery whose ``webhook-timestamp`` is further than this from now is refused (the SDK's default).
TOLERANCE_SECONDS = 300
#: A delivery id is remembered as long as a replay of it could pass the timestamp check, and a minute.
SEEN_KEEP_SECONDS = 2 * TOLERANCE_SECONDS + 60
#: An ended batch's record is kept this long: a wait that starts later finds it at once.
EVENT_KEEP_SECONDS = 2 * 86400
#: Seconds between two readings of the recorded events by a triggerer.
EVENT_CHECK_SECONDS = 1.0
#: Seconds between two clean-ups of old records (by the receiver and by each reader).
PRUNE_EVERY_SECONDS = 600.0

#: The events that end a batch; any other event is answered 200 and ignored.
BATCH_END_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})

#: Every outcome :func:`receive` counts. ``recorded`` and ``ignored`` are answered 2xx, the rest refused.
OUTCOMES = (
    "recorded",
    "ignored",
    "unconfigured",
    "oversized",
    "unsigned",
    "stale",
    "forged",
    "replayed",
    "malformed",
)

_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def webhooks_folder(ledger_folder: str | None) -> Path | None:
    """Return ``<ledger>/webhooks`` when the ledger is a local folder, else None (no webhooks)."""
    from openai_batch.budget import ledger_for

    ledger = ledger_for(ledger_folder)
    return None if ledger is None else ledger.folder / WEBHOOKS_FOLDER


@dataclass(frozen=True)
class Verdict:
    """
    What the receiver answers and why.

    :param status: The HTTP status of the answer.
    :param outcome: One of ``OUTCOMES``.
    :param batch_id: The ended batch recorded, if any.
    """

    status: int
    outcome: str
    batch_id: str | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The answer's JSON: the outcome only (never what was sent)."""
        return {"outcome": self.outcome}


class EventStore:
    """
    The recorded batch ends, the delivery ids taken and the counts, in one local folder.

    :param folder: ``<ledger>/webhooks`` (see :func:`webhooks_folder`).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events = folder / "events"
        self.seen = folder / "seen"

    def _ensure(self) -> None:
        self.events.mkdir(parents=True, exist_ok=True)
        self.seen.mkdir(parents=True, exist_ok=True)

    def take_delivery(self, webhook_id: str, now: float | None = None) -> bool:
        """Return True the first time ``webhook_id`` is taken, False for a replay; atomic across processes."""
        self._ensure()
        name = hashlib.sha256(webhook_id.encode()).hexdigest()
        try:
            fd = os.open(self.seen / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, str(now if now is not None else time.time()).encode())
        finally:
            os.close(fd)
        return True

    def record_end(self, batch_id: str, event_type: str, event_id: str, now: float | None = None) -> None:
        """Record that ``batch_id`` ended, durably (written to a temporary file, synced, renamed)."""
        check_batch_id(batch_id)
        self._ensure()
        record = {"batch_id": batch_id, "type": event_type, "event_id": event_id, "received_at": now}
        target = self.events / batch_id
        tmp = self.events / f".{batch_id}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            out.write(json.dumps(record).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(self.events)

    def ended(self) -> set[str]:
        """Return the ids of every batch recorded as ended (one directory listing)."""
        try:
            with os.scandir(self.events) as entries:
                return {e.name for e in entries if not e.name.startswith(".")}
        except FileNotFoundError:
            return set()

    def count(self, outcome: str) -> None:
        """Add one delivery to ``outcome``'s count."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "counts.json"
        with open(self.folder / "counts.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                counts = self._read_counts(path)
                counts[outcome] = counts.get(outcome, 0) + 1
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(counts, sort_keys=True))
                os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def counts(self) -> dict[str, int]:
        """Return the deliveries counted by outcome."""
        return self._read_counts(self.folder / "counts.json")

    @staticmethod
    def _read_counts(path: Path) -> dict[str, int]:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(value, dict):
            return {}
        return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}

    def prune(self, now: float | None = None) -> int:
        """Delete delivery ids and batch ends older than they are needed; return how many went."""
        now = time.time() if now is None else now
        removed = 0
        for folder, keep in ((self.seen, SEEN_KEEP_SECONDS), (self.events, EVENT_KEEP_SECONDS)):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > keep:
                        os.unlink(entry.path)
                        removed += 1
        return removed


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value if value else None


def _verify(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """Return whether the SDK finds the signature good (its own check, not a copy of it)."""
    import openai

    try:
        _verifier().webhooks.verify_signature(body, dict(headers), secret=secret, tolerance=TOLERANCE_SECONDS)
    except openai.InvalidWebhookSignatureError:
        return False
    except (ValueError, TypeError, UnicodeDecodeError):  # a malformed secret or a body that is not UTF-8
        return False
    return True


_VERIFIER: Any = None


def _verifier() -> Any:
    """One SDK client, used only for ``webhooks.verify_signature`` (it sends nothing)."""
    global _VERIFIER
    if _VERIFIER is None:
        import openai

        _VERIFIER = openai.OpenAI(api_key="webhook-verification-only", base_url="http://127.0.0.1:9/")
    return _VERIFIER


def receive(
    store: EventStore | None,
    body: bytes,
    headers: Mapping[str, str],
    secret: str | None,
    now: float | None = None,
) -> Verdict:
    """
    Decide on one delivery: check it, take its id once, record a batch's end; never raise.

    Refused: no secret configured (503), a body over ``MAX_BODY_BYTES`` (413), missing signature
    headers (401), a timestamp outside ``TOLERANCE_SECONDS`` (401), a bad signature (401), a
    delivery id already taken (409), a signed body that is not an event (400). The signature is
    checked before the id is taken, so a forged delivery cannot use up a real one's id.

    :param store: Where to record, or None when the deployment has no local ledger folder.
    :param body: The raw request body (at most ``MAX_BODY_BYTES`` + 1 bytes are needed).
    :param headers: The request headers, names in lower case.
    :param secret: The endpoint's signing secret (``whsec_...``), or None when not configured.
    """
    now = time.time() if now is None else now
    if secret is None or store is None:
        return Verdict(503, "unconfigured")
    if len(body) > MAX_BODY_BYTES:
        return Verdict(413, "oversized")
    if any(_header(headers, name) is None for name in _SIGNATURE_HEADERS):
        return Verdict(401, "unsigned")
    try:
        sent_at = int(str(_header(headers, "webhook-timestamp")))
    except ValueError:
        return Verdict(401, "unsigned")
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        return Verdict(401, "stale")
    if not _verify(body, headers, secret):
        return Verdict(401, "forged")
    if not store.take_delivery(str(_header(headers, "webhook-id")), now):
        return Verdict(409, "replayed")
    try:
        event = json.loads(body)
        event_type, data = event["type"], event.get("data") or {}
        batch_id = data.get("id") if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        return Verdict(400, "malformed")
    if event_type not in BATCH_END_EVENTS:
        return Verdict(200, "ignored")
    try:
        store.record_end(str(batch_id), str(event_type), str(event.get("id")), now)
    except ValueError:  # a batch id that is not one (checked before it names a file)
        return Verdict(400, "malformed")
    return Verdict(200, "recorded", str(batch_id))


@dataclass
class _Reader:
    store: EventStore
    interval: float
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    users: int = 0
    task: asyncio.Task[None] | None = None
    readings: int = 0


class EndedBatches:
    """
    The recorded batch ends as one triggerer sees them: one reading per interval, shared by every wait.

    Build it with :func:`shared_ended_batches`.
    """

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader

    @property
    def readings(self) -> int:
        """How many times the folder was read."""
        return self._reader.readings

    def watch(self, batch_id: str) -> asyncio.Event:
        """Return an event that is set once ``batch_id`` is recorded as ended."""
        return self._reader.waiters.setdefault(batch_id, asyncio.Event())

    def unwatch(self, batch_id: str) -> None:
        """Stop watching ``batch_id``."""
        self._reader.waiters.pop(batch_id, None)


async def _read_forever(reader: _Reader) -> None:
    last_prune = 0.0
    while True:
        if reader.waiters:
            try:
                ended = await asyncio.to_thread(reader.store.ended)
                reader.readings += 1
            except OSError as err:  # the net polls on; say why the fast path is off
                log.warning("Cannot read webhook events in %s: %s", reader.store.events, err)
                ended = set()
            for batch_id in ended.intersection(reader.waiters):
                reader.waiters[batch_id].set()
            if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                last_prune = time.monotonic()
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(reader.store.prune)
        await asyncio.sleep(reader.interval)


#: Readers shared per event loop and folder; a reader goes away with its last user.
_READERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Reader]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def shared_ended_batches(folder: str, interval: float | None = None) -> AsyncIterator[EndedBatches]:
    """
    Yield the reader of ``folder``'s recorded events shared by every user on the running loop.

    :param folder: ``<ledger>/webhooks``.
    :param interval: Seconds between two readings (``EVENT_CHECK_SECONDS`` when None).
    """
    readers = _READERS.setdefault(asyncio.get_running_loop(), {})
    reader = readers.get(folder)
    if reader is None or reader.task is None or reader.task.done():
        every = EVENT_CHECK_SECONDS if interval is None else interval
        reader = readers[folder] = _Reader(EventStore(Path(folder)), every)
        reader.task = asyncio.create_task(_read_forever(reader))
    reader.users += 1
    try:
        yield EndedBatches(reader)
    finally:
        reader.users -= 1
        if reader.users == 0:
            if readers.get(folder) is reader:
                del readers[folder]
            if reader.task is not None:
                reader.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader.task
