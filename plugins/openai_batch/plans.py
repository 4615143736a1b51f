"""Plans: what ``prepare`` decided for one content of one input file, built from its outcome.

The prepare task runs :func:`openai_batch.prepare.prepare_requests`, claims the requests
(:mod:`openai_batch.claims`) and publishes the files; the plan it writes last into the state folder
(``plan.json``) and returns as XCom is built here, from plain values. The state folder's name
(content digest plus the split settings' :func:`variant`) is decided here too.

Pure: standard library only.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, cast

from openai_batch.identity import state_folder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from openai_batch.payloads import FilePlan, ShardRef, StatePlan
    from openai_batch.prepare import PrepareResult, Shard

__all__ = [
    "WRITE",
    "WAIT",
    "RECHECK",
    "FAIL",
    "error_plan",
    "file_waits_verdict",
    "flat_shards",
    "mapped_count",
    "numbered",
    "shard_ref",
    "contents",
    "state_dir_name",
    "state_plan",
    "variant",
]


def variant(endpoint: str, model: str | None, max_requests: int, salt: str) -> str:
    """Return a short hash of the settings that change how one content is split into shards."""
    text = json.dumps([endpoint, model or None, max_requests, salt])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def state_dir_name(input_sha256: str, split_variant: str) -> str:
    """Return the state folder of one content split one way, relative to the file's results folder."""
    return f"{state_folder(input_sha256)}-{split_variant}"


def shard_ref(
    shard: Shard,
    *,
    source: str,
    key: str,
    state_dir: str,
    count: int,
    identity: str,
    requests: int,
    enqueued_tokens: int,
    estimated_output_tokens: int,
) -> ShardRef:
    """Return the reference of one prepared shard, as ``submit`` and ``wait_for_batch`` receive it."""
    return {
        "source": source,
        "key": key,
        "state_dir": state_dir,
        "index": shard.index,
        "count": count,
        "identity": identity,
        "file": shard.path.rsplit("/", 1)[-1],
        "endpoint": shard.endpoint,
        "model": shard.model,
        "price_model": shard.priced_as,
        "requests": requests,
        "estimated_input_tokens": shard.estimated_input_tokens,
        "estimated_output_tokens": estimated_output_tokens,
        "enqueued_tokens": enqueued_tokens,
    }


def state_plan(
    result: PrepareResult,
    *,
    state_dir: str,
    shards: Iterable[ShardRef],
    unpriced_models: list[str],
    borrowed: int,
    cached: int,
    estimated_output_tokens: int,
    plan_only: bool,
) -> StatePlan:
    """Return the plan of a prepared content (its total cost is filled in by the caller's price table)."""
    plan: StatePlan = {
        "state_dir": state_dir,
        "input_sha256": result.input_sha256,
        "lines": result.lines,
        "valid": result.valid,
        "rejected": result.rejected,
        "estimated_input_tokens": result.estimated_input_tokens,
        "estimated_cost_usd": result.estimated_cost_usd,
        "reused": result.reused,
        "unpriced_models": unpriced_models,
        "shards": list(shards),
        "borrowed": borrowed,
        "cached": cached,
        "estimated_output_tokens": estimated_output_tokens,
        "estimated_total_cost_usd": None,
    }
    if plan_only:
        plan["unclaimed"] = True  # a dry run claims nothing: a real run claims (and publishes) again
    return plan


def error_plan(state_dir: str, input_sha256: str, error: str, *, lines: int, rejected: int) -> StatePlan:
    """Return the plan of a file that cannot be sent: no shard, and the reason."""
    return {
        "state_dir": state_dir,
        "input_sha256": input_sha256,
        "lines": lines,
        "valid": 0,
        "rejected": rejected,
        "estimated_input_tokens": 0,
        "estimated_cost_usd": 0.0,
        "estimated_output_tokens": 0,
        "estimated_total_cost_usd": 0.0,
        "unpriced_models": [],
        "shards": [],
        "error": error,
    }


# --- Which shards a run maps, and which wait tasks a file's write waits for ----------------------
#
# ``list_shards`` maps ``submit`` and ``wait_for_batch`` over the run's shards, one file after the
# other; each file's ``write_results`` waits only for its own shards' waits, found by the map index of
# its first mapped shard (``shard_map_start``). Airflow maps at most ``[core] max_map_length`` items:
# a run maps the first that many shards that have not finished yet, and a file with shards left over
# is ``postponed``: its write releases it and the next run (the inbox watcher's, or a trigger) sends
# the rest, its finished shards kept. Both orders come from here.


def numbered(
    plans: Iterable[FilePlan],
    limit: int | None = None,
    finished: Callable[[ShardRef], bool] | None = None,
) -> list[FilePlan]:
    """
    Return the plans, each with the shards this run maps and the map index of the first.

    Each plan gets ``mapped_shards`` (the positions in its ``shards`` of those this run sends or
    waits for: not ``finished``, at most ``limit`` over the run) and ``shard_map_start``; a plan with
    unfinished shards left out gets ``postponed`` (how many). Positions, not shard indexes: a pack's
    plan holds the shards of several state folders, whose indexes repeat.
    """
    out: list[FilePlan] = []
    start = 0
    for plan in plans:
        todo = [pos for pos, s in enumerate(plan["shards"]) if finished is None or not finished(s)]
        mapped = todo if limit is None else todo[: max(0, limit - start)]
        numbered_plan: FilePlan = {**plan, "shard_map_start": start, "mapped_shards": mapped}
        if len(mapped) < len(todo):
            numbered_plan["postponed"] = len(todo) - len(mapped)
        out.append(numbered_plan)
        start += len(mapped)
    return out


def flat_shards(plans: Iterable[FilePlan]) -> list[ShardRef]:
    """Return the shards the run maps, in the order :func:`numbered` counts them."""
    out: list[ShardRef] = []
    for plan in plans:
        mapped = plan.get("mapped_shards")
        keep = None if mapped is None else set(mapped)
        out.extend(s for pos, s in enumerate(plan["shards"]) if keep is None or pos in keep)
    return out


def contents(plans: Iterable[FilePlan]) -> list[FilePlan]:
    """Return what sends the run's requests, for the budget: each pack's contents, each other plan."""
    out: list[FilePlan] = []
    for plan in plans:
        if plan.get("members") is None:
            out.append(plan)
        elif not plan.get("skipped") and not plan.get("dry_run"):
            out.extend(cast("list[FilePlan]", plan.get("units") or []))
    return out


def mapped_count(plan: FilePlan) -> int:
    """Return how many of the plan's shards this run maps."""
    mapped = plan.get("mapped_shards")
    return len(plan["shards"]) if mapped is None else len(mapped)


WRITE, WAIT, RECHECK, FAIL = "write", "wait", "recheck", "fail"
# Airflow task-instance states, as the task SDK reports them (strings).
_DONE = frozenset({"success", "skipped"})  # the write's trigger rule is none_failed: skipped is fine
_FAILED = frozenset({"failed", "upstream_failed", "removed"})
_IN_THE_TRIGGERER = frozenset({"deferred", "running"})  # progressing: nothing is needed from a worker


def file_waits_verdict(
    states: Mapping[str, str | None], task_id: str, start: int, count: int
) -> tuple[str, str]:
    """
    Decide what a file's write does, from the states of its shards' wait tasks.

    ``states`` maps ``<task_id>_<map index>`` (and ``<task_id>`` while the task is not expanded yet)
    to a state, as ``RuntimeTaskInstance.get_task_states`` returns them for one run. The file's
    shards are map indexes ``start .. start + count - 1``. Returns ``(verdict, reason)``:

    - ``fail``: a wait of this file failed (or the task could not be expanded): the write fails;
    - ``recheck``: a wait has not started (not expanded, scheduled, queued, up for retry): the write
      checks again later, so it never holds a worker or a trigger while a worker is still needed;
    - ``wait``: every unfinished wait is deferred or running: the write waits, deferred;
    - ``write``: every wait of this file ended well: the write goes ahead.
    """
    unexpanded = states.get(task_id)
    if unexpanded in _FAILED:
        return FAIL, f"{task_id} was not run ({unexpanded})"
    verdict, reason = WRITE, "every shard of the file has its outcome"
    for offset in range(count):
        state = states.get(f"{task_id}_{start + offset}")
        shard = f"{task_id} of shard #{offset + 1}/{count} (map index {start + offset})"
        if state in _FAILED:
            return FAIL, f"{shard} ended {state}"
        if state in _DONE:
            continue
        if state in _IN_THE_TRIGGERER:
            if verdict == WRITE:
                verdict, reason = WAIT, f"{shard} is {state}"
        elif verdict != RECHECK:
            verdict, reason = RECHECK, f"{shard} is {state or 'not scheduled yet'}"
    return verdict, reason
