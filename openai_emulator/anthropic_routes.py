"""Anthropic's Message Batches API on the emulator's port: ``/v1/messages/batches`` and its gate.

Requests under ``/v1/messages`` authenticate with ``x-api-key`` or, as the anthropic SDK 2.x sends its
``api_key``, ``Authorization: Bearer``; they never need an OpenAI bearer key. They must
send ``anthropic-version``, get the emulator's injected faults, and are answered in Anthropic's error
envelope ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from openai_emulator.anthropic_backends import EchoMessagesBackend, check_params, make_messages_backend
from openai_emulator.anthropic_models import (
    CUSTOM_ID,
    MAX_BATCH_BYTES,
    MAX_BATCH_REQUESTS,
    MessageBatchRecord,
    MessagesAPIError,
    error_body,
    error_type_for,
    invalid_request,
    new_batch_id,
    new_request_id,
    not_found,
)
from openai_emulator.anthropic_store import MessageBatchStore
from openai_emulator.anthropic_worker import MessageBatchWorker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from fastapi import FastAPI

    from openai_emulator.anthropic_backends import MessagesBackend
    from openai_emulator.state import EmulatorState

logger = logging.getLogger("openai_emulator.anthropic_routes")
PREFIX = "/v1/messages"
LIST_LIMIT = (20, 1000)

router = APIRouter(prefix=PREFIX)

_ROUTE_KEYS = (
    (re.compile(r"^/v1/messages/batches/[^/]+/cancel$"), "/v1/messages/batches/{message_batch_id}/cancel"),
    (re.compile(r"^/v1/messages/batches/[^/]+/results$"), "/v1/messages/batches/{message_batch_id}/results"),
    (re.compile(r"^/v1/messages/batches/[^/]+$"), "/v1/messages/batches/{message_batch_id}"),
)


def is_messages_path(path: str) -> bool:
    """Return True for the paths this module serves (``/v1/messages`` and below)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def route_key(method: str, path: str) -> str:
    """Return ``METHOD /path/{template}`` for counting calls per route and matching fault patterns."""
    for pattern, template in _ROUTE_KEYS:
        if pattern.match(path):
            return f"{method} {template}"
    return f"{method} {path}"


def _matches(patterns: list[str], method: str, path: str) -> bool:
    if not patterns:
        return True
    candidates = (f"{method} {path}", path, route_key(method, path))
    return any(fnmatch.fnmatchcase(c, p) for p in patterns for c in candidates)


def error_response(error: MessagesAPIError, request_id: str | None = None) -> JSONResponse:
    """Return the JSON answer for an error, with a ``request-id`` header and body field."""
    request_id = request_id or new_request_id()
    return JSONResponse(
        error_body(error.error_type, error.message, request_id),
        status_code=error.status_code,
        headers={**error.headers, "request-id": request_id},
    )


class _CutResponse(Response):
    """An answer cut off in the middle: headers promise a body that never fully arrives."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": False})


async def messages_gate(
    state: EmulatorState, request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Check ``x-api-key`` and ``anthropic-version``, inject faults, then run the route."""
    method, path = request.method, request.url.path
    state.stats.route(route_key(method, path))
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        # The anthropic SDK (2.x) sends its api_key as a bearer token, which the service accepts too.
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not key or (state.settings.api_key is not None and key != state.settings.api_key):
        state.stats.incr("unauthorized")
        message = "invalid x-api-key" if key else "x-api-key header is required"
        return error_response(MessagesAPIError(401, "authentication_error", message))
    if not request.headers.get("anthropic-version"):
        return error_response(invalid_request("anthropic-version: header is required"))
    faults = state.faults
    if faults.latency_ms > 0 and _matches(faults.latency_routes, method, path):
        with state.stats.in_flight("calls_in_latency"):
            await asyncio.sleep(faults.latency_ms / 1000)
    # Injected errors answer before the route runs, so a failed call has no effect and is safe to retry.
    if faults.error_rate > 0 and _matches(faults.error_routes, method, path):
        if state.rng.random() < faults.error_rate:
            code = state.rng.choice(faults.error_codes)
            state.stats.incr("injected_errors")
            headers = (
                {"retry-after-ms": str(faults.retry_after_ms)} if faults.retry_after_ms is not None else {}
            )
            message = f"Injected fault: HTTP {code} for {method} {path}."
            return error_response(MessagesAPIError(code, error_type_for(code), message, headers))
    response = await call_next(request)
    if "request-id" not in response.headers:
        response.headers["request-id"] = new_request_id()
    # A lost answer comes after the route ran: the call took effect, the client cannot know it.
    if faults.lost_response_rate > 0 and _matches(faults.lost_response_routes, method, path):
        if state.rng.random() < faults.lost_response_rate:
            state.stats.incr("lost_responses")
            if faults.lost_response_code == 0:
                return _CutResponse()
            code = faults.lost_response_code
            message = f"Injected fault: the answer to {method} {path} was lost (HTTP {code})."
            return error_response(MessagesAPIError(code, error_type_for(code), message))
    return response


class MessageBatches:
    """The Message Batches API's share of one emulator: its store, backend and worker.

    :param state: the emulator's shared state (settings, faults, counters).
    """

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.store = MessageBatchStore(state.settings.data_dir)
        self._task: asyncio.Task[None] | None = None
        self._backend: MessagesBackend | None = None

    async def start(self) -> None:
        """Start the worker (resuming every batch that had not ended)."""
        self._backend = make_messages_backend(self.state.settings)
        worker = MessageBatchWorker(self.state, self.store, self._backend)
        self._task = asyncio.create_task(worker.run())

    async def aclose(self) -> None:
        """Stop the worker, release the backend and close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._backend is not None:
            await self._backend.aclose()
        self.store.close()


def install(app: FastAPI, state: EmulatorState) -> MessageBatches:
    """Add the Message Batches routes and error handler to ``app``; return the part to start and close."""
    batches = MessageBatches(state)
    app.state.message_batches = batches
    app.include_router(router)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MessagesAPIError)  # noqa: S101 - registered for this class only
        return error_response(exc)

    app.add_exception_handler(MessagesAPIError, api_error)
    return batches


def _store(request: Request) -> MessageBatchStore:
    batches: MessageBatches = request.app.state.message_batches
    return batches.store


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _parse_requests(raw: bytes) -> list[tuple[str, Any]]:
    """Check a create body as the service does at create; return ``(custom_id, params)`` pairs."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    requests = body.get("requests")
    if requests is None:
        raise invalid_request("requests: Field required")
    if not isinstance(requests, list):
        raise invalid_request("requests: Input should be a valid list")
    if not 1 <= len(requests) <= MAX_BATCH_REQUESTS:
        raise invalid_request(
            f"requests: a batch must contain between 1 and {MAX_BATCH_REQUESTS:,} requests; "
            f"got {len(requests):,}"
        )
    seen: set[str] = set()
    items: list[tuple[str, Any]] = []
    for index, item in enumerate(requests):
        if not isinstance(item, dict):
            raise invalid_request(f"requests.{index}: Input should be an object")
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise invalid_request(f"requests.{index}.custom_id: Field required")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise invalid_request(
                f"requests.{index}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'"
            )
        if custom_id in seen:
            raise invalid_request(
                f"requests.{index}.custom_id: Duplicate custom_id '{custom_id}'; "
                "custom_id must be unique within a batch"
            )
        seen.add(custom_id)
        if "params" not in item:
            raise invalid_request(f"requests.{index}.params: Field required")
        if not isinstance(item["params"], dict):
            raise invalid_request(f"requests.{index}.params: Input should be an object")
        items.append((custom_id, item["params"]))
    return items


def _write_requests(path: Path, items: list[tuple[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as handle:
        for custom_id, params in items:
            handle.write(json.dumps({"custom_id": custom_id, "params": params}).encode() + b"\n")
    partial.replace(path)


@router.post("/batches")
async def create_message_batch(request: Request) -> JSONResponse:
    """Create a message batch; the requests' params are checked later, each while it is processed."""
    state = _state(request)
    too_large = MessagesAPIError(
        413, "request_too_large", f"Request exceeds the maximum size of {MAX_BATCH_BYTES:,} bytes."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
        raise too_large
    raw = await request.body()
    if len(raw) > MAX_BATCH_BYTES:
        raise too_large
    items = await run_in_threadpool(_parse_requests, raw)
    store = _store(request)
    now = time.time()
    faults = state.faults
    expire_after = faults.expire_after_requests
    if faults.expire_fraction is not None:
        by_fraction = int(len(items) * faults.expire_fraction)
        expire_after = by_fraction if expire_after is None else min(expire_after, by_fraction)
    first_model = items[0][1].get("model")
    record = MessageBatchRecord(
        id=new_batch_id(),
        processing_status="in_progress",
        created_time=now,
        expires_time=now + state.settings.completion_window_seconds,
        total=len(items),
        model=first_model if isinstance(first_model, str) else None,
        expire_after_requests=expire_after,
    )
    # The requests are on disk before the record exists, so the worker never sees a batch without them.
    await run_in_threadpool(_write_requests, store.requests_path(record.id), items)
    store.put(record)
    state.stats.incr("message_batches_created")
    return JSONResponse(record.to_api(_base_url(request)))


def _limit(value: str | None) -> int:
    default, maximum = LIST_LIMIT
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError as exc:
        raise invalid_request("limit: Input should be a valid integer") from exc
    if not 1 <= limit <= maximum:
        raise invalid_request(f"limit: Input should be between 1 and {maximum}")
    return limit


@router.get("/batches")
async def list_message_batches(request: Request) -> JSONResponse:
    """List message batches, newest first, paged by ``after_id`` (older) or ``before_id`` (newer)."""
    params = request.query_params
    after_id, before_id = params.get("after_id"), params.get("before_id")
    if after_id is not None and before_id is not None:
        raise invalid_request("Only one of after_id and before_id may be given.")
    records, has_more = _store(request).page(_limit(params.get("limit")), after_id, before_id)
    base = _base_url(request)
    data = [r.to_api(base) for r in records]
    return JSONResponse(
        {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def _batch_or_404(request: Request, batch_id: str) -> MessageBatchRecord:
    record = _store(request).get(batch_id)
    if record is None:
        raise not_found(f"No message batch found with id '{batch_id}'.")
    return record


@router.get("/batches/{message_batch_id}")
async def retrieve_message_batch(request: Request, message_batch_id: str) -> JSONResponse:
    """Return a message batch."""
    return JSONResponse(_batch_or_404(request, message_batch_id).to_api(_base_url(request)))


@router.post("/batches/{message_batch_id}/cancel")
async def cancel_message_batch(request: Request, message_batch_id: str) -> JSONResponse:
    """Start cancelling a batch: ``canceling`` now, ``ended`` with its unprocessed requests canceled later."""
    store = _store(request)
    record = _batch_or_404(request, message_batch_id)
    if record.ended:
        raise invalid_request(f"Message batch '{message_batch_id}' has already ended and cannot be canceled.")
    if record.processing_status == "in_progress":
        logger.info("Message batch %s: in_progress -> canceling", record.id)
        record.processing_status = "canceling"
        record.cancel_time = time.time()
        store.put(record)
        _state(request).stats.incr("message_batches_cancel_requested")
    return JSONResponse(record.to_api(_base_url(request)))


@router.get("/batches/{message_batch_id}/results")
async def message_batch_results(request: Request, message_batch_id: str) -> FileResponse:
    """Stream the results of an ended batch as JSONL (one line per request, in no particular order)."""
    store = _store(request)
    record = _batch_or_404(request, message_batch_id)
    if not record.ended:
        raise invalid_request(
            f"Message batch '{message_batch_id}' has not ended yet; its results are available once "
            "processing_status is 'ended'."
        )
    path = store.results_path(record.id)
    if not path.exists():  # a batch ended before any result was written (cannot happen: at least one)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return FileResponse(path, media_type="application/binary")


@router.delete("/batches/{message_batch_id}")
async def delete_message_batch(request: Request, message_batch_id: str) -> JSONResponse:
    """Delete an ended batch and its results; a batch still processing must be canceled first."""
    store = _store(request)
    record = _batch_or_404(request, message_batch_id)
    if not record.ended:
        raise invalid_request(
            f"Message batch '{message_batch_id}' cannot be deleted while it is processing; cancel it first."
        )
    store.delete(record.id)
    return JSONResponse({"id": record.id, "type": "message_batch_deleted"})


_ECHO = EchoMessagesBackend()


@router.post("")
async def create_message(request: Request) -> JSONResponse:
    """Answer one Messages API call with the echo backend, so one emulator can be another's proxy upstream."""
    try:
        params = json.loads(await request.body())
    except ValueError as exc:
        raise invalid_request("The request body is not valid JSON.") from exc
    state = _state(request)
    models = frozenset(state.settings.anthropic_models) if state.settings.strict_models else None
    problem = check_params(params, models)
    if problem is not None:
        raise MessagesAPIError(400 if problem[0] == "invalid_request_error" else 404, *problem)
    state.stats.incr("sync_messages")
    [answer] = await _ECHO.answer_many([params], [new_request_id()])
    return JSONResponse(answer.body)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unknown_messages_route(request: Request, rest: str) -> JSONResponse:
    """Answer any other path or method under ``/v1/messages`` as the API does: 404 ``not_found_error``."""
    raise not_found(f"Not found: {request.method} {request.url.path}")
