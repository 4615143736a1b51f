"""Backends that answer the requests inside a batch: a deterministic echo and a proxy to a real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
import struct
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from openai_emulator.validation import estimate_tokens

if TYPE_CHECKING:
    from openai_emulator.settings import EmulatorSettings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class BackendResult:
    """The upstream answer to one request line."""

    status_code: int
    body: dict[str, Any]
    request_id: str


class Backend(Protocol):
    """Answers the bodies of batch requests."""

    async def handle_many(
        self, endpoint: str, bodies: list[dict[str, Any]], keys: list[str] | None = None
    ) -> list[BackendResult]:
        """Answer every body, in order; ``keys`` name each request uniquely (batch id + custom_id)."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return " ".join(t for t in texts if isinstance(t, str))
    return ""


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _inputs(value: Any) -> list[Any]:
    """Split an embeddings/moderations ``input`` into its items."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def png_image(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Return a valid PNG of one colour (8-bit RGB, no interlace)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


# Output image tokens of gpt-image models for a square image, by quality (OpenAI's image guide).
IMAGE_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
IMAGE_INPUT_TOKENS = 65  # per input image of an edit, low input fidelity
IMAGES_RESPONSE_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
VIDEO_SIZES = frozenset({"720x1280", "1280x720", "1024x1792", "1792x1024"})
VIDEO_SECONDS = frozenset({"4", "8", "12"})
ECHO_IMAGE_SIDE = 8


def _vector(item: Any, dimensions: int) -> list[float]:
    seed = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest()
    while len(seed) < dimensions:
        seed += hashlib.sha256(seed).digest()
    raw = [(b - 127.5) / 127.5 for b in seed[:dimensions]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


class EchoBackend:
    """Deterministic answers derived from the request, with plausible token usage and no network.

    :param embedding_dimensions: length of embedding vectors.
    """

    def __init__(self, embedding_dimensions: int = 8) -> None:
        self.embedding_dimensions = embedding_dimensions

    async def handle_many(
        self, endpoint: str, bodies: list[dict[str, Any]], keys: list[str] | None = None
    ) -> list[BackendResult]:
        """Answer every body, in order."""
        if keys is None:
            return [self.handle(endpoint, body) for body in bodies]
        return [self.handle(endpoint, body, key) for body, key in zip(bodies, keys, strict=True)]

    async def aclose(self) -> None:
        """Release resources (none)."""

    def handle(self, endpoint: str, body: dict[str, Any], request_key: str | None = None) -> BackendResult:
        """Answer one request body.

        The answer's content depends on the body only; its ids (``request_id``, the body's ``id``)
        also depend on ``request_key``, so two identical bodies in one batch or in two batches still get
        ids of their own. Without a key (a synchronous call) the ids are random.
        """
        content_key = _digest(endpoint, json.dumps(body, sort_keys=True, default=str))
        key = _digest(request_key or secrets.token_hex(16), content_key)
        created = int(time.time())
        model = str(body.get("model") or "omni-moderation-latest")
        request_id = "req_" + key[:32]
        if endpoint in ("/v1/images/generations", "/v1/images/edits"):
            return BackendResult(200, self._images(content_key, created, endpoint, body), request_id)
        if endpoint == "/v1/videos":
            return BackendResult(200, self._video(key, created, body), request_id)
        if endpoint == "/v1/chat/completions":
            payload = self._chat(key, created, model, body)
        elif endpoint == "/v1/completions":
            payload = self._completion(key, created, model, body)
        elif endpoint == "/v1/embeddings":
            payload = self._embeddings(model, body)
        elif endpoint == "/v1/moderations":
            payload = self._moderations(key, model, body)
        elif endpoint == "/v1/responses":
            payload = self._responses(key, created, model, body)
        else:
            error = {"message": f"Unsupported endpoint {endpoint}", "type": "invalid_request_error"}
            return BackendResult(404, {"error": {**error, "param": None, "code": None}}, request_id)
        return BackendResult(200, payload, request_id)

    @staticmethod
    def _chat(key: str, created: int, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text = _last_user_text(body.get("messages"))
        answer = f"Echo: {text}"
        prompt_tokens = estimate_tokens(len(json.dumps(body.get("messages"))))
        completion_tokens = estimate_tokens(len(answer))
        return {
            "id": "chatcmpl-" + key[:24],
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_emulator",
        }

    @staticmethod
    def _completion(key: str, created: int, model: str, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        answer = f"Echo: {prompt_text}"
        prompt_tokens = estimate_tokens(len(prompt_text))
        completion_tokens = estimate_tokens(len(answer))
        return {
            "id": "cmpl-" + key[:24],
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        items = _inputs(body.get("input"))
        prompt_tokens = sum(estimate_tokens(len(json.dumps(item))) for item in items)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(item, self.embedding_dimensions)}
                for i, item in enumerate(items)
            ],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    @staticmethod
    def _moderations(key: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        categories = (
            "harassment",
            "harassment/threatening",
            "hate",
            "hate/threatening",
            "illicit",
            "illicit/violent",
            "self-harm",
            "self-harm/instructions",
            "self-harm/intent",
            "sexual",
            "sexual/minors",
            "violence",
            "violence/graphic",
        )
        results = [
            {
                "flagged": False,
                "categories": dict.fromkeys(categories, False),
                "category_scores": dict.fromkeys(categories, 0.0001),
                "category_applied_input_types": {c: ["text"] for c in categories},
            }
            for _ in _inputs(body.get("input"))
        ]
        return {"id": "modr-" + key[:24], "model": model, "results": results}

    @staticmethod
    def _responses(key: str, created: int, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text = _last_user_text(body.get("input"))
        answer = f"Echo: {text}"
        input_tokens = estimate_tokens(len(json.dumps(body.get("input"))))
        output_tokens = estimate_tokens(len(answer))
        return {
            "id": "resp_" + key[:24],
            "object": "response",
            "created_at": created,
            "completed_at": created,
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "model": model,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": None,
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "truncation": body.get("truncation", "disabled"),
            "user": body.get("user"),
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + key[24:48],
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}],
                }
            ],
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }

    @staticmethod
    def _images(content_key: str, created: int, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer an image generation or edit: ``n`` small base64 PNGs, usage as gpt-image reports it."""
        n = body.get("n") or 1
        n = n if isinstance(n, int) and 1 <= n <= 10 else 1
        model = str(
            body.get("model") or ("dall-e-2" if endpoint == "/v1/images/generations" else "gpt-image-1.5")
        )
        data = []
        for index in range(n):
            shade = bytes.fromhex(_digest(content_key, str(index))[:6])
            png = png_image(ECHO_IMAGE_SIDE, ECHO_IMAGE_SIDE, (shade[0], shade[1], shade[2]))
            data.append({"b64_json": base64.b64encode(png).decode("ascii")})
        payload: dict[str, Any] = {"created": created, "data": data, "output_format": "png"}
        size = body.get("size")
        if size in IMAGES_RESPONSE_SIZES or size in (None, "auto"):
            payload["size"] = size if size in IMAGES_RESPONSE_SIZES else "1024x1024"
        quality = body.get("quality")
        if quality in IMAGE_OUTPUT_TOKENS or quality in (None, "auto"):
            payload["quality"] = quality if quality in IMAGE_OUTPUT_TOKENS else "medium"
        background = body.get("background")
        payload["background"] = "transparent" if background == "transparent" else "opaque"
        if model.startswith("dall-e"):
            return payload  # DALL-E answers carry no token usage
        text_tokens = estimate_tokens(len(str(body.get("prompt") or "")))
        images = body.get("images")
        image_tokens = IMAGE_INPUT_TOKENS * (len(images) if isinstance(images, list) else 0)
        output_tokens = (
            IMAGE_OUTPUT_TOKENS.get(str(payload.get("quality")), IMAGE_OUTPUT_TOKENS["medium"]) * n
        )
        payload["usage"] = {
            "input_tokens": text_tokens + image_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
            "total_tokens": text_tokens + image_tokens + output_tokens,
        }
        return payload

    @staticmethod
    def _video(key: str, created: int, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a video creation with the job object the API returns: queued, not yet rendered."""
        size = body.get("size")
        seconds = body.get("seconds")
        return {
            "id": "video_" + key[:32],
            "object": "video",
            "model": str(body.get("model") or "sora-2"),
            "status": "queued",
            "progress": 0,
            "created_at": created,
            "completed_at": None,
            "expires_at": None,
            "prompt": body.get("prompt"),
            "size": size if size in VIDEO_SIZES else "720x1280",
            "seconds": seconds if seconds in VIDEO_SECONDS else "4",
            "remixed_from_video_id": None,
            "error": None,
        }


class ProxyBackend:
    """Send each request body to an OpenAI-compatible server, with bounded concurrency and retries.

    :param base_url: upstream base URL including ``/v1``, e.g. ``http://127.0.0.1:11434/v1``.
    :param api_key: bearer key sent upstream.
    :param concurrency: most requests in flight at once.
    :param retries: retries on 429, 5xx and connection errors.
    :param timeout: seconds per upstream request.
    """

    def __init__(
        self, base_url: str, api_key: str | None, concurrency: int, retries: int, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        headers = {"Authorization": f"Bearer {api_key or 'emulator'}"}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def handle_many(
        self, endpoint: str, bodies: list[dict[str, Any]], keys: list[str] | None = None
    ) -> list[BackendResult]:
        """Answer every body, in order, running up to ``concurrency`` at a time (``keys`` are not needed)."""
        return list(await asyncio.gather(*(self.handle(endpoint, body) for body in bodies)))

    def url_for(self, endpoint: str) -> str:
        """Return the upstream URL of a batch endpoint such as ``/v1/chat/completions``."""
        path = endpoint.removeprefix("/v1")
        return self.base_url + path

    async def handle(self, endpoint: str, body: dict[str, Any]) -> BackendResult:
        """Send one body upstream and return the final answer after retries."""
        url = self.url_for(endpoint)
        attempt = 0
        async with self._semaphore:
            while True:
                try:
                    response = await self._client.post(url, json=body)
                except httpx.HTTPError as exc:
                    if attempt < self.retries:
                        attempt += 1
                        await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                        continue
                    error = {"message": f"Upstream connection failed: {exc}", "type": "server_error"}
                    return BackendResult(502, {"error": {**error, "param": None, "code": None}}, "")
                if response.status_code in RETRYABLE_STATUS and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                    continue
                request_id = response.headers.get("x-request-id", "")
                try:
                    payload = response.json()
                except ValueError:
                    payload = {"error": {"message": response.text[:1000], "type": "server_error"}}
                if not isinstance(payload, dict):
                    payload = {"data": payload}
                return BackendResult(response.status_code, payload, request_id)


def make_backend(settings: EmulatorSettings) -> Backend:
    """Return the backend the settings ask for."""
    if settings.backend == "echo":
        return EchoBackend(settings.embedding_dimensions)
    if settings.backend == "proxy":
        if not settings.upstream_base_url:
            raise ValueError("--backend proxy needs --upstream-base-url")
        return ProxyBackend(
            settings.upstream_base_url,
            settings.upstream_api_key,
            settings.proxy_concurrency,
            settings.proxy_retries,
            settings.proxy_timeout,
        )
    raise ValueError(f"Unknown backend {settings.backend!r}; use 'echo' or 'proxy'")
