"""The capacity rules, by table: admission is a pure decision over what is in flight."""

from __future__ import annotations

from typing import Any

import pytest

from openai_batch.capacity import admission, usage, waiting_count

INFLIGHT: dict[str, Any] = {
    "a": {"model": "m", "tokens": 600},
    "b": {"model": "m", "tokens": 300},
    "c": {"model": "other", "tokens": 5_000},
}


@pytest.mark.parametrize(
    ("key", "model", "tokens", "limit", "decision"),
    [
        ("new", "m", 100, 1_000, "admit"),  # 900 + 100 fits exactly
        ("new", "m", 101, 1_000, "wait"),  # fits once a batch of m ends
        ("new", "m", 1_000, 1_000, "wait"),
        ("new", "m", 1_001, 1_000, "never"),  # larger than the limit alone
        ("a", "m", 10_000, 1_000, "admit"),  # already admitted: stays admitted
        ("new", "m", 10**9, None, "admit"),  # no limit
        ("new", "fresh", 1_000, 1_000, "admit"),  # other models' tokens do not count
        ("new", "other", 1, 5_000, "wait"),
    ],
)
def test_admission(key: str, model: str, tokens: int, limit: int | None, decision: str) -> None:
    assert admission(INFLIGHT, key, model, tokens, limit) == decision


def test_usage_and_waiting_count_per_model() -> None:
    assert usage(INFLIGHT, "m") == (900, 2)
    assert usage(INFLIGHT, "none") == (0, 0)
    assert waiting_count({"x": {"model": "m"}, "y": {"model": "m"}, "z": {"model": "n"}}, "m") == 2
