"""Fault injection: output files that do not match the requests of their batch."""

from __future__ import annotations

import json

#: Ways to corrupt a batch's output file (fault ``output_corruption``).
CORRUPTIONS = ("drop", "duplicate", "foreign", "without_id", "unparseable")


def corrupt_output(lines: list[bytes], kinds: list[str], batch_id: str) -> list[bytes]:
    """
    Return the output lines of a chunk with each corruption of ``kinds`` applied once.

    ``drop`` leaves out the first line (its request gets no answer), ``duplicate`` writes the next
    one twice, ``foreign`` adds a copy of it under a custom_id the batch was never sent,
    ``without_id`` a copy without custom_id, ``unparseable`` a copy cut in the middle (not JSON).
    Needs two lines or more (the dropped one and the one copied); fewer are returned unchanged.
    """
    if len(lines) < 2 or not kinds:
        return lines
    dropped, sample, *rest = lines
    out = [sample, *rest] if "drop" in kinds else [dropped, sample, *rest]
    if "duplicate" in kinds:
        out.append(sample)
    obj = json.loads(sample)
    if "foreign" in kinds:
        out.append(json.dumps({**obj, "custom_id": f"foreign-{batch_id}-1"}).encode() + b"\n")
    if "without_id" in kinds:
        out.append(json.dumps({k: v for k, v in obj.items() if k != "custom_id"}).encode() + b"\n")
    if "unparseable" in kinds:
        out.append(sample[: len(sample) // 2] + b"\n")
    return out
