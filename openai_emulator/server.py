"""The ASGI app: routes, authentication, fault injection, the batch worker and webhook deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from openai_emulator.anthropic_routes import install as install_message_batches
from openai_emulator.anthropic_routes import is_messages_path, messages_gate
from openai_emulator.azure import AZURE_PREFIX, azure_refusal, is_azure_path
from openai_emulator.azure import install as install_azure
from openai_emulator.backends import make_backend
from openai_emulator.errors import APIError, error_envelope, error_type_for
from openai_emulator.routes import control, v1
from openai_emulator.state import EmulatorState
from openai_emulator.worker import BatchWorker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from openai_emulator.settings import EmulatorSettings

_ROUTE_KEYS = (
    (re.compile(r"^/v1/files/[^/]+/content$"), "/v1/files/{file_id}/content"),
    (re.compile(r"^/v1/files/[^/]+$"), "/v1/files/{file_id}"),
    (re.compile(r"^/v1/batches/[^/]+/cancel$"), "/v1/batches/{batch_id}/cancel"),
    (re.compile(r"^/v1/batches/[^/]+$"), "/v1/batches/{batch_id}"),
    (re.compile(r"^/v1/models/.+$"), "/v1/models/{model}"),
)


def route_key(method: str, path: str) -> str:
    """Return ``METHOD /path/{template}`` for counting API calls per route (Azure's keep ``/openai``)."""
    prefix = AZURE_PREFIX if is_azure_path(path) else ""
    for pattern, template in _ROUTE_KEYS:
        if pattern.match(path.removeprefix(prefix)):
            return f"{method} {prefix}{template}"
    return f"{method} {path}"


def _matches(patterns: list[str], method: str, path: str) -> bool:
    if not patterns:
        return True
    candidates = (f"{method} {path}", path, route_key(method, path))
    return any(fnmatch.fnmatchcase(c, p) for p in patterns for c in candidates)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)


def _bearer_refusal(state: EmulatorState, key: str) -> JSONResponse | None:
    """Return OpenAI's 401 answer to a missing or wrong bearer key, or None."""
    if not key or (state.settings.api_key is not None and key != state.settings.api_key):
        state.stats.incr("unauthorized")
        message = "Incorrect API key provided." if key else "You didn't provide an API key."
        return _error_response(APIError(401, message, "invalid_request_error", None, "invalid_api_key"))
    return None


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


def create_app(settings: EmulatorSettings) -> FastAPI:
    """Build the emulator app for the given settings."""
    settings.check()
    state = EmulatorState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = make_backend(settings)
        worker = BatchWorker(state, backend)
        await state.webhooks.start()
        task = asyncio.create_task(worker.run())
        await message_batches.start()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # Pending webhook deliveries are cancelled, not finished: they live in memory only.
            await state.webhooks.aclose()
            await backend.aclose()
            await message_batches.aclose()
            state.store.close()

    app = FastAPI(
        title="OpenAI Batch API emulator", lifespan=lifespan, docs_url="/_emulator/docs", redoc_url=None
    )
    app.state.emulator = state
    app.include_router(v1)
    app.include_router(control)
    # Azure OpenAI's v1 API (/openai/v1/...): the same routes with Azure's rules, and its key header below.
    install_azure(app)
    # Anthropic's Message Batches API (/v1/messages/...) on the same port, with its own gate below.
    message_batches = install_message_batches(app, state)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(
            APIError(400, str(exc.errors()), "invalid_request_error", None, "invalid_request")
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = "Unknown request URL" if exc.status_code == 404 else str(exc.detail)
        envelope = error_envelope(
            f"{message}: {request.method} {request.url.path}", "invalid_request_error", None, None
        )
        return JSONResponse(envelope, status_code=exc.status_code)

    @app.middleware("http")
    async def api_gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if not path.startswith(("/v1/", AZURE_PREFIX + "/v1/")) and path != "/v1":
            return await call_next(request)
        if is_messages_path(path):  # x-api-key, not the bearer key; Anthropic's error envelope
            return await messages_gate(state, request, call_next)
        method = request.method
        state.stats.route(route_key(method, path))
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        # Azure's paths take the api-key header (or the bearer key) and answer with Azure's 401.
        refused = azure_refusal(state, request, key) if is_azure_path(path) else _bearer_refusal(state, key)
        if refused is not None:
            return refused
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
                    {"retry-after-ms": str(faults.retry_after_ms)}
                    if faults.retry_after_ms is not None
                    else {}
                )
                error_code = "rate_limit_exceeded" if code == 429 else None
                message = f"Injected fault: HTTP {code} for {method} {path}."
                return _error_response(
                    APIError(code, message, error_type_for(code), None, error_code, headers)
                )
        response = await call_next(request)
        # A lost answer comes after the route ran: the call took effect, the client cannot know it.
        if faults.lost_response_rate > 0 and _matches(faults.lost_response_routes, method, path):
            if state.rng.random() < faults.lost_response_rate:
                state.stats.incr("lost_responses")
                if faults.lost_response_code == 0:
                    return _CutResponse()
                code = faults.lost_response_code
                message = f"Injected fault: the answer to {method} {path} was lost (HTTP {code})."
                return _error_response(APIError(code, message, error_type_for(code), None, None))
        return response

    return app
