"""The provider seam for Anthropic's Message Batches API, on the official ``anthropic`` SDK.

:class:`AnthropicBatchHook` implements :class:`openai_batch.provider.BatchProvider` on the
connection of apache-airflow-providers-anthropic (key in the password, base URL in the host).
Everything it returns or writes is in the pipeline's one shape (see
:mod:`openai_batch.anthropic_format`): a batch reads as a Batch object, results as output lines.

Re-attaching without metadata: Anthropic's batches carry none, so a batch whose create answer was
lost (or whose process died before recording it) is found again from what the API does give: it
was created after the round's durable create intent (less the clock-skew margin), it holds exactly
the round's number of requests, and, once it has ended, its results answer exactly the round's
custom_ids. docs/reliability.md states the window this leaves.
"""

from __future__ import annotations

import asyncio
import json
import os
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

import anthropic
from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

from openai_batch import anthropic_format
from openai_batch.provider import NOT_FOUND
from openai_batch.retry import CALL_ATTEMPTS, CALL_BACKOFF, call_once, is_transient_status
from openai_batch.secrets import api_key_from, redact, register_secret
from openai_batch.tls import client_ssl_context

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from contextlib import AbstractContextManager

    from openai_batch.retry import Backoff

#: Errors of one API call that a later attempt may not repeat (no answer, or a retryable status).
_CALL_ERRORS = (anthropic.APIConnectionError, anthropic.APIStatusError)

#: Bytes of request JSON sent per chunk of a streamed create body.
_BODY_CHUNK = 1 << 20

#: Batches looked at, newest first, when finding a batch again (on back to ``since`` when set).
MAX_SCAN = 1000

_Clients = dict[str, anthropic.AsyncAnthropic]
_SHARED_CLIENTS: dict[asyncio.AbstractEventLoop, tuple[asyncio.Lock, _Clients]] = {}


#: Where the SDK sends calls when neither the connection nor ``ANTHROPIC_BASE_URL`` says.
DEFAULT_BASE_URL = "https://api.anthropic.com"


class ForeignHostError(anthropic.AnthropicError):
    """Raise when a call would carry the key to another host than the connection's API.

    A batch's ``results_url`` is the service's to give; an answer pointing it elsewhere (a
    misconfigured proxy, a hostile server) must not receive the key.
    """


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default_port


def origin_guard(base_url: str) -> Callable[[Any], None]:
    """Return a request hook that refuses any call to another origin than ``base_url``'s."""
    allowed = _origin(base_url)

    def check(request: Any) -> None:
        if _origin(str(request.url)) != allowed:
            raise ForeignHostError(
                f"refused to send a call to {request.url.scheme}://{request.url.host}: the connection's "
                f"API is at {allowed[0]}://{allowed[1]}, and the key goes nowhere else"
            )

    return check


def _base_url(kwargs: Mapping[str, Any]) -> str:
    return str(kwargs.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL)


class AmbiguousBatchError(anthropic.AnthropicError):
    """Raise when several running batches could be the one a lost create made, and none can be chosen."""


class AnthropicBatch:
    """A Message Batch as the pipeline reads it: a Batch object (see ``anthropic_format.batch_json``).

    :param raw: The MessageBatch object as the API returned it.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.json = anthropic_format.batch_json(raw)

    @property
    def id(self) -> str:
        """The batch's id."""
        return str(self.json["id"])

    @property
    def status(self) -> str:
        """The batch's status in the Batch API's vocabulary."""
        return str(self.json["status"])

    @property
    def input_file_id(self) -> str:
        """Empty: the requests went inline."""
        return ""

    @property
    def created_at(self) -> float:
        """Epoch seconds of the batch's creation (0 when the API gave none)."""
        return float(self.json.get("created_at") or 0.0)

    @property
    def total(self) -> int:
        """How many requests the batch holds."""
        return int(self.json["request_counts"]["total"])

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        """Return the Batch object (as the SDK's models do)."""
        return dict(self.json)


class InlineRequests:
    """What an upload returns for Anthropic: nothing is uploaded, requests go inline at create.

    :param id: A name for the request file (never sent).
    """

    def __init__(self, id: str) -> None:  # noqa: A002 - the FileRef protocol's name
        self.id = id


class AnthropicBatchHook(AnthropicHook):
    """
    Talk to Anthropic's Message Batches API: create (inline requests), get, list, cancel, results.

    :param conn_id: The Anthropic connection id (API key in the password, base URL in the host).
    :param max_retries: How many times the SDK retries 408/409/429/5xx and timeouts (with backoff).
    :param timeout: Seconds before one HTTP call times out.
    """

    hook_name = "Anthropic Message Batches"

    def __init__(
        self, conn_id: str = "anthropic_default", max_retries: int = 6, timeout: float = 120.0
    ) -> None:
        super().__init__(conn_id=conn_id)
        self.max_retries = max_retries
        self.timeout = timeout

    def client_kwargs(self, conn: Any) -> dict[str, Any]:
        """Return the SDK client's settings for the connection (the key stripped and registered secret)."""
        register_secret(conn.password)
        extras = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        platform = str(extras.get("platform") or "anthropic").lower()
        if platform != "anthropic":
            raise anthropic.AnthropicError(
                f"connection {self.conn_id!r}: platform {platform!r} has no Message Batches API here; "
                "use Anthropic's own API (platform 'anthropic')"
            )
        kwargs: dict[str, Any] = {"max_retries": self.max_retries, "timeout": self.timeout}
        key = api_key_from(conn.password, conn_id=self.conn_id, use_env=False)
        if key:
            kwargs["api_key"] = key
        # The provider hook's own way to set a base URL (a proxy) comes first, as it does there.
        base_url = (extras.get("anthropic_client_kwargs") or {}).get("base_url") or conn.host
        if base_url:
            kwargs["base_url"] = str(base_url).rstrip("/")
        return kwargs

    @cached_property
    def client(self) -> anthropic.Anthropic:
        """Return the sync SDK client for the connection; it calls the connection's host only."""
        kwargs = self.client_kwargs(self.get_connection(self.conn_id))
        http = anthropic.DefaultHttpxClient(
            event_hooks={"request": [origin_guard(_base_url(kwargs))]}, verify=client_ssl_context()
        )
        return anthropic.Anthropic(**kwargs, http_client=http)

    # ---- the provider seam ---------------------------------------------------------------

    def upload_batch_file_once(
        self,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]],
        filename: str,
        size: int,
        *,
        since: float | None = None,
        maybe_stored: bool = False,
    ) -> InlineRequests:
        """Upload nothing: Anthropic takes a batch's requests inline in the create call."""
        return InlineRequests(f"inline:{filename}")

    def get_batch(self, batch_id: str) -> AnthropicBatch:  # type: ignore[override]  # the seam's shape
        """Return the batch (as a Batch object)."""
        raw = self.client.messages.batches.with_raw_response.retrieve(batch_id)
        return AnthropicBatch(json.loads(raw.http_response.content))

    def cancel_batch(self, batch_id: str) -> Any:
        """Ask the API to cancel the batch."""
        return self.client.messages.batches.cancel(batch_id)

    def batch_status(self, batch_id: str) -> str | None:
        """Return a batch's status, ``NOT_FOUND`` if the API does not know it, None if the lookup failed."""
        try:
            return self.get_batch(batch_id).status
        except anthropic.NotFoundError:
            return NOT_FOUND
        except (anthropic.APIError, OSError, ValueError) as err:
            self.log.warning("Capacity: could not look up batch %s (kept in the ledger): %s", batch_id, err)
            return None

    def download_file(self, file_id: str, out: IO[bytes], chunk_size: int = 1 << 20) -> int:
        """
        Stream a batch's results into ``out`` as output lines; return the bytes written.

        ``file_id`` is the batch id (what :func:`anthropic_format.batch_json` gives as its output
        file). Each result line is translated by :func:`anthropic_format.result_line`; a line that is
        not JSON is written as it came, so the merge counts it as foreign instead of losing it.
        """
        written = 0
        with self.client.messages.batches.with_streaming_response.results(file_id) as response:
            for text in response.iter_lines():
                if not text.strip():
                    continue
                try:
                    line = anthropic_format.result_line(json.loads(text))
                except ValueError:
                    line = text.encode()
                out.write(line + b"\n")
                written += len(line) + 1
        return written

    def _iter_batches(self, max_scan: int, since: float | None) -> Iterator[AnthropicBatch]:
        """Yield batches newest first: back to ``since`` when set, else the ``max_scan`` newest."""
        scanned = 0
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 100}
            if after:
                kwargs["after_id"] = after
            raw = self.client.messages.batches.with_raw_response.list(**kwargs)
            page = json.loads(raw.http_response.content)
            data = page.get("data") or []
            for item in data:
                batch = AnthropicBatch(item)
                # Newest first: past ``since`` every later one is older still.
                if batch.created_at < since if since is not None else scanned >= max_scan:
                    return
                scanned += 1
                yield batch
            if not page.get("has_more") or not data:
                return
            after = page.get("last_id") or data[-1].get("id")

    def _result_ids(self, batch_id: str) -> set[str]:
        ids: set[str] = set()
        with self.client.messages.batches.with_streaming_response.results(batch_id) as response:
            for text in response.iter_lines():
                if text.strip():
                    try:
                        custom_id = json.loads(text).get("custom_id")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(custom_id, str):
                        ids.add(custom_id)
        return ids

    def find_batch(
        self,
        metadata: Mapping[str, str],
        max_scan: int = MAX_SCAN,
        since: float | None = None,
        *,
        requests: int | None = None,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = None,
        taken: Callable[[str], bool] | None = None,
    ) -> AnthropicBatch | None:
        """
        Return the batch created for these requests after ``since``, or None.

        Without metadata to match, a batch stands for the round when it was created after ``since``
        (the round's create intent, less the skew margin), holds ``requests`` requests, was not
        cancelled, is not recorded as another round's (``taken``), and, once ended, answers exactly
        the round's custom_ids (read from ``open_stream``). A batch still running shows only its
        counts: one such candidate is taken; two or more cannot be told apart, and the lookup
        refuses to guess (:class:`AmbiguousBatchError`) rather than pay twice or wait on another
        round's batch. Without ``since`` or ``requests`` nothing is found.
        """
        if since is None or requests is None:
            return None
        candidates = [
            b
            for b in self._iter_batches(max_scan, since)
            if b.created_at >= since
            and b.total == requests
            and not b.raw.get("cancel_initiated_at")
            and not (taken is not None and taken(b.id))
        ]
        if not candidates:
            return None
        sent = _custom_ids(open_stream) if open_stream is not None else None
        running: list[AnthropicBatch] = []
        for batch in reversed(candidates):  # oldest first
            if batch.raw.get("processing_status") != "ended":
                running.append(batch)
            elif sent is not None and self._result_ids(batch.id) == sent:
                self.log.info("Batch %s answers exactly this round's %s requests", batch.id, requests)
                return batch
        if len(running) > 1:
            raise AmbiguousBatchError(
                f"{len(running)} running batches ({', '.join(b.id for b in running)}) could each be this "
                f"round's ({requests} requests, created after its create intent); Anthropic's batches carry "
                "no metadata to tell them apart before they end. Nothing is created; retry once they end."
            )
        if running:
            self.log.warning(
                "Batch %s (created after the create intent, %s requests, still running, no other round's) "
                "is taken as this round's; Anthropic's batches carry no metadata to confirm it",
                running[0].id,
                requests,
            )
            return running[0]
        return None

    def create_batch_once(
        self,
        file_id: str,
        endpoint: str,
        metadata: dict[str, str],
        *,
        output_expires_after: dict[str, Any] | None = None,
        since: float | None = None,
        requests: int | None = None,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = None,
        taken: Callable[[str], bool] | None = None,
        attempts: int = CALL_ATTEMPTS,
        backoff: Backoff = CALL_BACKOFF,
    ) -> AnthropicBatch:
        """
        Create a batch of the round's requests (sent inline), never twice.

        The SDK's own retries are off for the create call: before each new attempt, the batch an
        attempt whose answer was lost may have created is looked up (see :meth:`find_batch`).
        ``output_expires_after`` has no Anthropic counterpart (results stay 29 days) and is ignored.
        """
        if open_stream is None:
            raise ValueError("Anthropic batches take their requests inline: open_stream is required")
        if endpoint != anthropic_format.ENDPOINT:
            raise ValueError(f"an Anthropic connection sends {anthropic_format.ENDPOINT}, not {endpoint}")
        client = self.client.with_options(max_retries=0)
        stream = open_stream

        def create() -> AnthropicBatch:
            created = client.post(
                "/v1/messages/batches",
                cast_to=anthropic.types.messages.MessageBatch,
                content=_request_body(stream),
                options={"headers": {"content-type": "application/json"}},
            )
            return AnthropicBatch(created.model_dump(mode="json"))

        def on_retry(err: BaseException, attempt: int, delay: float) -> None:
            message = redact(str(err))
            self.log.warning(
                "Creating the batch failed (%s); attempt %s of %s in %.1fs", message, attempt, attempts, delay
            )

        batch, made = call_once(
            create,
            lambda: self.find_batch(
                metadata, since=since, requests=requests, open_stream=stream, taken=taken
            ),
            errors=_CALL_ERRORS,
            retryable=lambda err: is_transient_status(getattr(err, "status_code", None)),
            on_retry=on_retry,
            attempts=attempts,
            backoff=backoff,
        )
        if not made:
            self.log.info("Batch %s already exists for %s; re-attaching", batch.id, metadata)
        return batch

    # ---- async twins for triggers ---------------------------------------------------------

    async def shared_async_client(self) -> anthropic.AsyncAnthropic:
        """Return one client per event loop and settings, shared by every wait on the triggerer."""
        import hashlib

        from airflow.providers.common.compat.connection import get_async_connection

        conn = await get_async_connection(self.conn_id, hook=self)
        kwargs = self.client_kwargs(conn)
        key = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()
        loop = asyncio.get_running_loop()
        lock, clients = _SHARED_CLIENTS.setdefault(loop, (asyncio.Lock(), {}))
        check = origin_guard(_base_url(kwargs))

        async def guard(request: Any) -> None:
            check(request)

        def build() -> anthropic.AsyncAnthropic:
            http = anthropic.DefaultAsyncHttpxClient(
                event_hooks={"request": [guard]}, verify=client_ssl_context()
            )
            return anthropic.AsyncAnthropic(**kwargs, http_client=http)

        async with lock:
            client = clients.get(key)
            if client is None or client.is_closed():
                client = clients[key] = await asyncio.to_thread(build)
        return client

    async def aget_batch_json(self, batch_id: str) -> dict[str, Any]:
        """
        Return the batch as a Batch object, without blocking the event loop.

        :raises BatchNotFoundError: the API answered 404.
        :raises BatchPollError: any other failure.
        """
        from openai_batch.poller import BatchNotFoundError, BatchPollError

        client = await self.shared_async_client()
        try:
            raw = await client.messages.batches.with_raw_response.retrieve(batch_id)
        except anthropic.NotFoundError as err:
            raise BatchNotFoundError(redact(f"batch {batch_id}: {err.message}"), 404) from None
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as err:
            raise BatchPollError(f"batch {batch_id}: HTTP {err.status_code}", err.status_code) from None
        except anthropic.APIStatusError as err:
            message = redact(f"batch {batch_id}: HTTP {err.status_code}: {err.message}")
            raise BatchPollError(message, err.status_code) from None
        except (anthropic.APIError, anthropic.APIConnectionError) as err:
            raise BatchPollError(f"polling batch {batch_id} failed: {type(err).__name__}") from None
        return anthropic_format.batch_json(json.loads(raw.http_response.content))

    async def acancel_batch(self, batch_id: str) -> bool:
        """Cancel the batch without blocking the event loop; return False when it could not be."""
        client = await self.shared_async_client()
        try:
            await client.messages.batches.cancel(batch_id)
        except (anthropic.APIError, anthropic.APIConnectionError) as err:
            self.log.warning("Could not cancel batch %s: %s", batch_id, redact(str(err)))
            return False
        return True


def _custom_ids(open_stream: Callable[[], AbstractContextManager[IO[bytes]]]) -> set[str]:
    ids: set[str] = set()
    with open_stream() as stream:
        for line in stream:
            if line.strip():
                ids.add(str(json.loads(line)["custom_id"]))
    return ids


def _request_body(open_stream: Callable[[], AbstractContextManager[IO[bytes]]]) -> Iterator[bytes]:
    """Yield the create call's JSON body ``{"requests": [...]}`` in chunks, reading the shard as it goes."""
    with open_stream() as stream:
        parts: list[bytes] = [b'{"requests":[']
        size, first = 0, True
        for line in stream:
            if not line.strip():
                continue
            request = anthropic_format.request_bytes(line)
            parts.append(request if first else b"," + request)
            first = False
            size += len(request) + 1
            if size >= _BODY_CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
        parts.append(b"]}")
        yield b"".join(parts)
