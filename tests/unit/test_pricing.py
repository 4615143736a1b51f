from __future__ import annotations

import pytest

from openai_batch.pricing import (
    BATCH_DISCOUNT,
    PRICES,
    estimate_cost_usd,
    estimate_tokens,
    format_usd,
    price_for,
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("gpt-4o", "gpt-4o", id="exact"),
        pytest.param("gpt-4o-2024-08-06", "gpt-4o", id="dated"),
        pytest.param("gpt-4o-mini-2024-07-18", "gpt-4o-mini", id="longest-prefix"),
        pytest.param("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", id="nano"),
        pytest.param("gpt-3.5-turbo-0125", "gpt-3.5-turbo", id="short-snapshot"),
        pytest.param("gpt-4oo", None, id="not-a-dash-suffix"),
        pytest.param("gpt-4o-mimi", None, id="typo-suffix-is-not-a-snapshot"),
        pytest.param("gtp-4o-mini", None, id="typo-prefix"),
        pytest.param("gpt-4o-2024-08", None, id="partial-date"),
        pytest.param("llama3", None, id="unknown"),
        pytest.param("", None, id="empty"),
    ],
)
def test_price_for(model: str, expected: str | None) -> None:
    assert price_for(model) == (PRICES[expected] if expected else None)


@pytest.mark.parametrize(
    ("args", "batch", "expected"),
    [
        pytest.param(("gpt-4o", 1_000_000, 1_000_000), True, (2.5 + 10.0) * BATCH_DISCOUNT, id="batch"),
        pytest.param(("gpt-4o", 1_000_000, 1_000_000), False, 12.5, id="sync"),
        pytest.param(("gpt-4o-mini", 2_000_000, 0, 1_000_000), False, 0.15 + 0.075, id="cached"),
        pytest.param(("gpt-4o-mini", 100, 0, 1_000), False, 100 * 0.075 / 1e6, id="cached-capped"),
        pytest.param(("text-embedding-3-small", 1_000_000, 0), True, 0.01, id="embedding"),
        pytest.param(("omni-moderation-latest", 10**6, 0), True, 0.0, id="moderation-free"),
    ],
)
def test_estimate_cost_usd(args: tuple[int, ...], batch: bool, expected: float) -> None:
    assert estimate_cost_usd(*args, batch=batch) == pytest.approx(expected)  # type: ignore[arg-type]


def test_estimate_cost_unknown_model() -> None:
    assert estimate_cost_usd("my-model", 10, 10) is None


def test_every_common_model_has_a_price() -> None:
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "o3-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "omni-moderation-latest",
    ):
        assert price_for(model) is not None, model


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        pytest.param("", 0, id="empty"),
        pytest.param("abcd", 1, id="four-chars"),
        pytest.param("abcde", 2, id="rounds-up"),
        pytest.param(b"x" * 40, 10, id="bytes"),
        pytest.param(
            {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}, 102, id="chat-body"
        ),
        pytest.param({"model": "e", "input": [1, 2, 3, 4]}, 5, id="token-array"),
        pytest.param({"n": 3, "flag": True, "x": None}, 0, id="no-text"),
    ],
)
def test_estimate_tokens(value: object, tokens: int) -> None:
    assert estimate_tokens(value) == tokens


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        pytest.param(7.7e-05, "$0.000077", id="small"),
        pytest.param(0.0, "$0.00", id="zero"),
        pytest.param(0.5, "$0.50", id="cents"),
        pytest.param(12.5, "$12.50", id="dollars"),
        pytest.param(1234.567, "$1,234.57", id="thousands"),
        pytest.param(1e-9, "<$0.000001", id="tiny"),
        pytest.param(None, "unknown", id="unpriced"),
    ],
)
def test_format_usd(amount: float | None, text: str) -> None:
    assert format_usd(amount) == text
