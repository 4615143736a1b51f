"""Names of the files in each input file's result folder and state folder: one owner.

Pure, stdlib only. Every later run finds its earlier work by these names (see
``tests/golden/layout.json``): change none of them without a migration.
"""

from __future__ import annotations

__all__ = [
    "BORROWED",
    "MANIFEST_FILE",
    "ORDER_FILE",
    "PLAN_FILE",
    "REJECTS_FILE",
    "RESULTS_FILE",
    "round_file",
    "shard_state_file",
]

#: Names inside each input file's result folder (contract: results, rejects, manifest).
RESULTS_FILE = "results.jsonl"
REJECTS_FILE = "rejects.jsonl"
MANIFEST_FILE = "manifest.json"
#: Names inside a state folder: the plan (written last: its presence means the folder is complete)
#: and the custom_ids of the valid requests in input order.
PLAN_FILE = "plan.json"
ORDER_FILE = "order.txt"


def shard_state_file(index: int) -> str:
    """Return the name of a shard's state record in its state folder."""
    return f"shard-{int(index):05d}.state.json"


def round_file(index: int, round_no: int) -> str:
    """Return the name of the request file of a shard's follow-up round ``round_no`` (>= 1)."""
    return f"shard-{int(index):05d}.round{int(round_no)}.jsonl"


#: The ``kind`` of a plan entry answered by another state folder's batches.
BORROWED = "borrowed"
