"""The worker that processes message batches, checkpointed after every chunk so it resumes after a restart.

It follows the settings and faults the OpenAI batch worker follows, so one set of flags drives both
APIs: ``validating_seconds`` before the first request runs, ``requests_per_second`` and ``chunk_size``
while requests run, ``finalizing_seconds`` between the last request and ``ended``,
``cancelling_seconds`` in ``canceling``, ``completion_window_seconds`` as the 24 h expiry,
``expire_after_requests`` / ``expire_fraction`` (forced expiry), ``request_failure_rate`` /
``request_failure_codes`` (errored results), ``hold_in_progress`` / ``hold_models`` and
``--strict-models`` with ``--anthropic-models``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any

from openai_emulator.anthropic_backends import check_params
from openai_emulator.anthropic_models import error_body, error_type_for
from openai_emulator.validation import iter_request_lines

if TYPE_CHECKING:
    from pathlib import Path

    from openai_emulator.anthropic_backends import MessagesBackend
    from openai_emulator.anthropic_models import MessageBatchRecord
    from openai_emulator.anthropic_store import MessageBatchStore
    from openai_emulator.backends import BackendResult
    from openai_emulator.state import EmulatorState

logger = logging.getLogger("openai_emulator.anthropic_worker")

POLL_SECONDS = 0.05


def _read_chunk(path: Path, offset: int, limit: int) -> tuple[list[tuple[str, Any]], int]:
    """Read up to ``limit`` requests from ``offset``; return ``(custom_id, params)`` pairs, new offset."""
    items: list[tuple[str, Any]] = []
    end = offset
    for end, raw in iter_request_lines(path, offset):  # noqa: B007 - ``end`` is used after the loop
        data = json.loads(raw)
        items.append((data["custom_id"], data["params"]))
        if len(items) >= limit:
            break
    return items, end


def _append(path: Path, offset: int, lines: list[bytes]) -> int:
    """Cut ``path`` back to ``offset`` (dropping an unrecorded chunk), append, fsync; return the size."""
    with path.open("ab") as handle:
        handle.truncate(offset)
        handle.seek(offset)
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def _line(custom_id: str, result: dict[str, Any]) -> bytes:
    return json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n"


def _write_rest(
    requests: Path, offset: int, results: Path, results_offset: int, kind: str
) -> tuple[int, int]:
    """Write a ``canceled`` or ``expired`` result for every request not yet run; return ``(count, size)``."""
    lines = [
        _line(json.loads(raw)["custom_id"], {"type": kind}) for _, raw in iter_request_lines(requests, offset)
    ]
    return len(lines), _append(results, results_offset, lines)


class MessageBatchWorker:
    """Drives every message batch whose processing has not ended; one asyncio task per batch.

    :param state: the shared emulator state (settings, faults, random generator, counters).
    :param store: the message batch store.
    :param backend: answers the requests' params.
    """

    def __init__(self, state: EmulatorState, store: MessageBatchStore, backend: MessagesBackend) -> None:
        self.state = state
        self.settings = state.settings
        self.store = store
        self.backend = backend
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Start a task for every unfinished batch, forever."""
        try:
            while True:
                for batch_id in self.store.active_ids():
                    if batch_id not in self._tasks:
                        self._tasks[batch_id] = asyncio.create_task(self._drive(batch_id))
                for batch_id in [k for k, t in self._tasks.items() if t.done()]:
                    del self._tasks[batch_id]
                await asyncio.sleep(POLL_SECONDS)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _get(self, batch_id: str) -> MessageBatchRecord:
        record = self.store.get(batch_id)
        if record is None:
            raise LookupError(batch_id)
        return record

    def _save(self, batch_id: str, status: str | None = None, **changes: Any) -> MessageBatchRecord:
        """Apply changes to the latest record (a cancel the API recorded meanwhile is kept)."""
        record = self._get(batch_id)
        for name, value in changes.items():
            setattr(record, name, value)
        ended = False
        if status is not None and status != record.processing_status:
            logger.info("Message batch %s: %s -> %s", batch_id, record.processing_status, status)
            ended = status == "ended"
            record.processing_status = status
        self.store.put(record)
        if ended:  # the requests are no longer needed once every one has its result
            self.store.requests_path(batch_id).unlink(missing_ok=True)
        return record

    async def _sleep_until(self, batch_id: str, until: float, status: str) -> bool:
        """Sleep until ``until``; return False early when the batch leaves ``status``."""
        while (remaining := until - time.time()) > 0:
            await asyncio.sleep(min(POLL_SECONDS, remaining))
            if self._get(batch_id).processing_status != status:
                return False
        return True

    async def _drive(self, batch_id: str) -> None:
        try:
            while not (record := self._get(batch_id)).ended:
                if record.processing_status == "canceling":
                    await self._cancel(record)
                else:
                    await self._process(record)
        except asyncio.CancelledError:
            raise
        except LookupError:
            return  # deleted meanwhile
        except Exception:
            logger.exception(
                "Message batch %s: internal error; its remaining requests end as errored", batch_id
            )
            await self._stop(self._get(batch_id), "errored")

    def _chunk_limit(self, record: MessageBatchRecord) -> int:
        limit = max(1, self.settings.chunk_size)
        rate = self.settings.requests_per_second
        if rate > 0:
            limit = max(1, min(limit, int(rate * 0.2)))
        if record.expire_after_requests is not None:
            limit = max(1, min(limit, record.expire_after_requests - record.lines_done))
        return limit

    async def _process(self, record: MessageBatchRecord) -> None:
        if record.lines_done == 0 and record.finished_time is None:
            start = record.created_time + self.settings.validating_seconds
            if not await self._sleep_until(record.id, start, "in_progress"):
                return
        requests = self.store.requests_path(record.id)
        while True:
            record = self._get(record.id)
            if record.processing_status != "in_progress":
                return
            if record.finished_time is not None:
                await self._finish(record)
                return
            faults = self.state.faults
            if faults.hold_in_progress or (record.model is not None and record.model in faults.hold_models):
                await asyncio.sleep(POLL_SECONDS)
                continue
            expire_after = record.expire_after_requests
            if time.time() >= record.expires_time or (
                expire_after is not None and record.lines_done >= expire_after
            ):
                await self._stop(record, "expired")
                return
            started = time.monotonic()
            items, end = await asyncio.to_thread(
                _read_chunk, requests, record.input_offset, self._chunk_limit(record)
            )
            if not items:
                self._save(record.id, finished_time=time.time())
                continue
            await self._run_chunk(record, items, end)
            rate = self.settings.requests_per_second
            if rate > 0:
                await asyncio.sleep(max(0.0, len(items) / rate - (time.monotonic() - started)))

    async def _run_chunk(self, record: MessageBatchRecord, items: list[tuple[str, Any]], end: int) -> None:
        """Answer one chunk, write its result lines, then record progress (a crash in between redoes it)."""
        models = frozenset(self.settings.anthropic_models) if self.settings.strict_models else None
        results: dict[int, dict[str, Any]] = {}
        runnable: list[int] = []
        for index, (_, params) in enumerate(items):
            problem = check_params(params, models)
            if problem is None:
                runnable.append(index)
            else:
                results[index] = {"type": "errored", "error": error_body(*problem)}
        answers = await self.backend.answer_many(
            [items[i][1] for i in runnable], [f"{record.id}\x1f{items[i][0]}" for i in runnable]
        )
        for index, answer in zip(runnable, self._inject_failures(answers), strict=True):
            results[index] = self._result_of(answer)
        lines = [_line(items[i][0], results[i]) for i in range(len(items))]
        # The service does not keep request order in the results; neither does the emulator (repeatably).
        random.Random(f"{record.id}:{record.lines_done}").shuffle(lines)
        succeeded = sum(1 for r in results.values() if r["type"] == "succeeded")
        size = await asyncio.to_thread(
            _append, self.store.results_path(record.id), record.results_offset, lines
        )
        self._save(
            record.id,
            lines_done=record.lines_done + len(items),
            input_offset=end,
            results_offset=size,
            succeeded=record.succeeded + succeeded,
            errored=record.errored + len(items) - succeeded,
        )
        self.state.stats.incr("message_requests_processed", len(items))

    @staticmethod
    def _result_of(answer: BackendResult) -> dict[str, Any]:
        if 200 <= answer.status_code < 300:
            return {"type": "succeeded", "message": answer.body}
        body = answer.body
        error = body.get("error")
        if not isinstance(error, dict):
            error = {}
        elif body.get("type") == "error":
            return {"type": "errored", "error": body}
        message = str(error.get("message") or f"Upstream answered HTTP {answer.status_code}.")
        return {"type": "errored", "error": error_body(error_type_for(answer.status_code), message)}

    def _inject_failures(self, answers: list[BackendResult]) -> list[BackendResult]:
        faults = self.state.faults
        if faults.request_failure_rate <= 0:
            return answers
        out = []
        for answer in answers:
            if self.state.rng.random() < faults.request_failure_rate:
                code = self.state.rng.choice(faults.request_failure_codes)
                message = f"Injected failure: HTTP {code} while processing this request."
                answer = type(answer)(code, error_body(error_type_for(code), message), answer.request_id)
            out.append(answer)
        return out

    async def _finish(self, record: MessageBatchRecord) -> None:
        assert record.finished_time is not None  # noqa: S101 - set before _finish is called
        if await self._sleep_until(
            record.id, record.finished_time + self.settings.finalizing_seconds, "in_progress"
        ):
            self._save(record.id, "ended", ended_time=time.time())
            self.state.stats.incr("message_batches_ended")

    async def _cancel(self, record: MessageBatchRecord) -> None:
        started = record.cancel_time or time.time()
        await self._sleep_until(record.id, started + self.settings.cancelling_seconds, "canceling")
        await self._stop(self._get(record.id), "canceled")

    async def _stop(self, record: MessageBatchRecord, kind: str) -> None:
        """End a batch early: each request not yet run gets a ``kind`` result (canceled, expired, errored)."""
        if kind == "errored":
            # Only after an internal failure: say so in each remaining result.
            count, size = await asyncio.to_thread(self._write_errored, record)
        else:
            count, size = await asyncio.to_thread(
                _write_rest,
                self.store.requests_path(record.id),
                record.input_offset,
                self.store.results_path(record.id),
                record.results_offset,
                kind,
            )
        self._save(
            record.id,
            "ended",
            ended_time=time.time(),
            lines_done=record.lines_done + count,
            results_offset=size,
            **{kind: getattr(record, kind) + count},
        )
        self.state.stats.incr(f"message_batches_{kind}")

    def _write_errored(self, record: MessageBatchRecord) -> tuple[int, int]:
        error = error_body("api_error", "The request could not be processed inside the emulator.")
        lines = [
            _line(json.loads(raw)["custom_id"], {"type": "errored", "error": error})
            for _, raw in iter_request_lines(self.store.requests_path(record.id), record.input_offset)
        ]
        return len(lines), _append(self.store.results_path(record.id), record.results_offset, lines)
