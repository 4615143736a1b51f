"""Sending batch webhooks: one signed event per ended batch to every configured URL, with retries and faults.

Deliveries run as asyncio tasks on the server's loop, so neither the worker nor the API ever waits for a
receiver. They live in memory only: deliveries still pending when the server stops are lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from openai_emulator.webhooks import (
    EVENT_TYPES,
    batch_event,
    check_secret,
    check_urls,
    delivery_headers,
    event_body,
    new_webhook_id,
    resolve_secret,
    wrong_secret,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from openai_emulator.models import BatchRecord
    from openai_emulator.state import EmulatorState

logger = logging.getLogger("openai_emulator.webhooks")

#: The ``Stats`` counters of deliveries, by their name in ``GET /_emulator/webhooks``.
COUNTERS = {
    "sent": "webhooks_sent",
    "delivered": "webhooks_delivered",
    "failed_attempts": "webhooks_failed_attempts",
    "abandoned": "webhooks_abandoned",
    "dropped": "webhooks_dropped",
    "duplicated": "webhooks_duplicated",
    "bad_signature": "webhooks_bad_signature",
}


@dataclass
class Delivery:
    """One event on its way to one URL: every attempt and copy carries the same id and body."""

    url: str
    webhook_id: str
    body: str
    batch_id: str
    event_type: str
    copies: int = 1
    bad_signature: bool = False


class WebhookDispatcher:
    """Sends the event of each ended batch to the configured URLs.

    :param state: the shared emulator state (settings, faults, random generator, counters).
    """

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self.urls: list[str] = check_urls(state.settings.webhook_urls)
        self._secret: str | None = resolve_secret(state.settings.webhook_secret)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[Delivery] = []
        self._flush: asyncio.Task[None] | None = None
        self._pending = 0
        self._closed = False

    # Configuration

    def configure(self, urls: Any = None, secret: Any = None) -> None:
        """Replace the URLs and/or the secret (None keeps one); raise ``ValueError`` on bad values."""
        new_urls = self.urls if urls is None else check_urls(urls)
        new_secret = self._secret if secret is None else check_secret(secret)
        if new_urls and new_secret is None:
            raise ValueError(
                "Webhook URLs need a signing secret: send 'secret' (whsec_...) or start the emulator "
                "with --webhook-secret or OPENAI_WEBHOOK_SECRET."
            )
        self.urls, self._secret = new_urls, new_secret

    def describe(self) -> dict[str, Any]:
        """Return the URLs, the retry settings and the delivery counts; never the secret."""
        settings = self._state.settings
        counters = self._state.stats.snapshot()
        return {
            "urls": list(self.urls),
            "secret_set": self._secret is not None,
            "timeout_seconds": settings.webhook_timeout,
            "max_attempts": settings.webhook_max_attempts,
            "retry_seconds": settings.webhook_retry_seconds,
            "pending": self._pending,
            "deliveries": {name: counters.get(key, 0) for name, key in COUNTERS.items()},
        }

    # Lifecycle

    async def start(self) -> None:
        """Bind to the running loop; events of batches that end before this are not sent."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._closed = False

    async def aclose(self) -> None:
        """Cancel every pending delivery and close the HTTP client."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()
        self._flush = None
        self._pending = 0
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # Events

    def batch_ended(self, record: BatchRecord) -> None:
        """Queue the event of a batch that just reached a final status; returns at once."""
        event_type = EVENT_TYPES.get(record.status)
        loop = self._loop
        if event_type is None or not self.urls or self._closed or loop is None:
            return
        ended_at = getattr(record, f"{record.status}_at", None) or int(time.time())
        body = event_body(batch_event(record.id, record.status, int(ended_at)))
        webhook_id = new_webhook_id()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._queue(record.id, event_type, webhook_id, body)
        else:
            loop.call_soon_threadsafe(self._queue, record.id, event_type, webhook_id, body)

    def _queue(self, batch_id: str, event_type: str, webhook_id: str, body: str) -> None:
        """Decide the faults of each URL's delivery and start it (on the loop)."""
        if self._closed:
            return
        faults = self._state.faults
        rng = self._state.rng
        stats = self._state.stats
        for url in list(self.urls):
            if faults.webhook_drop_rate > 0 and rng.random() < faults.webhook_drop_rate:
                stats.incr("webhooks_dropped")
                logger.info("Webhook %s (%s of %s) to %s: dropped", webhook_id, event_type, batch_id, url)
                continue
            delivery = Delivery(url, webhook_id, body, batch_id, event_type)
            if faults.webhook_bad_signature_rate > 0 and rng.random() < faults.webhook_bad_signature_rate:
                delivery.bad_signature = True
                stats.incr("webhooks_bad_signature")
            if faults.webhook_duplicate_rate > 0 and rng.random() < faults.webhook_duplicate_rate:
                delivery.copies = 2
                stats.incr("webhooks_duplicated")
            self._pending += 1
            delay = max(0.0, float(faults.webhook_delay_ms)) / 1000
            if faults.webhook_reorder:
                self._held.append(delivery)
                if self._flush is None:
                    self._flush = self._spawn(self._release_held(delay))
            else:
                self._spawn(self._deliver(delivery, delay))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("Webhook delivery failed inside the emulator", exc_info=exc)

    # Sending

    async def _deliver(self, delivery: Delivery, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self._send(delivery)

    async def _release_held(self, delay: float) -> None:
        """After the hold, send the first attempt of each held delivery, newest first, one after another."""
        await asyncio.sleep(delay)
        group, self._held, self._flush = self._held, [], None
        for delivery in reversed(group):
            ok = await self._attempt(delivery)
            self._spawn(self._send(delivery, first_result=ok))

    async def _send(self, delivery: Delivery, first_result: bool | None = None) -> None:
        """Deliver every copy, each retried with exponential backoff until a 2xx or the last attempt."""
        try:
            for copy in range(delivery.copies):
                ok = first_result if copy == 0 and first_result is not None else await self._attempt(delivery)
                attempt = 1
                while not ok and attempt < self._state.settings.webhook_max_attempts:
                    await asyncio.sleep(self._state.settings.webhook_retry_seconds * 2 ** (attempt - 1))
                    attempt += 1
                    ok = await self._attempt(delivery)
                if not ok:
                    self._state.stats.incr("webhooks_abandoned")
                    logger.warning(
                        "Webhook %s (%s of %s) to %s: given up after %d attempts",
                        delivery.webhook_id,
                        delivery.event_type,
                        delivery.batch_id,
                        delivery.url,
                        attempt,
                    )
        finally:
            self._pending = max(0, self._pending - 1)

    async def _attempt(self, delivery: Delivery) -> bool:
        """POST the event once; return whether the receiver answered 2xx."""
        client, secret = self._client, self._secret
        if client is None or secret is None:
            return False
        if delivery.bad_signature:
            secret = wrong_secret(secret)
        headers = delivery_headers(secret, delivery.webhook_id, int(time.time()), delivery.body)
        stats = self._state.stats
        stats.incr("webhooks_sent")
        try:
            response = await client.post(
                delivery.url,
                content=delivery.body.encode(),
                headers=headers,
                timeout=self._state.settings.webhook_timeout,
            )
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            stats.incr("webhooks_failed_attempts")
            logger.info("Webhook %s to %s: %s", delivery.webhook_id, delivery.url, type(exc).__name__)
            return False
        if 200 <= response.status_code < 300:
            stats.incr("webhooks_delivered")
            return True
        stats.incr("webhooks_failed_attempts")
        logger.info("Webhook %s to %s: HTTP %d", delivery.webhook_id, delivery.url, response.status_code)
        return False
