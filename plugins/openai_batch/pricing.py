"""Token prices and cheap token estimates, in one editable place.

:data:`PRICES` lists synchronous prices in USD per 1M tokens (input, cached input, output).
Batch requests cost :data:`BATCH_DISCOUNT` times that, which :func:`estimate_cost_usd`
applies by default. Update the table when a provider changes its prices; unknown models yield
``None`` rather than a guess.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple


class Price(NamedTuple):
    """Synchronous price of one model in USD per 1M tokens.

    :param input: price of uncached input tokens.
    :param cached_input: price of cached input tokens.
    :param output: price of output tokens (reasoning tokens included).
    """

    input: float
    cached_input: float
    output: float


BATCH_DISCOUNT = 0.5
#: Endpoints OpenAI does not charge for.
FREE_ENDPOINTS = frozenset({"/v1/moderations"})

PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-4-turbo": Price(10.00, 10.00, 30.00),
    "gpt-4": Price(30.00, 30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 0.50, 1.50),
    "gpt-3.5-turbo-instruct": Price(1.50, 1.50, 2.00),
    "o1": Price(15.00, 7.50, 60.00),
    "o1-mini": Price(1.10, 0.55, 4.40),
    "o3": Price(2.00, 0.50, 8.00),
    "o3-mini": Price(1.10, 0.55, 4.40),
    "o4-mini": Price(1.10, 0.275, 4.40),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.10, 0.0),
    "omni-moderation-latest": Price(0.0, 0.0, 0.0),
    "text-moderation-latest": Price(0.0, 0.0, 0.0),
    # Image models bill text input, image input and image output tokens; image input tokens
    # (edits) are priced here as text input, so an edit's estimate is a lower bound. DALL-E
    # (per image) and Sora (per second of video) have no per-token price: their cost is unknown.
    "gpt-image-1": Price(5.00, 1.25, 40.00),
    "gpt-image-1-mini": Price(2.00, 0.20, 8.00),
    # Anthropic (https://docs.anthropic.com/en/docs/about-claude/pricing): base input, cache hits
    # and refreshes, output. Message Batches cost half of these too. A Message's usage counts cache
    # reads apart from ``input_tokens``; they are not in the results' usage, so a cached prompt's
    # cost is underestimated by its cache reads.
    "claude-opus-4-5": Price(5.00, 0.50, 25.00),
    "claude-opus-4-1": Price(15.00, 1.50, 75.00),
    "claude-opus-4-0": Price(15.00, 1.50, 75.00),
    "claude-opus-4": Price(15.00, 1.50, 75.00),
    "claude-sonnet-4-5": Price(3.00, 0.30, 15.00),
    "claude-sonnet-4-0": Price(3.00, 0.30, 15.00),
    "claude-sonnet-4": Price(3.00, 0.30, 15.00),
    "claude-3-7-sonnet": Price(3.00, 0.30, 15.00),
    "claude-haiku-4-5": Price(1.00, 0.10, 5.00),
    "claude-3-5-haiku": Price(0.80, 0.08, 4.00),
    "claude-3-haiku": Price(0.25, 0.03, 1.25),
}

#: A dated snapshot of a listed model: ``gpt-4o-2024-08-06``, ``gpt-3.5-turbo-0125``,
#: ``claude-sonnet-4-20250514``, or Anthropic's moving alias ``claude-3-5-haiku-latest``.
_SNAPSHOT = re.compile(r"^(?P<base>.+)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")


def price_for(model: str) -> Price | None:
    """
    Return the price of ``model``: an exact id of :data:`PRICES` or a dated snapshot of one.

    Nothing else matches: ``gpt-4o-mimi`` is not ``gpt-4o``, and an unknown model has no price
    (callers report it as unpriced rather than guess).
    """
    price = PRICES.get(model)
    if price is not None:
        return price
    snapshot = _SNAPSHOT.match(model)
    return PRICES.get(snapshot.group("base")) if snapshot else None


def usage_cost_usd(endpoint: str, model: str, usage: dict[str, Any] | None) -> float | None:
    """Return the batch cost of a batch's ``usage`` object (as the API reports it), or None if unpriced."""
    if endpoint in FREE_ENDPOINTS:
        return 0.0
    usage = usage or {}
    return estimate_cost_usd(
        model,
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
    )


def is_unpriced(model: str, endpoint: str) -> bool:
    """Return True when requests of ``model`` on ``endpoint`` cost money but no price is known."""
    return endpoint not in FREE_ENDPOINTS and price_for(model) is None


def format_usd(amount: float | None) -> str:
    """Return an amount as money: ``$0.000077``, ``$12.50``; ``unknown`` for None."""
    if amount is None:
        return "unknown"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    if 0 < abs(amount) < 0.000001:
        return "<$0.000001"
    text = f"{amount:.6f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"${amount:.{max(decimals, 2)}f}"


def estimate_cost_usd(
    model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0, *, batch: bool = True
) -> float | None:
    """Return the cost in USD of the given usage, or None for a model not in :data:`PRICES`.

    ``cached_tokens`` are the part of ``input_tokens`` served from the prompt cache, as
    OpenAI's usage objects report them. Batch pricing applies unless ``batch`` is False.
    """
    price = price_for(model)
    if price is None:
        return None
    cached = min(max(cached_tokens, 0), input_tokens)
    cost = (
        (input_tokens - cached) * price.input + cached * price.cached_input + output_tokens * price.output
    ) / 1_000_000
    return cost * BATCH_DISCOUNT if batch else cost


def _text_chars(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return 4 * len(value)  # a pre-tokenised input: one token per element
        return sum(_text_chars(v) for v in value)
    return 0


#: The token estimate's rule of thumb: about four characters (bytes of JSON) per token.
CHARS_PER_TOKEN = 4


def tokens_for_bytes(size: int) -> int:
    """Return the estimated tokens of ``size`` characters or bytes: the one estimate everything uses."""
    return (size + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_tokens(text_or_body: object) -> int:
    """Return a cheap estimate of the tokens in a text or a request body (~4 characters per token).

    For a body, the characters of every string value count (message contents, prompts,
    inputs, but also roles and the model name, which roughly stands for the per-message
    overhead); a list of integers counts as that many tokens. Bytes count one per character.
    """
    if isinstance(text_or_body, bytes | bytearray):
        chars = len(text_or_body)
    else:
        chars = _text_chars(text_or_body)
    return tokens_for_bytes(chars)
