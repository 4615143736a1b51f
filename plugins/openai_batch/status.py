"""The batch status vocabulary: one owner for what each status of a batch means to the pipeline.

Pure, stdlib only. The values are the Batch object's ``status`` enum of the published API spec
(checked against ``tests/emulator/spec/openai-openapi-batch-subset.json`` by a test).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "BATCH_STATUSES",
    "ENDED",
    "NOT_REUSABLE",
    "BatchStatus",
    "is_terminal",
    "may_reattach",
]

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
#: Every status a batch can have, in the spec's order.
BATCH_STATUSES: tuple[str, ...] = get_args(BatchStatus)
#: A batch in one of these has ended: it changes no more, its files (if any) are final.
ENDED: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
#: A batch found by its metadata in one of these is not re-attached to: it will never answer
#: (it failed validation or was cancelled); a new batch is created instead. An expired batch is
#: re-attached to, as its output holds the answers it finished.
NOT_REUSABLE: frozenset[str] = frozenset({"failed", "cancelled", "cancelling"})


def is_terminal(status: str | None) -> bool:
    """Return True when a batch with ``status`` has ended (see :data:`ENDED`)."""
    return status in ENDED


def may_reattach(status: str | None) -> bool:
    """Return True when a batch found again by its metadata may stand for a new create."""
    return status not in NOT_REUSABLE
