"""HTTP routes: the OpenAI-compatible ``/v1`` API and the ``/_emulator`` control plane."""

from __future__ import annotations

import codecs
import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from openai_emulator.backends import EchoBackend
from openai_emulator.errors import APIError, bad_request, not_found
from openai_emulator.models import (
    COMPLETION_WINDOWS,
    SUPPORTED_ENDPOINTS,
    TERMINAL_STATUSES,
    BatchRecord,
    FileRecord,
    new_id,
)
from openai_emulator.validation import BOM

if TYPE_CHECKING:
    from typing import BinaryIO

    from openai_emulator.state import EmulatorState

logger = logging.getLogger("openai_emulator.routes")
FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
COPY_CHUNK = 1024 * 1024
MODEL_CREATED = 1_700_000_000

v1 = APIRouter(prefix="/v1")
control = APIRouter(prefix="/_emulator")


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


class Dialect:
    """The rules that differ between the APIs these routes serve: OpenAI's here, Azure's in ``azure.py``.

    A route asks :func:`_dialect` for the rules of the API its request came through.
    """

    api = "openai"
    prefix = ""
    endpoints: tuple[str, ...] = SUPPORTED_ENDPOINTS
    expiry_seconds = (3600, 2_592_000)
    file_purposes = FILE_PURPOSES
    # An upload with purpose "batch" and no expires_after expires after 30 days.
    batch_file_expiry: int | None = 30 * 24 * 3600

    def check_upload(self, state: EmulatorState, purpose: str, expires_in: int | None) -> None:
        """Raise ``APIError`` for an upload the API refuses whatever its content (none here)."""

    def sync_body(self, state: EmulatorState, body: dict[str, Any]) -> dict[str, Any]:
        """Return the body of a synchronous request as the backend gets it (unchanged here)."""
        return body


OPENAI = Dialect()


def _dialect(request: Request) -> Dialect:
    dialect: Dialect = getattr(request.state, "dialect", OPENAI)
    return dialect


def _copy_upload(source: BinaryIO, target_path: Any) -> int:
    """Copy a spooled upload to disk in chunks; return the byte count."""
    source.seek(0)
    with open(target_path, "wb") as target:
        shutil.copyfileobj(source, target, COPY_CHUNK)
        target.flush()
        return target.tell()


FILE_FORM_FIELDS = frozenset({"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"})


def _expiry_seconds(anchor: Any, seconds: Any, param: str, bounds: tuple[int, int]) -> int:
    """Check an expiration policy ``{anchor, seconds}`` as the spec defines it; return the seconds."""
    for name, value in (("anchor", anchor), ("seconds", seconds)):
        if value is None:
            message = f"Missing required parameter: '{param}.{name}'."
            raise bad_request(message, f"{param}.{name}", "missing_required_parameter")
    if anchor != "created_at":
        raise bad_request(f"{param}.anchor must be 'created_at'.", f"{param}.anchor")
    if isinstance(seconds, bool) or not isinstance(seconds, int | str):
        raise bad_request(f"{param}.seconds must be an integer.", f"{param}.seconds", "invalid_type")
    try:
        value = int(seconds)
    except ValueError as exc:
        raise bad_request(f"{param}.seconds must be an integer.", f"{param}.seconds", "invalid_type") from exc
    low, high = bounds
    if not low <= value <= high:
        raise bad_request(f"{param}.seconds must be between {low} and {high}.", f"{param}.seconds")
    return value


def _expires_after(form: Any, bounds: tuple[int, int]) -> int | None:
    seconds = form.get("expires_after[seconds]")
    anchor = form.get("expires_after[anchor]")
    if seconds is None and anchor is None:
        return None
    return _expiry_seconds(anchor, seconds, "expires_after", bounds)


NOT_UTF8 = "Invalid file for Batch API. Must be utf-8 encoded"
NOT_JSONL = "Invalid file format for Batch API. Must be .jsonl"


def _check_jsonl(path: Any) -> str | None:
    """Return why a batch input file is not JSONL, or None: UTF-8 text whose lines are JSON objects.

    Each non-blank line must start with ``{``; a line that does and still does not parse is left to
    batch validation, which reports it as ``invalid_json_line`` with its line number, as the service does.
    So are missing ``custom_id``/``method``/``url``/``body`` keys: the service takes such a file and
    fails the batch. The message starts with the service's own words. The file is read in pieces of at
    most :data:`COPY_CHUNK` bytes, however long its lines.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    number, at_start, blank_so_far = 0, True, True
    with open(path, "rb") as handle:
        while piece := handle.readline(COPY_CHUNK):
            if at_start:
                number += 1
                blank_so_far = True
                if number == 1 and piece.startswith(BOM):
                    piece = piece[len(BOM) :]
            try:
                text = decoder.decode(piece)
            except UnicodeDecodeError:
                return f"{NOT_UTF8} (line {number} is not UTF-8 text)."
            if blank_so_far and (stripped := text.lstrip()):
                blank_so_far = False
                if not stripped.startswith("{"):
                    return f"{NOT_JSONL} (line {number} is not a JSON object)."
            at_start = piece.endswith(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"{NOT_UTF8} (line {number} is not UTF-8 text)."
    return None


# Files


@v1.post("/files")
async def create_file(request: Request) -> JSONResponse:
    """Upload a file (multipart ``file`` and ``purpose``), streaming it to disk."""
    state, dialect = _state(request), _dialect(request)
    form = await request.form()
    unknown = sorted(set(form.keys()) - FILE_FORM_FIELDS)
    if unknown:
        raise bad_request(
            f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter"
        )
    upload = form.get("file")
    purpose = form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise bad_request("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    if not isinstance(purpose, str) or not purpose:
        raise bad_request("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter")
    if purpose not in dialect.file_purposes:
        raise bad_request(f"Invalid purpose '{purpose}'.", "purpose")
    seconds = _expires_after(form, dialect.expiry_seconds)
    dialect.check_upload(state, purpose, seconds)
    # The name is not checked, only the content (see _check_jsonl): the SDK names raw bytes and unnamed
    # streams "upload", and the service takes such batch input, as clients that upload bytes rely on.
    filename = upload.filename or "upload"
    limit = state.settings.max_file_bytes
    what = "files"
    if purpose == "batch" and state.settings.max_input_file_bytes < limit:
        limit, what = state.settings.max_input_file_bytes, "purpose 'batch'"
    too_big = bad_request(f"File is too large; the limit for {what} is {limit} bytes.", "file")
    if upload.size is not None and upload.size > limit:
        raise too_big
    file_id = new_id("file-")
    final = state.store.file_path(file_id)
    partial = final.with_name(file_id + ".part")
    size = await run_in_threadpool(_copy_upload, upload.file, partial)
    if size > limit:
        partial.unlink(missing_ok=True)
        raise too_big
    if purpose == "batch" and (problem := await run_in_threadpool(_check_jsonl, partial)) is not None:
        partial.unlink(missing_ok=True)
        raise bad_request(problem, "file")
    partial.replace(final)
    now = int(time.time())
    if seconds is None and purpose == "batch":
        seconds = dialect.batch_file_expiry
    record = FileRecord(
        id=file_id,
        bytes=size,
        created_at=now,
        filename=filename,
        purpose=purpose,
        expires_at=now + seconds if seconds else None,
    )
    state.store.put_file(record)
    state.stats.incr("files_uploaded")
    return JSONResponse(record.to_api())


def _limit(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError as exc:
        raise bad_request("limit must be an integer.", "limit") from exc
    if not 1 <= limit <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}.", "limit")
    return limit


@v1.get("/files")
async def list_files(request: Request) -> JSONResponse:
    """List files, newest first by default."""
    params = request.query_params
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be 'asc' or 'desc'.", "order")
    limit = _limit(params.get("limit"), 10_000, 10_000)
    records, has_more = _state(request).store.list_files(
        params.get("purpose"), limit, order == "asc", params.get("after")
    )
    # The spec's ListFilesResponse requires first_id and last_id as strings, even for an empty page.
    return JSONResponse(_page([r.to_api() for r in records], has_more, empty_id=""))


def _page(data: list[dict[str, Any]], has_more: bool, empty_id: str | None = None) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else empty_id,
        "last_id": data[-1]["id"] if data else empty_id,
        "has_more": has_more,
    }


def _file_or_404(state: EmulatorState, file_id: str) -> FileRecord:
    record = state.store.get_file(file_id)
    if record is None:
        raise not_found(f"No such File object: {file_id}")
    return record


@v1.get("/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> JSONResponse:
    """Return a file's metadata."""
    return JSONResponse(_file_or_404(_state(request), file_id).to_api())


@v1.get("/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> FileResponse:
    """Stream a file's bytes from disk."""
    state = _state(request)
    record = _file_or_404(state, file_id)
    path = state.store.file_path(file_id)
    if not path.exists():
        raise not_found(f"No such File object: {file_id}")
    return FileResponse(path, media_type="application/octet-stream", filename=record.filename)


@v1.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> JSONResponse:
    """Delete a file."""
    state = _state(request)
    _file_or_404(state, file_id)
    state.store.delete_file(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


# Batches


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request("metadata must be an object.", "metadata", "invalid_type")
    if len(metadata) > 16:
        raise bad_request("metadata can have at most 16 key-value pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad_request(f"metadata key '{key[:20]}...' is longer than 64 characters.", "metadata")
        if not isinstance(value, str):
            raise bad_request(f"metadata value for '{key}' must be a string.", "metadata", "invalid_type")
        if len(value) > 512:
            raise bad_request(f"metadata value for '{key}' is longer than 512 characters.", "metadata")
    return metadata


def _check_output_expiry(value: Any, bounds: tuple[int, int]) -> dict[str, Any] | None:
    """Check ``output_expires_after`` against the spec's BatchFileExpirationAfter."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("output_expires_after must be an object.", "output_expires_after", "invalid_type")
    extra = sorted(set(value) - {"anchor", "seconds"})
    if extra:
        raise bad_request(
            f"Unrecognized request argument supplied: output_expires_after.{extra[0]}",
            f"output_expires_after.{extra[0]}",
            "unknown_parameter",
        )
    if isinstance(value.get("seconds"), str):
        raise bad_request(
            "output_expires_after.seconds must be an integer.", "output_expires_after.seconds", "invalid_type"
        )
    seconds = _expiry_seconds(value.get("anchor"), value.get("seconds"), "output_expires_after", bounds)
    return {"anchor": "created_at", "seconds": seconds}


def _check_input_purpose(state: EmulatorState, file_id: str) -> None:
    """Refuse an input file uploaded with another purpose than ``batch``.

    An unknown id is not refused here: as before, such a batch goes ``failed`` during validation.
    """
    record = state.store.get_file(file_id)
    if record is not None and record.purpose != "batch":
        raise bad_request(
            f"The input file {file_id} has purpose '{record.purpose}'; a batch needs a file uploaded "
            "with purpose 'batch'.",
            "input_file_id",
        )


@v1.post("/batches")
async def create_batch(request: Request) -> JSONResponse:
    """Create a batch; bad file contents do not fail the call, the batch goes ``failed`` later."""
    state, dialect = _state(request), _dialect(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise bad_request("The request body is not valid JSON.", None, "invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_type")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise bad_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    endpoint = body["endpoint"]
    if endpoint not in dialect.endpoints:
        raise bad_request(
            f"Invalid value for 'endpoint': '{endpoint}'. Supported: {', '.join(dialect.endpoints)}.",
            "endpoint",
        )
    if body["completion_window"] not in COMPLETION_WINDOWS:
        raise bad_request(
            "Invalid value for 'completion_window': only '24h' is supported.", "completion_window"
        )
    metadata = _check_metadata(body.get("metadata"))
    output_expires_after = _check_output_expiry(body.get("output_expires_after"), dialect.expiry_seconds)
    _check_input_purpose(state, body["input_file_id"])
    now = time.time()
    faults = state.faults
    record = BatchRecord(
        id=new_id("batch_"),
        endpoint=endpoint,
        input_file_id=body["input_file_id"],
        completion_window=body["completion_window"],
        status="validating",
        created_at=int(now),
        expires_at=int(now + state.settings.completion_window_seconds),
        metadata=metadata,
        output_expires_after=output_expires_after,
        created_time=now,
        deadline=now + state.settings.completion_window_seconds,
        expire_after_requests=faults.expire_after_requests,
        expire_fraction=faults.expire_fraction,
        api=dialect.api,
    )
    state.store.put_batch(record)
    state.stats.incr("batches_created")
    # The count only grows when a batch is created, so its most-ever value is reached here.
    state.stats.high_water("batches_in_flight_max", state.store.count_active())
    return JSONResponse(record.to_api())


def _batch_or_404(state: EmulatorState, batch_id: str) -> BatchRecord:
    record = state.store.get_batch(batch_id)
    if record is None:
        raise not_found(f"No batch found with id '{batch_id}'.")
    return record


@v1.get("/batches")
async def list_batches(request: Request) -> JSONResponse:
    """List batches, newest first."""
    params = request.query_params
    limit = _limit(params.get("limit"), 20, 100)
    records, has_more = _state(request).store.list_batches(limit, params.get("after"))
    return JSONResponse(_page([r.to_api() for r in records], has_more))


@v1.get("/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> JSONResponse:
    """Return a batch."""
    return JSONResponse(_batch_or_404(_state(request), batch_id).to_api())


@v1.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> JSONResponse:
    """Ask for a batch to be cancelled; 409 if it already finished."""
    state = _state(request)
    record = _batch_or_404(state, batch_id)
    if record.status in TERMINAL_STATUSES - {"cancelled"}:
        raise APIError(
            409, f"Cannot cancel a batch with status '{record.status}'.", "invalid_request_error", None, None
        )
    if record.status not in ("cancelling", "cancelled"):
        logger.info("Batch %s: %s -> cancelling", record.id, record.status)
        record.status = "cancelling"
        record.cancelling_at = int(time.time())
        record.cancelling_time = time.time()
        state.store.put_batch(record)
        state.stats.incr("batches_cancel_requested")
    return JSONResponse(record.to_api())


# Synchronous endpoints, answered by the echo backend, so one emulator can be another's proxy upstream


async def _echo_endpoint(request: Request) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError as exc:
        raise bad_request("The request body is not valid JSON.", None, "invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_type")
    if body.get("stream") is True:
        raise bad_request("Streaming is not supported by the emulator.", "stream", "unsupported_value")
    state, dialect = _state(request), _dialect(request)
    body = dialect.sync_body(state, body)
    state.stats.incr("sync_requests")
    result = _ECHO.handle(request.url.path.removeprefix(dialect.prefix), body)
    return JSONResponse(
        result.body, status_code=result.status_code, headers={"x-request-id": result.request_id}
    )


_ECHO = EchoBackend()
for _path in SUPPORTED_ENDPOINTS:
    v1.add_api_route(_path.removeprefix("/v1"), _echo_endpoint, methods=["POST"], include_in_schema=True)


# Models


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "openai-emulator"}


@v1.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """List the configured models."""
    return JSONResponse({"object": "list", "data": [_model(m) for m in _state(request).settings.models]})


@v1.get("/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    """Return one configured model."""
    if model_id not in _state(request).settings.models:
        raise not_found(f"The model '{model_id}' does not exist", "model")
    return JSONResponse(_model(model_id))


# Control plane (no authentication: it is a local test tool)


@control.get("/health")
async def health() -> JSONResponse:
    """Report that the server is up."""
    return JSONResponse({"status": "ok"})


@control.get("/faults")
async def get_faults(request: Request) -> JSONResponse:
    """Return the fault configuration."""
    return JSONResponse(_state(request).faults.to_dict())


@control.put("/faults")
async def put_faults(request: Request) -> JSONResponse:
    """Change the given fault fields; the others keep their values."""
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("The body must be a JSON object of fault fields.")
        faults = _state(request).set_faults(changes)
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc), None, "invalid_faults") from exc
    return JSONResponse(faults.to_dict())


@control.delete("/faults")
async def delete_faults(request: Request) -> JSONResponse:
    """Switch every fault off."""
    return JSONResponse(_state(request).clear_faults().to_dict())


@control.get("/webhooks")
async def get_webhooks(request: Request) -> JSONResponse:
    """Return the webhook URLs, retry settings and delivery counts (never the secret)."""
    return JSONResponse(_state(request).webhooks.describe())


@control.put("/webhooks")
async def put_webhooks(request: Request) -> JSONResponse:
    """Change the webhook URLs and/or secret: ``{"urls": [...], "secret": "whsec_..."}``, both optional."""
    state = _state(request)
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("The body must be a JSON object with 'urls' and/or 'secret'.")
        unknown = sorted(set(body) - {"urls", "secret"})
        if unknown:
            raise ValueError(f"Unknown webhook fields: {', '.join(unknown)}")
        state.webhooks.configure(body.get("urls"), body.get("secret"))
    except ValueError as exc:
        raise bad_request(str(exc), None, "invalid_webhooks") from exc
    return JSONResponse(state.webhooks.describe())


@control.get("/stats")
async def get_stats(request: Request) -> JSONResponse:
    """Return counters: batches created, files uploaded, API calls per route and more."""
    return JSONResponse(_state(request).stats.snapshot())


@control.post("/reset")
async def reset(request: Request) -> JSONResponse:
    """Restore the start-up fault configuration and zero the counters (stored files and batches stay)."""
    state = _state(request)
    state.faults = type(state.faults)(**state.settings.faults.to_dict())
    state.rng.seed(state.faults.seed)
    state.stats.reset()
    return JSONResponse({"faults": state.faults.to_dict(), "stats": state.stats.snapshot()})
