"""Batch webhook events and their Standard Webhooks signatures, as OpenAI sends them; pure functions.

A delivery is an HTTP POST of the event's JSON with three headers: ``webhook-id`` (one per event,
the same on every retry), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of ``f"{webhook_id}.{timestamp}.{body}"``). The
key is the base64-decoded part after ``whsec_`` of a ``whsec_...`` secret, else the secret's UTF-8
bytes, which is what ``openai.OpenAI(...).webhooks.unwrap()`` checks. Tests may import these
functions to forge deliveries of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "EVENT_TYPES",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "batch_event",
    "check_secret",
    "check_urls",
    "delivery_headers",
    "event_body",
    "new_event_id",
    "new_webhook_id",
    "resolve_secret",
    "sign",
    "signing_key",
    "wrong_secret",
]

#: The event type sent when a batch reaches each final status.
EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
#: Environment variable read for the signing secret when none is given (the SDK reads the same one).
SECRET_ENV = "OPENAI_WEBHOOK_SECRET"
#: Environment variable naming a file that holds the secret, read when ``SECRET_ENV`` is unset or empty.
SECRET_FILE_ENV = "OPENAI_WEBHOOK_SECRET_FILE"
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """Return the HMAC key of a secret: base64-decoded after ``whsec_``, else the UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int | str, body: str | bytes) -> str:
    """Return the ``webhook-signature`` value ``v1,<base64>`` of one delivery attempt."""
    text = body.decode() if isinstance(body, bytes) else body
    signed = f"{webhook_id}.{timestamp}.{text}".encode()
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def delivery_headers(secret: str, webhook_id: str, timestamp: int, body: str | bytes) -> dict[str, str]:
    """Return the headers of one delivery attempt: content type and the three Standard Webhooks headers."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def wrong_secret(secret: str) -> str:
    """Return a secret that differs from ``secret`` (for deliveries that must fail verification)."""
    key = hashlib.sha256(b"not-the-endpoint-secret\x1f" + signing_key(secret)).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def new_webhook_id() -> str:
    """Return a fresh delivery id ``wh_<32 hex>``."""
    return "wh_" + secrets.token_hex(16)


def new_event_id() -> str:
    """Return a fresh event id ``evt_<32 hex>``."""
    return "evt_" + secrets.token_hex(16)


def batch_event(batch_id: str, status: str, created_at: int, event_id: str | None = None) -> dict[str, Any]:
    """Return the event sent when batch ``batch_id`` reached final ``status`` at ``created_at``."""
    return {
        "id": event_id or new_event_id(),
        "object": "event",
        "created_at": created_at,
        "type": EVENT_TYPES[status],
        "data": {"id": batch_id},
    }


def event_body(event: dict[str, Any]) -> str:
    """Return the JSON text of an event, as posted and signed."""
    return json.dumps(event, separators=(",", ":"))


def resolve_secret(secret: str | None) -> str | None:
    """
    Return ``secret``, else ``OPENAI_WEBHOOK_SECRET``, else the content of the file that
    ``OPENAI_WEBHOOK_SECRET_FILE`` names (a secret generated on a shared volume), else None.
    """
    found = secret or os.environ.get(SECRET_ENV, "").strip()
    if not found and os.environ.get(SECRET_FILE_ENV):
        try:
            with open(os.environ[SECRET_FILE_ENV]) as handle:
                found = handle.read().strip()
        except OSError:
            found = ""
    return found or None


def check_secret(secret: Any) -> str:
    """Return ``secret`` if it can sign; raise ``ValueError`` otherwise (the message never shows it)."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("The webhook secret must be a non-empty string (whsec_<base64>).")
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("The webhook secret's part after 'whsec_' is not valid base64.") from None
        if not key:
            raise ValueError("The webhook secret's part after 'whsec_' is empty.")
    return secret


def check_urls(urls: Any) -> list[str]:
    """Return ``urls`` as a list if each is an http(s) URL with a host; raise ``ValueError`` otherwise."""
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise ValueError("The webhook URLs must be a list of strings.")
    checked: list[str] = []
    for url in (u.strip() for u in urls if u.strip()):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Not an http(s) URL with a host: {url!r}")
        checked.append(url)
    return checked
