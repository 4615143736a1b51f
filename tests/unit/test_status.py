"""The batch status vocabulary is the published spec's, and every module reads it from one place."""

from __future__ import annotations

import json
from pathlib import Path

from openai_batch.status import BATCH_STATUSES, ENDED, NOT_REUSABLE, is_terminal, may_reattach

SPEC = Path(__file__).resolve().parents[1] / "emulator" / "spec" / "openai-openapi-batch-subset.json"


def test_the_statuses_are_the_specs_batch_status_enum() -> None:
    spec = json.loads(SPEC.read_text())
    assert list(BATCH_STATUSES) == spec["components"]["schemas"]["Batch"]["properties"]["status"]["enum"]
    assert set(BATCH_STATUSES) >= ENDED | NOT_REUSABLE


def test_ended_and_reattach_rules() -> None:
    assert [s for s in BATCH_STATUSES if is_terminal(s)] == ["failed", "completed", "expired", "cancelled"]
    assert not is_terminal(None)
    assert [s for s in BATCH_STATUSES if not may_reattach(s)] == ["failed", "cancelling", "cancelled"]


def test_the_hook_the_trigger_and_the_ledger_share_the_one_set() -> None:
    from openai_batch import budget, hooks

    assert hooks.TERMINAL_STATUSES is ENDED
    assert budget.ENDED_STATUSES is ENDED
