"""The background worker that moves batches through their lifecycle and writes their results."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from typing import TYPE_CHECKING, Any

from openai_emulator.azure import upstream_requests, validate_azure_input
from openai_emulator.backends import BackendResult
from openai_emulator.corruption import corrupt_output
from openai_emulator.errors import error_type_for
from openai_emulator.models import TERMINAL_STATUSES, BatchRecord, FileRecord
from openai_emulator.store import fsync_dir
from openai_emulator.validation import iter_request_lines, validate_input

if TYPE_CHECKING:
    from pathlib import Path

    from openai_emulator.backends import Backend
    from openai_emulator.state import EmulatorState

logger = logging.getLogger("openai_emulator.worker")

POLL_SECONDS = 0.05
#: Unfinished batches beyond which each one reads its record less often (see ``BatchWorker._wait``).
BUSY_BATCHES = 100
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def request_line_id(batch_id: str, custom_id: str) -> str:
    """Return the stable ``batch_req_...`` id of one request of a batch."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}\x1f{custom_id}".encode()).hexdigest()[:32]


def _append_lines(path: Path, offset: int, lines: list[bytes]) -> int:
    """Cut ``path`` back to ``offset`` (dropping an interrupted step), append, fsync; return the size."""
    with path.open("ab") as handle:
        handle.truncate(offset)
        handle.seek(offset)
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def _read_chunk(path: Path, offset: int, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Read up to ``limit`` request lines from ``offset``; return ``(custom_id, body)`` pairs, new offset."""
    items: list[tuple[str, dict[str, Any]]] = []
    end = offset
    for end, raw in iter_request_lines(path, offset):  # noqa: B007 - ``end`` is used after the loop
        data = json.loads(raw)
        items.append((data["custom_id"], data["body"]))
        if len(items) >= limit:
            break
    return items, end


def _write_unfinished(
    batch_id: str,
    input_path: Path,
    input_offset: int,
    error_path: Path,
    error_offset: int,
    code: str,
    message: str,
) -> tuple[int, int, int]:
    """Write an error line for every request not yet run; return ``(count, error_size, input_end)``."""
    count = 0
    end = input_offset
    with error_path.open("ab") as out:
        out.truncate(error_offset)
        out.seek(error_offset)
        if input_path.exists():
            for end, raw in iter_request_lines(input_path, input_offset):  # noqa: B007
                custom_id = json.loads(raw)["custom_id"]
                line = {
                    "id": request_line_id(batch_id, custom_id),
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": code, "message": message},
                }
                out.write(json.dumps(line).encode() + b"\n")
                count += 1
        out.flush()
        os.fsync(out.fileno())
        return count, out.tell(), end


def _usage_of(body: dict[str, Any]) -> tuple[int, int, int, int]:
    """Return ``(input, cached, output, reasoning)`` tokens of a response body, whatever the endpoint."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    input_tokens = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
    output_tokens = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
    in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = in_details.get("cached_tokens", 0) if isinstance(in_details, dict) else 0
    reasoning = out_details.get("reasoning_tokens", 0) if isinstance(out_details, dict) else 0
    return int(input_tokens), int(cached or 0), int(output_tokens), int(reasoning or 0)


class BatchWorker:
    """Drives every unfinished batch; one asyncio task per batch, resumable from its checkpoint.

    :param state: the shared emulator state.
    :param backend: answers the request bodies.
    """

    def __init__(self, state: EmulatorState, backend: Backend) -> None:
        self.state = state
        self.store = state.store
        self.settings = state.settings
        self.backend = backend
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Start a task for every unfinished batch, forever."""
        try:
            while True:
                for batch_id in self.store.active_batch_ids():
                    if batch_id not in self._tasks:
                        self._tasks[batch_id] = asyncio.create_task(self._drive(batch_id))
                for batch_id in [k for k, t in self._tasks.items() if t.done()]:
                    del self._tasks[batch_id]
                await asyncio.sleep(POLL_SECONDS * max(1.0, len(self._tasks) / BUSY_BATCHES))
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # Record helpers

    def _get(self, batch_id: str) -> BatchRecord:
        record = self.store.get_batch(batch_id)
        if record is None:
            raise LookupError(batch_id)
        return record

    def _save(self, batch_id: str, status: str | None = None, **changes: Any) -> BatchRecord:
        """Apply worker changes to the latest record; a pending cancel wins over ordinary progress.

        Every final status is reached here, so this is where a batch's webhook event is queued: once,
        when the stored status first becomes final.
        """
        record = self._get(batch_id)
        for name, value in changes.items():
            setattr(record, name, value)
        ended = False
        if status is not None and status != record.status:
            if record.status == "cancelling" and status in ("in_progress", "finalizing"):
                pass
            else:
                logger.info("Batch %s: %s -> %s", batch_id, record.status, status)
                ended = status in TERMINAL_STATUSES and record.status not in TERMINAL_STATUSES
                record.status = status
        self.store.put_batch(record)
        if ended:
            self.state.webhooks.batch_ended(record)
        return record

    async def _wait(self, batch_id: str, until: float, status: str) -> None:
        """
        Sleep until ``until`` or until the batch leaves ``status``.

        Each waiting batch reads its record every ``POLL_SECONDS`` while there are up to
        ``BUSY_BATCHES`` batches, and proportionally less often beyond: ten thousand batches left
        ``validating`` for an hour then cost the server a few thousand reads a second, not 200,000.
        """
        while (remaining := until - time.time()) > 0:
            every = POLL_SECONDS * max(1.0, len(self._tasks) / BUSY_BATCHES)
            await asyncio.sleep(min(every, remaining))
            if self._get(batch_id).status != status:
                return

    # Lifecycle

    async def _drive(self, batch_id: str) -> None:
        handlers = {
            "validating": self._validate,
            "in_progress": self._process,
            "finalizing": self._finalize,
            "cancelling": self._cancel,
        }
        try:
            while (record := self._get(batch_id)).status not in TERMINAL_STATUSES:
                await handlers[record.status](record)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Batch %s: internal error", batch_id)
            error = {
                "code": "server_error",
                "message": "The batch failed inside the emulator.",
                "param": None,
            }
            self._save(batch_id, "failed", failed_at=int(time.time()), errors=[{**error, "line": None}])

    def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        self._save(batch_id, "failed", failed_at=int(time.time()), errors=errors)
        self.state.stats.incr("batches_failed")

    async def _validate(self, record: BatchRecord) -> None:
        await self._wait(record.id, record.created_time + self.settings.validating_seconds, "validating")
        record = self._get(record.id)
        if record.status != "validating":
            return
        input_file = self.store.get_file(record.input_file_id)
        path = self.store.file_path(record.input_file_id)
        if input_file is None or not path.exists():
            message = f"The input file {record.input_file_id} was not found."
            self._fail(
                record.id, [{"code": "invalid_request", "message": message, "param": "file_id", "line": None}]
            )
            return
        models = frozenset(self.settings.models) if self.settings.strict_models else None
        endpoint = record.endpoint
        if record.api == "azure":  # deployments, Azure's url values and limits
            result, endpoint = await asyncio.to_thread(
                validate_azure_input, path, record.endpoint, self.settings
            )
        else:
            result = await asyncio.to_thread(
                validate_input,
                path,
                record.endpoint,
                self.settings.max_requests_per_batch,
                models,
                self.settings.max_embedding_inputs,
            )
        if self._get(record.id).status != "validating":
            return
        if result.errors:
            self._fail(record.id, result.errors)
            return
        limit = self.state.faults.token_limit
        if limit is not None:
            enqueued = sum(
                b.estimated_tokens
                for b in self.store.active_batches()
                if b.status == "in_progress" and b.id != record.id
            )
            if result.estimated_tokens + enqueued > limit:
                message = (
                    f"Enqueued token limit reached: this batch needs about {result.estimated_tokens} tokens, "
                    f"{enqueued} are already enqueued, the limit is {limit}."
                )
                self._fail(
                    record.id,
                    [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}],
                )
                return
        expire_after = record.expire_after_requests
        if record.expire_fraction is not None:
            by_fraction = int(result.total * record.expire_fraction)
            expire_after = by_fraction if expire_after is None else min(expire_after, by_fraction)
        self.store.batch_dir(record.id).mkdir(parents=True, exist_ok=True)
        self._save(
            record.id,
            "in_progress",
            in_progress_at=int(time.time()),
            total=result.total,
            endpoint=endpoint,
            model=result.model,
            estimated_tokens=result.estimated_tokens,
            expire_after_requests=expire_after,
        )

    def _chunk_limit(self, record: BatchRecord) -> int:
        limit = max(1, self.settings.chunk_size)
        rate = self.settings.requests_per_second
        if rate > 0:
            limit = max(1, min(limit, int(rate * 0.2)))
        if record.expire_after_requests is not None:
            limit = max(1, min(limit, record.expire_after_requests - record.lines_done))
        return limit

    def _inject_failures(self, results: list[BackendResult]) -> list[BackendResult]:
        faults = self.state.faults
        if faults.request_failure_rate <= 0:
            return results
        out = []
        for result in results:
            if self.state.rng.random() < faults.request_failure_rate:
                code = self.state.rng.choice(faults.request_failure_codes)
                message = "Injected failure: the server had an error processing this request."
                if code == 429:
                    message = "Injected failure: rate limit reached for requests."
                error = {"message": message, "type": error_type_for(code), "param": None, "code": None}
                result = BackendResult(code, {"error": error}, result.request_id)
            out.append(result)
        return out

    async def _process(self, record: BatchRecord) -> None:
        work = self.store.batch_dir(record.id)
        work.mkdir(parents=True, exist_ok=True)
        input_path = self.store.file_path(record.input_file_id)
        while True:
            record = self._get(record.id)
            if record.status != "in_progress":
                return
            faults = self.state.faults
            if faults.hold_in_progress or record.model in faults.hold_models:  # held: keep it in flight
                await asyncio.sleep(POLL_SECONDS)
                continue
            expire_after = record.expire_after_requests
            if time.time() >= record.deadline or (
                expire_after is not None and record.lines_done >= expire_after
            ):
                await self._stop_unfinished(record, "expired", "batch_expired", EXPIRED_MESSAGE)
                return
            started = time.monotonic()
            items, input_end = await asyncio.to_thread(
                _read_chunk, input_path, record.input_offset, self._chunk_limit(record)
            )
            if not items:
                self._save(
                    record.id, "finalizing", finalizing_at=int(time.time()), finalizing_time=time.time()
                )
                return
            keys = [f"{record.id}\x1f{custom_id}" for custom_id, _ in items]
            endpoint, bodies = record.endpoint, [b for _, b in items]
            if record.api == "azure":  # the deployment's model, the endpoint Azure's url stands for
                endpoint, bodies = upstream_requests(endpoint, record.model, bodies)
            results = self._inject_failures(await self.backend.handle_many(endpoint, bodies, keys))
            await self._checkpoint(record, items, results, input_end)
            self.state.stats.incr("requests_processed", len(items))
            rate = self.settings.requests_per_second
            if rate > 0:
                await asyncio.sleep(max(0.0, len(items) / rate - (time.monotonic() - started)))

    async def _checkpoint(
        self,
        record: BatchRecord,
        items: list[tuple[str, dict[str, Any]]],
        results: list[BackendResult],
        input_end: int,
    ) -> None:
        """Write one chunk's answers, then record progress: a crash in between just redoes the chunk."""
        ok_lines: list[bytes] = []
        error_lines: list[bytes] = []
        usage = [0, 0, 0, 0]
        for (custom_id, _), result in zip(items, results, strict=True):
            line = {
                "id": request_line_id(record.id, custom_id),
                "custom_id": custom_id,
                "response": {
                    "status_code": result.status_code,
                    "request_id": result.request_id,
                    "body": result.body,
                },
                "error": None,
            }
            encoded = json.dumps(line).encode() + b"\n"
            if 200 <= result.status_code < 300:
                ok_lines.append(encoded)
                usage = [a + b for a, b in zip(usage, _usage_of(result.body), strict=True)]
            else:
                error_lines.append(encoded)
        # Results come back in a different order than submitted, as from the real service.
        shuffler = random.Random(f"{record.id}:{record.lines_done}")
        shuffler.shuffle(ok_lines)
        shuffler.shuffle(error_lines)
        answered = len(ok_lines)
        ok_lines = self._corrupt(record, ok_lines)
        work = self.store.batch_dir(record.id)
        output_offset = await asyncio.to_thread(
            _append_lines, work / "output.jsonl", record.output_offset, ok_lines
        )
        error_offset = await asyncio.to_thread(
            _append_lines, work / "errors.jsonl", record.error_offset, error_lines
        )
        self._save(
            record.id,
            lines_done=record.lines_done + len(items),
            input_offset=input_end,
            output_offset=output_offset,
            error_offset=error_offset,
            output_lines=record.output_lines + len(ok_lines),
            error_lines=record.error_lines + len(error_lines),
            completed=record.completed + answered,
            failed=record.failed + len(error_lines),
            input_tokens=record.input_tokens + usage[0],
            cached_tokens=record.cached_tokens + usage[1],
            output_tokens=record.output_tokens + usage[2],
            reasoning_tokens=record.reasoning_tokens + usage[3],
        )

    def _corrupt(self, record: BatchRecord, ok_lines: list[bytes]) -> list[bytes]:
        """Apply the ``output_corruption`` fault to the first chunk of a batch, while batches are left."""
        faults = self.state.faults
        if (
            not faults.output_corruption
            or faults.output_corruption_batches <= 0
            or record.lines_done
            or len(ok_lines) < 2
        ):
            return ok_lines
        faults.output_corruption_batches -= 1
        self.state.stats.incr("outputs_corrupted")
        return corrupt_output(ok_lines, faults.output_corruption, record.id)

    async def _stop_unfinished(self, record: BatchRecord, status: str, code: str, message: str) -> None:
        """End a batch early: unfinished requests go to the error file, finished ones stay in the output."""
        count, error_offset, input_end = 0, record.error_offset, record.input_offset
        if record.in_progress_at is not None:
            work = self.store.batch_dir(record.id)
            work.mkdir(parents=True, exist_ok=True)
            count, error_offset, input_end = await asyncio.to_thread(
                _write_unfinished,
                record.id,
                self.store.file_path(record.input_file_id),
                record.input_offset,
                work / "errors.jsonl",
                record.error_offset,
                code,
                message,
            )
        record = self._save(
            record.id,
            lines_done=record.lines_done + count,
            input_offset=input_end,
            error_offset=error_offset,
            error_lines=record.error_lines + count,
            failed=record.failed + count,
        )
        now = int(time.time())
        stamp = {"expired": {"expired_at": now}, "cancelled": {"cancelled_at": now}}[status]
        self._save(record.id, status, **self._publish(record), **stamp)
        self.state.stats.incr(f"batches_{status}")

    async def _finalize(self, record: BatchRecord) -> None:
        started = record.finalizing_time or time.time()
        await self._wait(record.id, started + self.settings.finalizing_seconds, "finalizing")
        record = self._get(record.id)
        if record.status != "finalizing":
            return
        self._save(record.id, "completed", completed_at=int(time.time()), **self._publish(record))
        self.state.stats.incr("batches_completed")

    async def _cancel(self, record: BatchRecord) -> None:
        started = record.cancelling_time or time.time()
        await self._wait(record.id, started + self.settings.cancelling_seconds, "cancelling")
        await self._stop_unfinished(self._get(record.id), "cancelled", "batch_cancelled", CANCELLED_MESSAGE)

    def _publish(self, record: BatchRecord) -> dict[str, Any]:
        """Turn the partial output and error files into stored files; idempotent across restarts."""
        work = self.store.batch_dir(record.id)
        ids: dict[str, Any] = {"output_file_id": None, "error_file_id": None}
        expires_at = None
        if record.output_expires_after and record.output_expires_after.get("seconds"):
            expires_at = int(time.time()) + int(record.output_expires_after["seconds"])
        parts = (
            (
                "output_file_id",
                record.pending_output_file_id,
                "output",
                record.output_lines,
                record.output_offset,
            ),
            (
                "error_file_id",
                record.pending_error_file_id,
                "errors",
                record.error_lines,
                record.error_offset,
            ),
        )
        for field_name, file_id, label, lines, offset in parts:
            part = work / f"{label}.jsonl"
            target = self.store.file_path(file_id)
            if lines == 0:
                continue
            if part.exists():
                # Drop bytes of a chunk that was written but never checkpointed before a crash.
                os.truncate(part, offset)
                os.replace(part, target)
                fsync_dir(target.parent)
            if not target.exists():
                continue
            self.store.put_file(
                FileRecord(
                    id=file_id,
                    bytes=target.stat().st_size,
                    created_at=int(time.time()),
                    filename=f"{record.id}_{label}.jsonl",
                    purpose="batch_output",
                    expires_at=expires_at,
                )
            )
            ids[field_name] = file_id
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        return ids
