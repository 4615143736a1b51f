"""What answers the requests of a message batch: the params check, a deterministic echo and a proxy.

The echo answers a Message derived from the request alone. The proxy posts each request's params to an
upstream Messages API (``<upstream-base-url>/messages``: the real API at ``https://api.anthropic.com/v1``
or any server with an Anthropic-compatible ``/v1/messages``), with the ``x-api-key`` and
``anthropic-version`` headers and the OpenAI proxy's concurrency, retries and timeout.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol

from openai_emulator.anthropic_models import is_claude_model
from openai_emulator.backends import BackendResult, ProxyBackend
from openai_emulator.validation import estimate_tokens

if TYPE_CHECKING:
    from openai_emulator.settings import EmulatorSettings

ANTHROPIC_VERSION = "2023-06-01"
MESSAGES_ENDPOINT = "/v1/messages"
ROLES = frozenset({"user", "assistant"})


class MessagesBackend(Protocol):
    """Answers Messages API request bodies."""

    async def answer_many(self, bodies: list[dict[str, Any]], keys: list[str]) -> list[BackendResult]:
        """Answer every body, in order; ``keys`` name each request uniquely (batch id + custom_id)."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


def check_params(params: Any, models: frozenset[str] | None) -> tuple[str, str] | None:
    """Return ``(error_type, message)`` when the service would refuse these params, else None.

    The service checks a batch request's params when it processes the request, not at create: a bad
    request becomes an ``errored`` result. ``models`` is the strict model list, or None to take any.
    """
    if not isinstance(params, dict):
        return "invalid_request_error", "params: Input should be an object"
    for name in ("model", "max_tokens", "messages"):
        if name not in params:
            return "invalid_request_error", f"{name}: Field required"
    model, max_tokens, messages = params["model"], params["max_tokens"], params["messages"]
    if not isinstance(model, str) or not model:
        return "invalid_request_error", "model: Input should be a valid string"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "invalid_request_error", "max_tokens: Input should be an integer greater than or equal to 1"
    if not isinstance(messages, list) or not messages:
        return "invalid_request_error", "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return "invalid_request_error", f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return "invalid_request_error", f"messages.{index}.content: Field required"
    if params.get("stream") is True:
        return "invalid_request_error", "stream: Streaming is not supported in the Message Batches API"
    if models is not None and not is_claude_model(model, models):
        return "not_found_error", f"model: {model}"
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def echo_message(params: dict[str, Any], key: str) -> dict[str, Any]:
    """Return the Message the echo backend answers: ``Echo: <last user text>``, cut at ``max_tokens``.

    The text and usage depend on the params only; the id also depends on ``key``, so two identical
    requests get ids of their own.
    """
    messages = params["messages"]
    text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    answer = f"Echo: {text}"
    stop_reason = "end_turn"
    max_tokens = int(params["max_tokens"])
    if estimate_tokens(len(answer)) > max_tokens:
        answer, stop_reason = answer[: max_tokens * 4], "max_tokens"
    prompt = json.dumps([params.get("system"), messages], sort_keys=True, default=str)
    digest = hashlib.sha256(f"{key}\x1f{prompt}".encode()).hexdigest()
    return {
        "id": "msg_" + digest[:24],
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": answer}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": estimate_tokens(len(prompt)),
            "output_tokens": estimate_tokens(len(answer)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "batch",
        },
    }


class EchoMessagesBackend:
    """Deterministic Messages answers with plausible usage and no network."""

    async def answer_many(self, bodies: list[dict[str, Any]], keys: list[str]) -> list[BackendResult]:
        """Answer every body, in order."""
        return [
            BackendResult(
                200, echo_message(body, key), "req_" + hashlib.sha256(key.encode()).hexdigest()[:24]
            )
            for body, key in zip(bodies, keys, strict=True)
        ]

    async def aclose(self) -> None:
        """Release resources (none)."""


class ProxyMessagesBackend(ProxyBackend):
    """Send each request's params to an upstream ``/messages`` with Anthropic's headers.

    :param base_url: upstream base URL including ``/v1``, e.g. ``https://api.anthropic.com/v1``.
    :param api_key: key sent upstream as ``x-api-key``.
    :param concurrency: most requests in flight at once.
    :param retries: retries on 429, 5xx and connection errors.
    :param timeout: seconds per upstream request.
    """

    def __init__(
        self, base_url: str, api_key: str | None, concurrency: int, retries: int, timeout: float = 600.0
    ) -> None:
        super().__init__(base_url, api_key, concurrency, retries, timeout)
        # Anthropic's API authenticates with x-api-key; the bearer header the OpenAI proxy sets is dropped.
        self._client.headers.pop("Authorization", None)
        self._client.headers.update(
            {"x-api-key": api_key or "emulator", "anthropic-version": ANTHROPIC_VERSION}
        )

    async def answer_many(self, bodies: list[dict[str, Any]], keys: list[str]) -> list[BackendResult]:
        """Answer every body, in order, with up to ``concurrency`` upstream requests at a time."""
        return await self.handle_many(MESSAGES_ENDPOINT, bodies, keys)


def make_messages_backend(settings: EmulatorSettings) -> MessagesBackend:
    """Return the Messages backend matching ``--backend`` (echo or proxy)."""
    if settings.backend == "proxy" and settings.upstream_base_url:
        return ProxyMessagesBackend(
            settings.upstream_base_url,
            settings.upstream_api_key,
            settings.proxy_concurrency,
            settings.proxy_retries,
            settings.proxy_timeout,
        )
    return EchoMessagesBackend()
