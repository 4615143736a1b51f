"""The payload TypedDicts describe the shapes frozen in the golden layout, key for key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from openai_batch import payloads

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "layout.json").read_text())


def _keys(td: Any) -> tuple[set[str], set[str]]:
    return set(td.__required_keys__), set(td.__optional_keys__)


@pytest.mark.parametrize(
    ("typed", "golden"),
    [
        (payloads.StatePlan, GOLDEN["plan"]),
        (payloads.ShardRef, GOLDEN["plan"]["shards"][0]),
        (payloads.Manifest, GOLDEN["manifest"]),
        (payloads.Counts, GOLDEN["manifest"]["counts"]),
        (payloads.TokenCost, GOLDEN["manifest"]["estimate"]),
        (payloads.TokenCost, GOLDEN["manifest"]["actual"]),
    ],
    ids=["plan", "shard", "manifest", "counts", "estimate", "actual"],
)
def test_every_key_written_is_typed_and_every_required_key_is_written(
    typed: Any, golden: dict[str, Any]
) -> None:
    required, optional = _keys(typed)
    written = set(golden)
    assert written - required - optional == set(), "written but not typed"
    assert required - written == set(), "typed as required but not written"
    get_type_hints(typed)  # every annotation resolves


def test_the_wait_end_event_has_the_keys_the_triggers_send() -> None:
    from openai_batch.triggers import batch_summary

    summary = batch_summary({"id": "batch_1", "status": "completed", "errors": {"data": []}})
    required, optional = _keys(payloads.BatchEndEvent)
    assert set(summary) <= required | optional
    assert required <= set(summary)
    error = {"batch_id": "b", "status": "error", "message": "m"}
    assert set(error) <= required | optional


def test_the_borrowed_entry_adds_the_owner_to_a_shard_reference() -> None:
    required, _ = _keys(payloads.BorrowedRef)
    assert required - set(payloads.ShardRef.__required_keys__) == {"owner_state_dir", "owner_shard"}
