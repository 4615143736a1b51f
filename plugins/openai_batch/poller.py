"""
A lean async client for the one call a trigger repeats: ``GET /batches/{id}``.

A triggerer watching a thousand batches spends most of its CPU in the HTTP client, not in the
triggers: the SDK's client (httpx and httpcore) walks every pooled connection twice per request
and churns through hundreds of sockets when a thousand waits share it. ``BatchStatusPoller``
does only what a status poll needs: one ``aiohttp`` session per event loop and settings, a small
bounded connection pool, a timeout per call, retries with backoff for 408/409/429/5xx and
connection errors (as the SDK retries them), and the JSON of the batch as a dict. Errors are
mapped to ``BatchPollError`` (``BatchNotFoundError`` for 404) with the API's message; the API key
is sent in a header only and never appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from openai_batch.retry import POLL_BACKOFF, is_transient_status
from openai_batch.secrets import api_key_from, redact
from openai_batch.tls import client_ssl_context

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Batches per ``GET /batches`` page (the API's largest page).
LIST_PAGE_SIZE = 100
#: Waits a shared round wakes per turn of the event loop.
WAKE_CHUNK = 50
#: Pages a shared round reads beyond one per 100 waits before it reads the rest one by one: newer
#: batches of other users or runs push a wait's batch further down the listing.
LIST_EXTRA_PAGES = 1

#: Client keyword arguments the poller understands; anything else (workload identity, a custom
#: http client, default query parameters) means the caller keeps the SDK's client.
_SUPPORTED_KWARGS = frozenset(
    {"api_key", "base_url", "organization", "project", "default_headers", "timeout", "max_retries"}
)


class BatchPollError(Exception):
    """
    Raise when the status of a batch could not be read.

    :param message: What went wrong, without credentials.
    :param status: The HTTP status, or None when no response came back (connection error, timeout).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BatchNotFoundError(BatchPollError):
    """Raise when the API answers 404 for a batch: it does not exist for this key."""


@dataclass(frozen=True)
class PollSettings:
    """
    Where and how to poll; built from the same client keyword arguments as the SDK's client.

    :param base_url: The API base URL, ending before ``/batches``.
    :param api_key: The bearer key (never logged, never in ``repr``).
    :param headers: Extra headers (organization, project, the connection's default headers).
    :param timeout: Seconds for one HTTP call, connection included.
    :param max_retries: Retries of one call after a retryable error.
    :param pool_size: Most connections open at once; more concurrent polls wait for a free one.
    """

    base_url: str
    api_key: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 60.0
    max_retries: int = 1
    pool_size: int = 64

    @classmethod
    def from_client_kwargs(cls, kwargs: Mapping[str, Any], **overrides: Any) -> PollSettings | None:
        """
        Return settings equivalent to ``AsyncOpenAI(**kwargs)``, or None if the poller cannot honour them.

        Like the SDK, a missing key falls back to ``OPENAI_API_KEY`` and a missing base URL to
        ``OPENAI_BASE_URL``. Unknown options (workload identity, a custom HTTP client) return None.
        """
        if set(kwargs) - _SUPPORTED_KWARGS:
            return None
        raw_key = kwargs.get("api_key")
        if raw_key is not None and not isinstance(raw_key, str):
            return None
        api_key = api_key_from(raw_key)  # stripped and checked as for the SDK's clients
        if not api_key:
            return None
        base_url = str(kwargs.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        headers: dict[str, str] = {}
        if kwargs.get("organization"):
            headers["OpenAI-Organization"] = str(kwargs["organization"])
        if kwargs.get("project"):
            headers["OpenAI-Project"] = str(kwargs["project"])
        headers.update({str(k): str(v) for k, v in (kwargs.get("default_headers") or {}).items()})
        timeout = kwargs.get("timeout")
        values: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "api_key": api_key,
            "headers": tuple(sorted(headers.items())),
        }
        if isinstance(timeout, int | float):
            values["timeout"] = float(timeout)
        if isinstance(kwargs.get("max_retries"), int):
            values["max_retries"] = kwargs["max_retries"]
        values.update(overrides)
        return cls(**values)

    def key(self) -> str:
        """Return a digest that identifies these settings (the key only ever as part of a hash)."""
        raw = json.dumps(
            [self.base_url, self.api_key, self.headers, self.timeout, self.max_retries, self.pool_size]
        )
        return hashlib.sha256(raw.encode()).hexdigest()


async def _ssl_context() -> ssl.SSLContext:
    # The SDK clients' context (openai_batch.tls); its first build blocks, so it runs in a worker thread.
    return await asyncio.to_thread(client_ssl_context)


class BatchStatusPoller:
    """
    Read batch statuses over one bounded ``aiohttp`` session.

    Build it with ``shared_poller`` so that every trigger on an event loop shares one session.

    :param settings: Where and how to poll.
    :param ssl_context: TLS settings for ``https`` base URLs.
    :param proxy: Proxy URL for every call (``env_proxy`` finds the one the environment sets).
    """

    def __init__(
        self, settings: PollSettings, ssl_context: ssl.SSLContext | None = None, proxy: str | None = None
    ) -> None:
        self.settings = settings
        self.proxy = proxy
        headers = {
            **dict(settings.headers),
            "Authorization": f"Bearer {settings.api_key}",
            "Accept": "application/json",
        }
        connector = aiohttp.TCPConnector(
            limit=settings.pool_size,
            limit_per_host=settings.pool_size,
            ssl=ssl_context if ssl_context is not None else True,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            # No per-call look-up of proxy variables and .netrc: aiohttp does it in a worker
            # thread on every request. The proxy is looked up once instead (``env_proxy``).
            trust_env=False,
            raise_for_status=False,
        )
        self.calls = 0
        self.listings = 0
        self._rounds = _Rounds(self)

    @property
    def closed(self) -> bool:
        """Whether the session has been closed."""
        return self._session.closed

    async def close(self) -> None:
        """Close the session and its connections."""
        await self._rounds.close()
        await self._session.close()

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        """
        Return the batch as the API's JSON object.

        :raises BatchNotFoundError: the API answered 404.
        :raises BatchPollError: any other error, once the retries are used up.
        """
        url = f"{self.settings.base_url}/batches/{batch_id}"
        attempt = 0
        while True:
            try:
                return await self._get_once(url, batch_id)
            except BatchNotFoundError:
                raise
            except BatchPollError as err:
                if not is_transient_status(err.status) or attempt >= self.settings.max_retries:
                    raise
                attempt += 1
                delay = POLL_BACKOFF.delay(attempt)
                log.debug("Polling batch %s failed (%s); retry %s in %.2fs", batch_id, err, attempt, delay)
                await asyncio.sleep(delay)

    async def list_page(self, after: str | None = None, limit: int | None = None) -> tuple[list[Any], bool]:
        """
        Return one page of ``GET /batches`` (newest first) and whether more pages follow.

        :raises BatchPollError: the page could not be read (no retries: callers fall back to GETs).
        """
        query = f"?limit={limit or LIST_PAGE_SIZE}" + (f"&after={after}" if after else "")
        self.calls += 1
        self.listings += 1
        try:
            url = f"{self.settings.base_url}/batches{query}"
            async with self._session.get(url, proxy=self.proxy) as response:
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as err:
            raise BatchPollError(f"listing batches failed: {type(err).__name__}") from None
        if status != 200:
            message = self._redact(f"listing batches: HTTP {status}: {_api_message(body)}")
            raise BatchPollError(message, status)
        try:
            page = json.loads(body)
            data, has_more = page["data"], bool(page.get("has_more"))
        except (ValueError, KeyError, TypeError):
            raise BatchPollError("listing batches: the response is not a list", status) from None
        if not isinstance(data, list):
            raise BatchPollError("listing batches: the response is not a list", status)
        return data, has_more

    async def status_after(self, batch_id: str, delay: float) -> dict[str, Any]:
        """
        Return the batch's status as read by a shared round between ``delay / 2`` and ``delay`` from now.

        Every wait on the loop that asks with the same settings is answered by the same rounds: a
        round lists recent batches (``GET /batches``, 100 per call) and answers every wait it
        finds there, then reads the others one by one. Waits that ask at different moments fall
        into step after their first round, so N waits cost about ``N / 100`` calls per interval
        instead of N.

        :raises BatchNotFoundError: the API answered 404 for this batch.
        :raises BatchPollError: it could not be read in this round.
        """
        return await self._rounds.ask(batch_id, delay)

    async def _get_once(self, url: str, batch_id: str) -> dict[str, Any]:
        self.calls += 1
        try:
            async with self._session.get(url, proxy=self.proxy) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            raise BatchPollError(
                f"polling batch {batch_id} timed out after {self.settings.timeout:g}s"
            ) from None
        except aiohttp.ClientError as err:
            raise BatchPollError(f"polling batch {batch_id} failed: {type(err).__name__}") from None
        if status == 200:
            try:
                batch = json.loads(body)
            except ValueError:
                raise BatchPollError(f"batch {batch_id}: the response is not JSON", status) from None
            if not isinstance(batch, dict) or not isinstance(batch.get("status"), str):
                raise BatchPollError(f"batch {batch_id}: the response is not a batch", status)
            return batch
        if status in (401, 403):
            # A refused key: a server may quote part of it, so only the status and code are kept.
            message = self._redact(f"batch {batch_id}: HTTP {status} (code {_api_code(body)})")
        else:
            message = self._redact(f"batch {batch_id}: HTTP {status}: {_api_message(body)}")
        if status == 404:
            raise BatchNotFoundError(message, status)
        raise BatchPollError(message, status)

    def _redact(self, text: str) -> str:
        text = redact(text)
        return text.replace(self.settings.api_key, "***") if self.settings.api_key else text


@dataclass(eq=False)
class _Ask:
    batch_id: str
    earliest: float
    deadline: float
    answer: asyncio.Future[dict[str, Any]]


class _Rounds:
    """
    The shared status rounds of one poller: one task runs a round when the first wait's deadline
    comes and answers every wait whose window has opened by then.
    """

    def __init__(self, poller: BatchStatusPoller) -> None:
        self.poller = poller
        self.asks: list[_Ask] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.rounds = 0

    async def ask(self, batch_id: str, delay: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        ask = _Ask(batch_id, now + delay / 2, now + delay, loop.create_future())
        self.asks.append(ask)
        self.changed.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return await ask.answer

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.asks = [a for a in self.asks if not a.answer.done()]  # cancelled ones (woken by an event)
            if not self.asks:
                return
            self.changed.clear()
            wait = min(a.deadline for a in self.asks) - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)
                continue
            now = loop.time()
            due = [a for a in self.asks if a.earliest <= now]
            self.asks = [a for a in self.asks if a.earliest > now]
            self.rounds += 1
            await self._answer(due)

    async def _answer(self, due: list[_Ask]) -> None:
        wanted = {a.batch_id for a in due}
        found: dict[str, dict[str, Any]] = {}
        if len(wanted) > 1:
            found = await self._from_listing(wanted)
        missing = sorted(wanted - set(found))
        results = await asyncio.gather(*(self.poller.get_batch(b) for b in missing), return_exceptions=True)
        outcome: dict[str, dict[str, Any] | BaseException] = dict(found)
        outcome.update(zip(missing, results, strict=True))
        for n, ask in enumerate(due, 1):
            if ask.answer.done():
                continue
            value = outcome[ask.batch_id]
            if isinstance(value, BaseException):
                error = value if isinstance(value, Exception) else BatchPollError(str(value))
                ask.answer.set_exception(error)
            else:
                ask.answer.set_result(value)
            if n % WAKE_CHUNK == 0:
                # A thousand waits answered at once would all run in one turn of the loop and
                # hold up every other trigger on it; let the loop turn between chunks.
                await asyncio.sleep(0)

    async def _from_listing(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """Page through recent batches until every wanted one is found or the pages are used up."""
        found: dict[str, dict[str, Any]] = {}
        after: str | None = None
        pages = -(-len(wanted) // LIST_PAGE_SIZE) + LIST_EXTRA_PAGES
        for _ in range(pages):
            try:
                data, has_more = await self.poller.list_page(after)
            except BatchPollError as err:
                log.debug("Listing batches failed (%s); reading each batch instead", err)
                return found
            for item in data:
                # Only what was asked for, and only what looks like a batch: the rest reads one by one.
                if (
                    isinstance(item, dict)
                    and item.get("id") in wanted
                    and isinstance(item.get("status"), str)
                ):
                    found[item["id"]] = item
            if len(found) == len(wanted) or not has_more or not data:
                break
            last = data[-1]
            after = last.get("id") if isinstance(last, dict) else None
            if not isinstance(after, str):
                break
        return found


def _api_code(body: bytes) -> str:
    """Return the ``error.code`` of an API error body, or ``unknown``."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return str(code) if code else "unknown"


def _api_message(body: bytes) -> str:
    """Return the ``error.message`` of an API error body, or a short excerpt of the body."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str):
            return message[:500]
    except (ValueError, KeyError, TypeError):
        pass
    return body[:200].decode("utf-8", "replace") or "(empty body)"


@dataclass
class _Shared:
    poller: BatchStatusPoller
    users: int = 0


#: Pollers shared per event loop and settings; an entry goes away with its last user.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[asyncio.Lock, dict[str, _Shared]]] = (
    weakref.WeakKeyDictionary()
)


def env_proxy(url: str) -> str | None:
    """Return the proxy that ``HTTP(S)_PROXY``/``NO_PROXY`` choose for ``url`` (as the SDK's client does)."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


#: Set to 1 in the triggerer's environment: see ``freeze_startup_objects``.
GC_FREEZE_ENV = "OPENAI_BATCH_GC_FREEZE"
_FROZEN = False


def freeze_startup_objects() -> bool:
    """
    Move every object alive now out of the garbage collector's scans, once per process, if enabled.

    Called when the first poller of a process starts, that is after the triggerer has imported
    Airflow, the SDK and this package: those ~200,000 long-lived objects otherwise make each full
    collection take 0.2-0.6 s, and a full collection stops every trigger on the loop. Enabled by
    ``OPENAI_BATCH_GC_FREEZE=1``; garbage that exists at that moment is kept (a bounded, one-off cost).
    """
    global _FROZEN
    if _FROZEN or os.environ.get(GC_FREEZE_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return False
    _FROZEN = True
    gc.freeze()
    log.info("Froze %s start-up objects out of garbage collection (%s)", gc.get_freeze_count(), GC_FREEZE_ENV)
    return True


@asynccontextmanager
async def shared_poller(settings: PollSettings) -> AsyncIterator[BatchStatusPoller]:
    """
    Yield the poller shared by every user with the same settings on the running event loop.

    The first user opens the session, the last one to leave closes it, so a triggerer running a
    thousand waits holds one session and at most ``pool_size`` connections.
    """
    lock, pollers = _SHARED.setdefault(asyncio.get_running_loop(), (asyncio.Lock(), {}))
    key = settings.key()
    async with lock:  # a thousand waits starting at once build one poller, not a thousand
        entry = pollers.get(key)
        if entry is None or entry.poller.closed:
            context = await _ssl_context() if settings.base_url.startswith("https:") else None
            proxy = await asyncio.to_thread(env_proxy, settings.base_url)
            entry = pollers[key] = _Shared(BatchStatusPoller(settings, context, proxy))
            freeze_startup_objects()
        entry.users += 1
    try:
        yield entry.poller
    finally:
        entry.users -= 1
        if entry.users == 0:
            if pollers.get(key) is entry:
                del pollers[key]
            await entry.poller.close()
