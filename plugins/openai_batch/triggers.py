"""Async triggers: wait for a batch, and wait for input files, without blocking the triggerer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import openai
from airflow.triggers.base import BaseTrigger, TriggerEvent

from openai_batch.hooks import OpenAIBatchHook
from openai_batch.poller import BatchNotFoundError, BatchPollError, PollSettings, shared_poller
from openai_batch.retry import MAX_POLL_ERRORS
from openai_batch.secrets import redact
from openai_batch.status import is_terminal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from openai import AsyncOpenAI

    from openai_batch.anthropic_hook import AnthropicBatchHook
    from openai_batch.budget import Ledger
    from openai_batch.payloads import BatchEndEvent
    from openai_batch.webhooks import EndedBatches


def batch_summary(batch: dict[str, Any]) -> BatchEndEvent:
    """Return the fields of a batch (as the API's JSON) that callers need after it ends."""
    errors = (batch.get("errors") or {}).get("data") or []
    return {
        "batch_id": batch["id"],
        "status": batch["status"],
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "request_counts": batch.get("request_counts"),
        "usage": batch.get("usage"),
        "errors": [
            {k: e.get(k) for k in ("code", "message", "param", "line")} for e in errors if isinstance(e, dict)
        ],
    }


async def _sdk_get_batch(client: AsyncOpenAI, batch_id: str) -> dict[str, Any]:
    """Return a batch's JSON through the SDK's client, with its errors mapped as the poller maps them."""
    try:
        # The raw JSON, not the SDK's model: building models costs CPU on a busy triggerer.
        raw = await client.batches.with_raw_response.retrieve(batch_id)
    except openai.NotFoundError as err:
        raise BatchNotFoundError(err.message, 404) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
        # A refused key: the server's text may quote part of it, so only the status and code are kept.
        message = f"batch {batch_id}: HTTP {err.status_code} (code {err.code or 'unknown'})"
        raise BatchPollError(message, err.status_code) from None
    except openai.APIStatusError as err:
        message = redact(f"batch {batch_id}: HTTP {err.status_code}: {err.message}")
        raise BatchPollError(message, err.status_code) from None
    except (openai.APIError, openai.APIConnectionError) as err:
        raise BatchPollError(f"polling batch {batch_id} failed: {type(err).__name__}") from None
    batch: dict[str, Any] = json.loads(raw.content)
    return batch


#: A trigger that can fire at once (a recorded webhook, free capacity, a file's finished waits) never
#: fires sooner than this after it starts. One that fires while the scheduler has not yet seen the
#: deferring task's process exit makes Airflow fail the resumed try ("finished with state success,
#: but the task instance's state attribute is queued") and retry it after its retry delay.
MIN_FIRE_AFTER_DEFERRAL = 10.0

#: Seconds before a batch whose end was announced by its webhook, but not yet shown by the API, is read again.
RECHECK_AFTER_EVENT = 5.0


class _Waiter:
    """
    One wait's next status: from the shared net after ``delay``, or at once when its webhook comes.

    :param get_now: Reads the batch at once (one call).
    :param poll: Reads the batch after a delay (a shared round, or a sleep and one call).
    :param ended: The triggerer's reader of recorded batch ends, or None without webhooks.
    :param batch_id: The batch.
    """

    def __init__(
        self,
        get_now: Callable[[], Awaitable[dict[str, Any]]],
        poll: Callable[[float], Awaitable[dict[str, Any]]],
        ended: EndedBatches | None,
        batch_id: str,
    ) -> None:
        self.get_now = get_now
        self.poll = poll
        self.ended = ended
        self.batch_id = batch_id
        self.signal = ended.watch(batch_id) if ended is not None else None
        self.woken = False
        self.started = time.monotonic()

    async def next(self, delay: float) -> dict[str, Any]:
        """Return the batch's next status."""
        if self.signal is None or self.woken:
            return await self.poll(delay)
        polled = asyncio.ensure_future(self.poll(delay))
        signalled = asyncio.ensure_future(self.signal.wait())
        try:
            await asyncio.wait({polled, signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            if not polled.done():
                polled.cancel()
        if polled.done() and not polled.cancelled():
            return polled.result()
        # Its end was recorded: read it once (the event says only that it ended, not how); an end
        # recorded before the wait started is acted on once the deferral has surely settled.
        self.woken = True
        await asyncio.sleep(max(0.0, self.started + MIN_FIRE_AFTER_DEFERRAL - time.monotonic()))
        return await self.get_now()

    def close(self) -> None:
        """Stop watching for the batch's end."""
        if self.ended is not None:
            self.ended.unwatch(self.batch_id)


class OpenAIBatchTrigger(BaseTrigger):
    """
    Wait until a batch ends, then yield one event: woken by its webhook, with status polling as the net.

    Every call is awaited on the event loop (no sync HTTP, no threads), so one triggerer can watch
    thousands of batches. With ``events_dir``, the wait learns of its batch's end from the webhook
    receiver's record within seconds (one shared reading of that folder per triggerer) and reads
    the batch once. Status polls go through ``BatchStatusPoller``: the waits of one triggerer share
    rounds (one listing of recent batches answers every wait found in it, see
    ``openai_batch.poller``), so ``poll_interval`` can be long when webhooks are on; cancelling uses
    the SDK's client. A few consecutive polling errors are tolerated. When ``end_time`` passes,
    the batch is cancelled (if ``cancel_on_timeout``) and a ``timeout`` event is yielded. When a
    user kills, fails or clears the deferred task, ``on_kill`` cancels the batch (if ``cancel_on_kill``).

    :param conn_id: The OpenAI connection id.
    :param batch_id: The batch to watch.
    :param poll_interval: Seconds between two polls.
    :param end_time: Epoch seconds after which the wait gives up, or None to wait until the batch ends.
    :param max_poll_errors: Consecutive polling errors tolerated before an ``error`` event.
    :param cancel_on_kill: Cancel the batch when the deferred task is killed by a user.
    :param cancel_on_timeout: Cancel the batch when ``end_time`` passes.
    :param events_dir: The folder where the webhook receiver records batch ends
        (``<ledger>/webhooks``, see :mod:`openai_batch.webhooks`), or None to rely on polling alone.
    :param provider: The connection's provider (``openai`` or ``anthropic``, see
        :mod:`openai_batch.providers`); Anthropic's batches are read through its SDK and translated.
    """

    def __init__(
        self,
        conn_id: str,
        batch_id: str,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        max_poll_errors: int = MAX_POLL_ERRORS,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        events_dir: str | None = None,
        provider: str = "openai",
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.provider = provider
        self.batch_id = batch_id
        self.events_dir = events_dir
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.max_poll_errors = max_poll_errors
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "batch_id": self.batch_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_poll_errors": self.max_poll_errors,
                "cancel_on_kill": self.cancel_on_kill,
                "cancel_on_timeout": self.cancel_on_timeout,
                "events_dir": self.events_dir,
                "provider": self.provider,
            },
        )

    def _anthropic_hook(self) -> AnthropicBatchHook:
        from openai_batch.anthropic_hook import AnthropicBatchHook

        return AnthropicBatchHook(conn_id=self.conn_id, max_retries=1, timeout=60.0)

    def _hook(self) -> OpenAIBatchHook:
        # Few SDK retries: the poll loop itself tolerates errors and keeps its own cadence.
        return OpenAIBatchHook(conn_id=self.conn_id, max_retries=1, timeout=60.0)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait until the batch ends (woken by its webhook, or by the shared status net), then yield."""
        async with contextlib.AsyncExitStack() as stack:
            ended = None
            if self.events_dir:
                from openai_batch.webhooks import shared_ended_batches

                ended = await stack.enter_async_context(shared_ended_batches(self.events_dir))
            if self.provider == "anthropic":
                anthropic_hook = self._anthropic_hook()

                async def get_anthropic() -> dict[str, Any]:
                    return await anthropic_hook.aget_batch_json(self.batch_id)

                async def poll_anthropic(delay: float) -> dict[str, Any]:
                    await asyncio.sleep(delay)
                    return await get_anthropic()

                waiter = _Waiter(get_anthropic, poll_anthropic, ended, self.batch_id)
                try:
                    async for event in self._poll(waiter):
                        yield event
                finally:
                    waiter.close()
                return
            hook = self._hook()
            settings = PollSettings.from_client_kwargs(await hook.async_client_kwargs())
            if settings is None:
                # A connection the lean poller cannot honour (workload identity, a custom HTTP client).
                client = await hook.shared_async_client()

                async def get_with_sdk() -> dict[str, Any]:
                    return await _sdk_get_batch(client, self.batch_id)

                async def poll_with_sdk(delay: float) -> dict[str, Any]:
                    await asyncio.sleep(delay)
                    return await get_with_sdk()

                waiter = _Waiter(get_with_sdk, poll_with_sdk, ended, self.batch_id)
            else:
                poller = await stack.enter_async_context(shared_poller(settings))

                async def get_now() -> dict[str, Any]:
                    return await poller.get_batch(self.batch_id)

                async def poll_shared(delay: float) -> dict[str, Any]:
                    return await poller.status_after(self.batch_id, delay)

                waiter = _Waiter(get_now, poll_shared, ended, self.batch_id)
            try:
                async for event in self._poll(waiter):
                    yield event
            finally:
                waiter.close()

    async def _poll(self, waiter: _Waiter) -> AsyncIterator[TriggerEvent]:
        errors = 0
        # The task checked the batch right before deferring, so the first poll comes about one
        # interval later (between a half and one: shared rounds answer every wait whose window is open).
        delay = self.poll_interval
        while True:
            try:
                batch = await waiter.next(delay)
                errors = 0
            except BatchNotFoundError as err:
                yield TriggerEvent(self._error_event(f"batch {self.batch_id} not found: {err}"))
                return
            except BatchPollError as err:
                errors += 1
                self.log.warning(
                    "Polling batch %s failed (%s of %s tolerated): %s",
                    self.batch_id,
                    errors,
                    self.max_poll_errors,
                    err,
                )
                if errors > self.max_poll_errors:
                    yield TriggerEvent(self._error_event(f"polling failed {errors} times in a row: {err}"))
                    return
            else:
                if str(batch.get("id")) != self.batch_id:  # trust nothing: the answer must be this batch
                    wrong = f"asked for batch {self.batch_id}, got {batch.get('id')!r}"
                    yield TriggerEvent(self._error_event(wrong))
                    return
                await self._on_poll(batch)
                if is_terminal(batch["status"]):
                    yield TriggerEvent(batch_summary(batch))
                    return
                # Not kept through the wait: a thousand waits holding their last answer for an
                # interval push those objects into the oldest GC generation, and the triggerer's
                # loop stops for every full collection they bring on.
                del batch
            if self.end_time is not None and time.time() >= self.end_time:
                yield TriggerEvent(await self._timeout_event())
                return
            # After its webhook (the API did not show the end yet) look again soon, not an interval later.
            delay = min(self.poll_interval, RECHECK_AFTER_EVENT) if waiter.woken else self.poll_interval
            if self.end_time is not None:
                delay = max(0.0, min(delay, self.end_time - time.time()))

    async def _on_poll(self, batch: dict[str, Any]) -> None:
        """Do what each poll's answer calls for besides the decision: here, log the progress."""
        self._log_progress(batch)

    def _log_progress(self, batch: dict[str, Any]) -> None:
        counts = batch.get("request_counts") or {}
        done, failed, total = counts.get("completed", 0), counts.get("failed", 0), counts.get("total", 0)
        self.log.info(
            "Batch %s is %s: %s/%s done, %s failed (%.0f%%)",
            batch["id"],
            batch["status"],
            done,
            total,
            failed,
            100.0 * (done + failed) / total if total else 0.0,
        )

    def _error_event(self, message: str) -> BatchEndEvent:
        return {"batch_id": self.batch_id, "status": "error", "message": message}

    async def _timeout_event(self) -> BatchEndEvent:
        message = f"batch {self.batch_id} did not finish before the wait's timeout"
        if self.cancel_on_timeout:
            await self._cancel_batch()
            message += "; it was cancelled"
        return {"batch_id": self.batch_id, "status": "timeout", "message": message}

    async def _cancel_batch(self) -> None:
        if self.provider == "anthropic":
            if await self._anthropic_hook().acancel_batch(self.batch_id):
                self.log.info("Cancelled batch %s", self.batch_id)
            return
        await self._cancel(await self._hook().shared_async_client())

    async def _cancel(self, client: AsyncOpenAI) -> None:
        try:
            await client.batches.cancel(self.batch_id)
            self.log.info("Cancelled batch %s", self.batch_id)
        except openai.ConflictError:
            self.log.info("Batch %s had already ended; nothing to cancel", self.batch_id)
        except (openai.APIError, openai.APIConnectionError) as err:
            self.log.warning("Could not cancel batch %s: %s", self.batch_id, err)

    async def on_kill(self) -> None:
        """Cancel the batch when a user kills, fails or clears the deferred task."""
        if not self.cancel_on_kill:
            return
        await asyncio.wait_for(self._cancel_batch(), timeout=30)


class InputFilesTrigger(BaseTrigger):
    """
    Wait until input files match a pattern and have stopped changing, then yield them.

    Listing runs in a worker thread (object-store listings are blocking calls), so the event loop
    never blocks. What is taken follows :func:`openai_batch.storage.scan_inputs`; the event fires
    when at least one file is ready, none is still changing, and two listings agree.

    :param pattern: A path or glob, local or an object-storage URL.
    :param poll_interval: Seconds between two listings.
    :param conn_id: Object-storage connection id, for URLs that need one.
    :param inbox: The inbox root (inputs must resolve under it or an allowed root).
    :param allowed_roots: Other roots inputs may come from.
    :param settle_seconds: How long a file must stay unchanged before it is taken.
    """

    def __init__(
        self,
        pattern: str,
        poll_interval: float = 30.0,
        conn_id: str | None = None,
        inbox: str = "",
        allowed_roots: list[str] | None = None,
        settle_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self.poll_interval = poll_interval
        self.conn_id = conn_id
        self.inbox = inbox
        self.allowed_roots = list(allowed_roots or [])
        self.settle_seconds = settle_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pattern": self.pattern,
                "poll_interval": self.poll_interval,
                "conn_id": self.conn_id,
                "inbox": self.inbox,
                "allowed_roots": self.allowed_roots,
                "settle_seconds": self.settle_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """List the pattern until the files are ready and the same in two listings in a row."""
        from openai_batch.storage import scan_inputs

        previous: list[Any] | None = None
        reported: set[tuple[str, str]] = set()
        while True:
            scan = await asyncio.to_thread(
                scan_inputs, self.pattern, self.inbox, self.allowed_roots, self.settle_seconds, self.conn_id
            )
            for path, reason in set(scan.ignored) - reported:
                self.log.warning("Not taking %s: %s", path, reason)
                reported.add((path, reason))
            if scan.ready() and scan.fingerprint() == previous:
                yield TriggerEvent({"status": "found", "files": scan.taken})
                return
            if scan.waiting:
                self.log.info("Waiting for %s file(s) to stop changing: %s", len(scan.waiting), scan.waiting)
            previous = scan.fingerprint() if scan.ready() else None
            await asyncio.sleep(self.poll_interval)


class OpenAIBatchCapacityTrigger(BaseTrigger):
    """
    Wait until a shard round fits under its model's enqueued-token limit, then yield one event.

    Checks the deployment's ledger (a local folder the triggerer shares with the workers) every
    ``poll_interval`` seconds, in a thread so the event loop never blocks on the file lock, and
    keeps the round listed as waiting meanwhile. It does not admit the round: the resumed task
    does, and waits again if another shard took the room first. No worker slot is held while
    waiting, and no task starts until capacity looks free. With ``conn_id``, a check that finds no
    room first reconciles the model's in-flight entries with the API (see
    :func:`openai_batch.budget.reconcile`; throttled per entry, lookups outside the lock, errors
    logged and ignored), so a batch whose release was lost does not hold the room until it is stale.

    :param ledger_dir: The ledger folder (see :mod:`openai_batch.budget`).
    :param key: The round's ledger key.
    :param model: Its model.
    :param tokens: Its estimated enqueued tokens.
    :param limit: The model's enqueued-token limit.
    :param label: How the logs and the results view name the round.
    :param poll_interval: Seconds between two checks.
    :param not_before: Epoch seconds before which no event is yielded.
    :param conn_id: The connection id for reconciliation; None: none.
    :param provider: The connection's provider (see :mod:`openai_batch.providers`): whose API the
        statuses are read from, so a key only ever goes to its own API.
    """

    def __init__(
        self,
        ledger_dir: str,
        key: str,
        model: str,
        tokens: int,
        limit: int | None,
        label: str = "",
        poll_interval: float = 30.0,
        not_before: float = 0.0,
        conn_id: str | None = None,
        provider: str = "openai",
    ) -> None:
        super().__init__()
        self.ledger_dir = ledger_dir
        self.conn_id = conn_id
        self.provider = provider
        self.key = key
        self.model = model
        self.tokens = tokens
        self.limit = limit
        self.label = label
        self.poll_interval = poll_interval
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            "openai_batch.triggers.OpenAIBatchCapacityTrigger",
            {
                "ledger_dir": self.ledger_dir,
                "key": self.key,
                "model": self.model,
                "tokens": self.tokens,
                "limit": self.limit,
                "label": self.label,
                "poll_interval": self.poll_interval,
                "not_before": self.not_before,
                "conn_id": self.conn_id,
                "provider": self.provider,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check the ledger until the round fits."""
        from openai_batch.budget import ledger_for

        ledger = ledger_for(self.ledger_dir)
        await asyncio.sleep(max(0.0, self.not_before - time.time()))
        while ledger is not None:
            fits = await asyncio.to_thread(
                ledger.fits, self.key, self.model, self.tokens, self.limit, self.label, self.poll_interval
            )
            if not fits and self.conn_id and await self._reconcile(ledger):
                fits = await asyncio.to_thread(
                    ledger.fits, self.key, self.model, self.tokens, self.limit, self.label, self.poll_interval
                )
            if fits:
                break
            await asyncio.sleep(max(0.1, float(self.poll_interval)))
        yield TriggerEvent({"key": self.key, "fits": True})

    async def _reconcile(self, ledger: Ledger) -> bool:
        """Release the model's entries whose batch ended at the API; return whether any was released."""
        from openai_batch.budget import release_if_ended

        due = await asyncio.to_thread(ledger.due_for_check, self.model)
        if not due:
            return False
        released = False
        try:
            async with self._lookup() as status_of:
                for key, batch_id in due:
                    status = await status_of(batch_id)
                    line = await asyncio.to_thread(release_if_ended, ledger, key, batch_id, status)
                    if line:
                        self.log.info("Capacity: %s", line)
                        released = True
        except Exception as err:  # reconciliation never ends the wait
            self.log.warning("Capacity: reconciling %s with the API failed: %s", self.model, err)
        return released

    @asynccontextmanager
    async def _lookup(self) -> AsyncIterator[Callable[[str], Awaitable[str | None]]]:
        """Yield ``status_of(batch_id)``: the status, ``NOT_FOUND`` for a 404, None when the lookup failed."""
        from openai_batch.provider import NOT_FOUND

        async def status_with(fetch: Callable[[str], Awaitable[dict[str, Any]]], batch_id: str) -> str | None:
            try:
                return str((await fetch(batch_id))["status"])
            except BatchNotFoundError:
                return NOT_FOUND
            except BatchPollError as err:
                self.log.warning("Capacity: could not look up batch %s (kept): %s", batch_id, err)
                return None

        if self.provider == "anthropic":
            from openai_batch.anthropic_hook import AnthropicBatchHook

            anthropic_hook = AnthropicBatchHook(conn_id=str(self.conn_id), max_retries=1, timeout=60.0)

            async def anthropic_status(batch_id: str) -> str | None:
                return await status_with(anthropic_hook.aget_batch_json, batch_id)

            yield anthropic_status
            return
        hook = OpenAIBatchHook(conn_id=str(self.conn_id), max_retries=1, timeout=60.0)
        settings = PollSettings.from_client_kwargs(await hook.async_client_kwargs())

        if settings is None:
            client = await hook.shared_async_client()

            async def sdk_status(batch_id: str) -> str | None:
                return await status_with(lambda b: _sdk_get_batch(client, b), batch_id)

            yield sdk_status
            return
        async with shared_poller(settings) as poller:

            async def lean_status(batch_id: str) -> str | None:
                return await status_with(poller.get_batch, batch_id)

            yield lean_status


class OpenAIBatchBorrowTrigger(BaseTrigger):
    """
    Wait until requests borrowed from another run's batch have an answer there, or are given up.

    Reads the request record (:mod:`openai_batch.records`, in the ledger folder), in a thread, every
    ``poll_interval`` seconds, and yields one event once no borrowed request is still in another
    owner's hands: each has a final answer, was given up (``open``), or was claimed and not sent for
    longer than ``stale_after`` seconds. The resumed task then takes over what is left (compare and
    swap) and sends it itself. No worker slot is held meanwhile.

    :param ledger_dir: The ledger folder holding the record.
    :param state_dir: The borrower's state folder (its owner name in the record).
    :param file: The borrowed request file in ``state_dir``.
    :param poll_interval: Seconds between two reads.
    :param stale_after: Seconds after which a claim never sent may be taken over.
    """

    def __init__(
        self,
        ledger_dir: str,
        state_dir: str,
        file: str,
        poll_interval: float = 60.0,
        stale_after: float | None = None,
    ) -> None:
        super().__init__()
        self.ledger_dir = ledger_dir
        self.state_dir = state_dir
        self.file = file
        self.poll_interval = poll_interval
        self.stale_after = stale_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            "openai_batch.triggers.OpenAIBatchBorrowTrigger",
            {
                "ledger_dir": self.ledger_dir,
                "state_dir": self.state_dir,
                "file": self.file,
                "poll_interval": self.poll_interval,
                "stale_after": self.stale_after,
            },
        )

    def _waiting(self) -> int:
        from openai_batch.claims import digests_of, split_borrowed
        from openai_batch.records import STALE_AFTER, record_for
        from openai_batch.storage import to_path

        record = record_for(self.ledger_dir)
        if record is None:
            return 0
        digests = list(digests_of(to_path(self.state_dir) / self.file).values())
        stale = STALE_AFTER if self.stale_after is None else self.stale_after
        waiting, _ = split_borrowed(record, self.state_dir, digests, time.time(), stale)
        return len(waiting)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Read the record until no borrowed request is in flight elsewhere."""
        while (waiting := await asyncio.to_thread(self._waiting)) > 0:
            self.log.info("%s borrowed request(s) still in another run's batch", waiting)
            await asyncio.sleep(max(0.1, float(self.poll_interval)))
        yield TriggerEvent({"status": "ready", "file": self.file})


# One reading of a run's task states per (dag, run, task) and interval, shared by every write
# trigger of this triggerer that waits in that run: N files cost one call per interval, not N.
_STATE_READS: dict[tuple[int, str, str, str], tuple[float, asyncio.Future[dict[str, Any]]]] = {}


async def _run_task_states(dag_id: str, run_id: str, task_id: str, max_age: float) -> dict[str, Any]:
    """Return the states of ``task_id``'s instances in one run, read at most ``max_age`` seconds ago."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from asgiref.sync import sync_to_async

    key = (id(asyncio.get_running_loop()), dag_id, run_id, task_id)  # a reading belongs to its loop
    now = time.monotonic()
    cached = _STATE_READS.get(key)
    if cached is None or now - cached[0] > max_age or (cached[1].done() and cached[1].exception()):

        async def read() -> dict[str, Any]:
            found = await sync_to_async(RuntimeTaskInstance.get_task_states)(
                dag_id=dag_id, task_ids=[task_id], run_ids=[run_id]
            )
            return dict(found.get(run_id) or {})

        cached = (now, asyncio.ensure_future(read()))
        _STATE_READS[key] = cached
        for stale in [k for k, (t, _) in _STATE_READS.items() if now - t > 10 * max(max_age, 1.0)]:
            del _STATE_READS[stale]
    return await asyncio.shield(cached[1])


class FileWaitsTrigger(BaseTrigger):
    """
    Wait until the wait tasks of one file's shards have ended, then yield the write's verdict.

    Reads the run's task states through the task SDK (no database connection of its own), shared by
    every such trigger of the triggerer in the same run, and decides with
    :func:`openai_batch.plans.file_waits_verdict`. Yields ``{"verdict", "reason"}`` once the verdict
    is no longer ``wait``: the file can be written, a wait failed, or (without ``through_workers``)
    a wait needs a worker again.

    :param dag_id: The DAG.
    :param run_id: The run.
    :param task_id: The wait task mapped over the run's shards.
    :param start: The map index of the file's first shard.
    :param count: The file's shards.
    :param poll_interval: Seconds between two readings.
    :param through_workers: Keep waiting while a wait needs a worker (queued, resumed from its own
        deferral, up for retry): a deployment with a triggerer. False fires then (``dag.test()``,
        which runs this trigger inline while the wait would need the same process).
    """

    def __init__(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        start: int,
        count: int,
        poll_interval: float = 10.0,
        through_workers: bool = False,
    ) -> None:
        super().__init__()
        self.dag_id = dag_id
        self.run_id = run_id
        self.wait_task_id = task_id
        self.start = start
        self.count = count
        self.poll_interval = poll_interval
        self.through_workers = through_workers

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "task_id": self.wait_task_id,
                "start": self.start,
                "count": self.count,
                "poll_interval": self.poll_interval,
                "through_workers": self.through_workers,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Read the states every ``poll_interval`` until the verdict is no longer ``wait``."""
        from openai_batch.plans import RECHECK, WAIT, file_waits_verdict

        deferred_at, errors = time.monotonic(), 0
        while True:
            try:
                states = await _run_task_states(
                    self.dag_id, self.run_id, self.wait_task_id, self.poll_interval / 2
                )
                errors = 0
            except Exception as err:  # the API server restarting: tolerated a few times, as polls are
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    raise
                self.log.warning(
                    "Reading the task states failed (%s of %s): %s", errors, MAX_POLL_ERRORS, err
                )
                states = None
            if states is not None:
                verdict, reason = file_waits_verdict(states, self.wait_task_id, self.start, self.count)
                if verdict != WAIT and not (verdict == RECHECK and self.through_workers):
                    await asyncio.sleep(max(0.0, deferred_at + MIN_FIRE_AFTER_DEFERRAL - time.monotonic()))
                    yield TriggerEvent({"verdict": verdict, "reason": reason})
                    return
            await asyncio.sleep(self.poll_interval)
