"""Hook for the OpenAI Files and Batches API, extending the provider's ``OpenAIHook``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import weakref
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, cast

import openai
from airflow.providers.openai.hooks.openai import OpenAIHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from openai_batch.provider import CLOCK_SKEW_MARGIN as PROVIDER_CLOCK_SKEW_MARGIN
from openai_batch.provider import NOT_FOUND
from openai_batch.retry import CALL_ATTEMPTS, CALL_BACKOFF, Backoff, call_once, is_transient_status
from openai_batch.secrets import InvalidAPIKeyError, api_key_from, redact, register_secret
from openai_batch.status import ENDED, may_reattach
from openai_batch.tls import client_ssl_context

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from contextlib import AbstractContextManager

    from openai import AsyncOpenAI
    from openai.types import Batch, FileObject

log = logging.getLogger(__name__)
# The SDK's HTTP client logs one INFO line per request; polls and uploads would drown the task logs.
for _name in ("httpx", "httpx2", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: Errors the SDK raises for a failed call; :func:`is_transient` says which may be sent again.
API_CALL_ERRORS: tuple[type[Exception], ...] = (openai.APIStatusError, openai.APIConnectionError)


def is_transient(err: BaseException) -> bool:
    """Whether a failed call may be sent again: no answer came back, or a status the policy retries.

    One owner for the decision: :func:`openai_batch.retry.is_transient_status`.
    """
    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(err, openai.APIStatusError) and is_transient_status(err.status_code)


#: Clients shared per event loop (see ``OpenAIBatchHook.shared_async_client``).
_SHARED_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[asyncio.Lock, dict[str, AsyncOpenAI]]
] = weakref.WeakKeyDictionary()

#: Batch statuses after which nothing changes any more.
TERMINAL_STATUSES = ENDED  # one owner: openai_batch.status

#: Packages whose exceptions are HTTP-client errors: their texts may quote a request's headers.
_HTTP_CLIENT_PACKAGES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "h11", "aiohttp", "anyio"})


class OpenAIBatchAPIError(AirflowException):
    """
    Raise when a call to the API failed; the message holds the status and error code, never a header.

    :param message: What failed, built from the status, the API's error code and the connection id.
    :param status: The HTTP status, or None when no answer came back.
    :param code: The API's error code (``invalid_api_key``, ``rate_limit_exceeded``...), if any.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class OpenAIBatchAuthError(OpenAIBatchAPIError, AirflowFailException):
    """Raise when the key is refused (401/403) or cannot be sent: retrying the task cannot help."""


def describe_api_error(err: BaseException, conn_id: str) -> tuple[str, int | None, str | None]:
    """
    Return ``(message, status, code)`` for an SDK or HTTP-client error, without its text.

    The SDK's and the HTTP client's own texts are left out: they can quote a header (an illegal
    header value is shown whole) or, for a 401, part of the key the server saw.
    """
    where = f"connection {conn_id!r}"
    if isinstance(err, openai.APIStatusError):
        body = err.body if isinstance(err.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        code = error.get("code") if isinstance(error, dict) else None
        code = str(code) if code is not None else None
        param = error.get("param") if isinstance(error, dict) else None
        parts = [f"HTTP {err.status_code}"]
        if code:
            parts.append(f"code {code}")
        if isinstance(param, str) and param:
            parts.append(f"param {param}")
        if err.request_id:
            parts.append(f"request id {err.request_id}")
        return f"The API of {where} answered {', '.join(parts)}", err.status_code, code
    if isinstance(err, openai.APITimeoutError):
        return f"The API of {where} did not answer in time", None, None
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err.__context__
        why = type(cause).__name__ if cause is not None else type(err).__name__
        return f"Could not reach the API of {where} ({why})", None, None
    if isinstance(err, openai.OpenAIError) and not isinstance(err, openai.APIError):
        # The SDK's own set-up errors (no key configured...) are its texts, not a server's or a header's.
        return f"Calling the API of {where} failed: {redact(str(err))[:300]}", None, None
    return f"Calling the API of {where} failed ({type(err).__name__})", None, None


def _is_http_client_error(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in _HTTP_CLIENT_PACKAGES


@contextmanager
def api_errors(conn_id: str) -> Iterator[None]:
    """
    Map SDK and HTTP-client errors raised inside to ``OpenAIBatchAPIError``, dropping their chain.

    A refused key (401, 403) or one that cannot be sent fails the task at once
    (``OpenAIBatchAuthError``); other errors keep the task's retries.
    """
    try:
        yield
    except InvalidAPIKeyError as err:
        raise OpenAIBatchAuthError(redact(str(err))) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
        message, status, code = describe_api_error(err, conn_id)
        raise OpenAIBatchAuthError(message, status, code) from None
    except openai.OpenAIError as err:
        message, status, code = describe_api_error(err, conn_id)
        raise OpenAIBatchAPIError(message, status, code) from None
    except Exception as err:
        if not _is_http_client_error(err):
            raise
        message, status, code = describe_api_error(err, conn_id)
        raise OpenAIBatchAPIError(message, status, code) from None


CLOCK_SKEW_MARGIN = PROVIDER_CLOCK_SKEW_MARGIN  # one owner: openai_batch.provider


def _async_client(kwargs: dict[str, Any]) -> AsyncOpenAI:
    """Build an ``AsyncOpenAI`` client over the process's shared TLS context (blocks: call it in a thread)."""
    return openai.AsyncOpenAI(
        **kwargs, http_client=openai.DefaultAsyncHttpxClient(verify=client_ssl_context())
    )


def _scan_done(scanned: int, max_scan: int, since: float | None, created_at: float) -> bool:
    """
    Return whether a newest-first scan may stop before an object created at ``created_at``.

    The ``max_scan`` newest objects are always read; ``since`` only takes the scan further back,
    up to the first object older than it (the listing is newest first, so none after it is newer).
    """
    return scanned >= max_scan and (since is None or created_at < since)


class OpenAIBatchHook(OpenAIHook):
    """
    Talk to the OpenAI Files and Batches API (or a compatible server) with retries and streaming.

    Adds what ``OpenAIHook`` lacks: streamed uploads and downloads, batch listing, a lookup of a
    batch by its metadata, an idempotent create, and async twins for the trigger.

    :param conn_id: The OpenAI connection id (API key in the password, base URL in the host).
    :param max_retries: How many times the SDK retries 408/409/429/5xx and timeouts (with backoff).
    :param timeout: Seconds before one HTTP call times out.
    """

    hook_name = "OpenAI Batch"

    def __init__(
        self,
        conn_id: str = OpenAIHook.default_conn_name,
        max_retries: int = 6,
        timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.max_retries = max_retries
        self.timeout = timeout

    def _client_kwargs(self, conn: Any, extras: dict[str, Any]) -> dict[str, Any]:
        # The one place both clients (sync and async) and the lean poller get their key from.
        register_secret(conn.password)  # as stored, before anything can log it
        if str(getattr(conn, "conn_type", "") or "").lower() == "anthropic":
            # Never send an Anthropic key to an OpenAI endpoint (api.openai.com when the host is empty).
            raise OpenAIBatchAuthError(
                f"connection {self.conn_id!r} is an anthropic connection; the OpenAI hook does not use it"
            )
        kwargs = super()._client_kwargs(conn, extras)
        if "workload_identity" not in kwargs:
            # Resolved here, not by the SDK: its own OPENAI_API_KEY fallback sends the value unstripped.
            kwargs["api_key"] = api_key_from(kwargs.get("api_key"), conn_id=self.conn_id)
        kwargs.setdefault("max_retries", self.max_retries)
        kwargs.setdefault("timeout", self.timeout)
        return kwargs

    def get_conn(self) -> openai.OpenAI:
        """Return the sync client, as the provider hook builds it, over the process's shared TLS context."""
        conn = self.get_connection(self.conn_id)
        kwargs = self._client_kwargs(conn, conn.extra_dejson)
        # The SDK's own HTTP client with its defaults; only the TLS context is shared (see openai_batch.tls).
        return openai.OpenAI(**kwargs, http_client=openai.DefaultHttpxClient(verify=client_ssl_context()))

    # ---- files -------------------------------------------------------------------------------

    def find_file(
        self, filename: str, size: int, max_scan: int = 1000, since: float | None = None
    ) -> FileObject | None:
        """
        Return the newest batch input file with this name and size.

        Scans the ``max_scan`` newest files and, with ``since`` (epoch seconds), on back until a
        file older than ``since`` is listed, however many files came after it.
        """
        scanned = 0
        after: str | None = None
        while True:
            # The files list takes pages of up to 10,000; 1,000 keeps each answer small.
            kwargs: dict[str, Any] = {"purpose": "batch", "limit": 1000, "order": "desc"}
            if after:
                kwargs["after"] = after
            page = self.conn.files.list(**kwargs)
            for found in page.data:
                if _scan_done(scanned, max_scan, since, found.created_at):
                    return None
                scanned += 1
                if found.filename == filename and found.bytes == size:
                    return found
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id

    def upload_batch_file_once(
        self,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]],
        filename: str,
        size: int,
        attempts: int = CALL_ATTEMPTS,
        backoff: Backoff = CALL_BACKOFF,
        since: float | None = None,
        maybe_stored: bool = False,
    ) -> FileObject:
        """
        Upload a batch input file, retrying transient errors without leaving a second copy behind.

        As for batches, an upload whose answer was lost may have been stored: before each new attempt
        the file is looked up by its name (unique per shard, round and attempt) and size, back to
        ``since`` (see :meth:`find_file`). ``maybe_stored`` says an earlier process may have stored
        it (it recorded the intent to upload, then stopped): the lookup then comes first, too.
        """
        client = self.conn.with_options(max_retries=0)

        def upload() -> FileObject:
            with open_stream() as stream:
                return client.files.create(file=(filename, stream), purpose="batch")

        def on_retry(err: BaseException, attempt: int, delay: float) -> None:
            log.warning(
                "Uploading %s failed (%s); attempt %s of %s in %.1fs", filename, err, attempt, attempts, delay
            )

        stored, made = call_once(
            upload,
            lambda: self.find_file(filename, size, since=since),
            errors=API_CALL_ERRORS,
            retryable=is_transient,
            on_retry=on_retry,
            attempts=attempts,
            backoff=backoff,
            look_first=maybe_stored,
        )
        if not made:
            log.info("File %s was stored as %s by an earlier attempt; re-using it", filename, stored.id)
        return stored

    def download_file(self, file_id: str, out: IO[bytes], chunk_size: int = 1 << 20) -> int:
        """Stream a file's content into ``out``; return the number of bytes written."""
        written = 0
        with self.conn.files.with_streaming_response.content(file_id) as response:
            for chunk in response.iter_bytes(chunk_size):
                out.write(chunk)
                written += len(chunk)
        return written

    # ---- batches -----------------------------------------------------------------------------

    def batch_status(self, batch_id: str) -> str | None:
        """Return a batch's status, ``NOT_FOUND`` if the API does not know it, None if the lookup failed."""
        try:
            return str(self.conn.with_options(max_retries=1).batches.retrieve(batch_id).status)
        except openai.NotFoundError:
            return NOT_FOUND
        except (openai.APIError, OSError, ValueError) as err:
            self.log.warning("Capacity: could not look up batch %s (kept in the ledger): %s", batch_id, err)
            return None

    def list_batches(self, after: str | None = None, limit: int = 100) -> Any:
        """Return one page of batches, newest first."""
        if after:
            return self.conn.batches.list(limit=limit, after=after)
        return self.conn.batches.list(limit=limit)

    def find_batch(
        self,
        metadata: Mapping[str, str],
        max_scan: int = 1000,
        since: float | None = None,
        *,
        requests: int | None = None,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = None,
        taken: Callable[[str], bool] | None = None,
    ) -> Batch | None:
        """
        Return the newest batch whose metadata contains every pair of ``metadata``.

        The API has no server-side metadata filter, so this scans the ``max_scan`` newest batches
        and, with ``since`` (epoch seconds), on back until a batch older than ``since`` is listed,
        however many batches came after it. Failed and cancelled batches are ignored: they hold
        nothing worth re-attaching. ``requests``, ``open_stream`` and ``taken`` are not needed: the
        metadata names the round.
        """
        return next(self._iter_matching(metadata, max_scan, since), None)

    def _iter_matching(
        self, metadata: Mapping[str, str], max_scan: int = 1000, since: float | None = None
    ) -> Iterator[Batch]:
        """Yield the live batches whose metadata contains every pair of ``metadata``, newest first."""
        scanned = 0
        after: str | None = None
        while True:
            page = self.list_batches(after=after, limit=100)
            for batch in page.data:
                if _scan_done(scanned, max_scan, since, batch.created_at):
                    return
                scanned += 1
                found = batch.metadata or {}
                if all(found.get(k) == v for k, v in metadata.items()) and may_reattach(batch.status):
                    yield cast("Batch", batch)
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def _keep_oldest(self, created: Batch, metadata: Mapping[str, str], since: float | None = None) -> Batch:
        """
        Settle a race between two submitters that both scanned before either created: the oldest wins.

        Both see the same listing order (newest first), so both pick the same batch; the newer one is
        cancelled at once, normally while it is still validating, before any request is processed.
        The scan reaches back to ``since`` too (see :meth:`find_batch`).
        """
        try:
            matching = list(self._iter_matching(metadata, since=since))
        except API_CALL_ERRORS as err:
            if not is_transient(err):
                raise
            log.warning("Could not check batch %s for a concurrent duplicate: %s", created.id, err)
            return created
        if not matching or matching[-1].id == created.id:
            return created
        oldest = matching[-1]
        log.warning(
            "Batch %s duplicates %s (created concurrently for %s); cancelling it and re-attaching",
            created.id,
            oldest.id,
            dict(metadata),
        )
        try:
            self.conn.batches.cancel(created.id)
        except (openai.APIError, openai.APIConnectionError) as err:
            log.warning("Could not cancel duplicate batch %s: %s", created.id, err)
        return oldest

    def create_batch_once(
        self,
        file_id: str,
        endpoint: str,
        metadata: dict[str, str],
        attempts: int = CALL_ATTEMPTS,
        backoff: Backoff = CALL_BACKOFF,
        output_expires_after: dict[str, Any] | None = None,
        since: float | None = None,
        requests: int | None = None,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = None,
        taken: Callable[[str], bool] | None = None,
    ) -> Batch:
        """
        Create a batch, retrying transient errors without ever creating it twice.

        The SDK's own retries are off for the create call: a timeout may hide a batch that the
        service did create, so before each new attempt the batch is looked up by ``metadata``. After
        the create, a concurrent duplicate (another run that scanned before this one created) is
        settled: the oldest batch is kept and returned, a newer one is cancelled.
        ``output_expires_after`` (``{"anchor": "created_at", "seconds": N}``) is sent only when set.
        Both lookups reach back to ``since`` (epoch seconds, see :meth:`find_batch`) when it is set.
        The request file was uploaded (``file_id``): ``requests`` and ``open_stream`` are not needed.
        """
        client = self.conn.with_options(max_retries=0)
        extra: dict[str, Any] = {}
        if output_expires_after is not None:
            extra["output_expires_after"] = output_expires_after

        def create() -> Batch:
            return client.batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata=metadata,
                **extra,
            )

        def on_retry(err: BaseException, attempt: int, delay: float) -> None:
            log.warning(
                "Creating the batch failed (%s); attempt %s of %s in %.1fs", err, attempt, attempts, delay
            )

        batch, made = call_once(
            create,
            lambda: self.find_batch(metadata, since=since),
            errors=API_CALL_ERRORS,
            retryable=is_transient,
            on_retry=on_retry,
            attempts=attempts,
            backoff=backoff,
        )
        if not made:
            log.info("Batch %s already exists for %s; re-attaching", batch.id, metadata)
            return batch
        return self._keep_oldest(batch, metadata, since)

    # ---- async twins for triggers ------------------------------------------------------------

    async def async_client(self) -> AsyncOpenAI:
        """
        Return an ``AsyncOpenAI`` client for this connection; close it with ``async with``.

        The connection is looked up without blocking, and the client (whose first construction in the
        process loads TLS certificates, a blocking step) is built in a worker thread.
        """
        return await asyncio.to_thread(_async_client, await self.async_client_kwargs())

    async def shared_async_client(self) -> AsyncOpenAI:
        """
        Return a client shared by every caller with the same settings on the running event loop.

        A triggerer runs many triggers on one loop: sharing one client (one connection pool, one
        TLS context) keeps a thousand waits cheap. Do not close it; it lives as long as the loop.
        """
        kwargs = await self.async_client_kwargs()
        key = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()
        loop = asyncio.get_running_loop()
        lock, clients = _SHARED_CLIENTS.setdefault(loop, (asyncio.Lock(), {}))
        async with lock:  # a thousand triggers starting at once build one client, not a thousand
            client = clients.get(key)
            if client is None or client.is_closed():
                client = clients[key] = await asyncio.to_thread(_async_client, kwargs)
        return client

    async def async_client_kwargs(self) -> dict[str, Any]:
        """Return the client settings of this connection (key, base url...), looked up without blocking."""
        from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson

        conn = await get_async_connection(self.conn_id, hook=self)
        return self._client_kwargs(conn, await get_async_extra_dejson(conn))
