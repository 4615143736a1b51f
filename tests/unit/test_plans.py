"""Plans: the state folder's name, the shards a run maps, and what a file's write waits for."""

from __future__ import annotations

from typing import Any

import pytest

from openai_batch.plans import (
    FAIL,
    RECHECK,
    WAIT,
    WRITE,
    file_waits_verdict,
    flat_shards,
    mapped_count,
    numbered,
    state_dir_name,
    variant,
)


def _plan(key: str, shards: int) -> Any:
    return {
        "key": key,
        "state_dir": f"/r/{key}/_state/x",
        "shards": [{"index": i, "key": key} for i in range(shards)],
    }


def test_a_run_maps_at_most_the_limit_of_unfinished_shards_and_postpones_the_rest() -> None:
    finished = {("a.jsonl", 0), ("b.jsonl", 1)}
    plans = numbered(
        [_plan("a.jsonl", 3), _plan("b.jsonl", 4), _plan("c.jsonl", 2)],
        4,
        lambda shard: (shard["key"], shard["index"]) in finished,
    )
    assert [p["mapped_shards"] for p in plans] == [[1, 2], [0, 2], []]
    assert [p["shard_map_start"] for p in plans] == [0, 2, 4]
    assert [p.get("postponed") for p in plans] == [None, 1, 2]  # b's shard 3 and all of c: next run
    assert [(s["key"], s["index"]) for s in flat_shards(plans)] == [
        ("a.jsonl", 1),
        ("a.jsonl", 2),
        ("b.jsonl", 0),
        ("b.jsonl", 2),
    ]
    assert [mapped_count(p) for p in plans] == [2, 2, 0]


def test_a_file_with_every_shard_finished_maps_nothing_and_is_not_postponed() -> None:
    (plan,) = numbered([_plan("a.jsonl", 2)], 1, lambda shard: True)
    assert plan["mapped_shards"] == []
    assert "postponed" not in plan
    assert flat_shards([plan]) == []


def test_the_state_folder_is_the_content_and_the_split_variant() -> None:
    name = state_dir_name("ab" * 32, variant("/v1/chat/completions", None, 50_000, ""))
    assert name.startswith("_state/")
    assert name.endswith("-" + variant("/v1/chat/completions", None, 50_000, ""))
    assert variant("/v1/chat/completions", None, 50_000, "") != variant("/v1/chat/completions", None, 100, "")


def test_each_file_knows_the_map_indexes_of_its_shards_in_the_flat_list() -> None:
    plans = numbered([_plan("a.jsonl", 2), _plan("skipped.jsonl", 0), _plan("b.jsonl", 3)])
    flat = flat_shards(plans)
    assert [p["shard_map_start"] for p in plans] == [0, 2, 2]
    for plan in plans:
        start = plan["shard_map_start"]
        assert flat[start : start + len(plan["shards"])] == plan["shards"]  # its own shards, no other


W = "wait_for_batch"


@pytest.mark.parametrize(
    ("states", "start", "count", "verdict"),
    [
        # The file's shards are map indexes 2 and 3; index 0, 1 and 4 belong to other files.
        ({f"{W}_0": "deferred", f"{W}_1": "failed", f"{W}_2": "success", f"{W}_3": "success"}, 2, 2, WRITE),
        ({f"{W}_2": "success", f"{W}_3": "skipped", f"{W}_4": "deferred"}, 2, 2, WRITE),
        ({f"{W}_2": "success", f"{W}_3": "deferred"}, 2, 2, WAIT),
        ({f"{W}_2": "running", f"{W}_3": "deferred"}, 2, 2, WAIT),
        ({f"{W}_2": "deferred", f"{W}_3": "queued"}, 2, 2, RECHECK),  # a worker is still needed
        ({f"{W}_2": "up_for_retry", f"{W}_3": "success"}, 2, 2, RECHECK),
        ({f"{W}_2": "deferred"}, 2, 2, RECHECK),  # index 3 has no instance yet
        ({W: None}, 0, 1, RECHECK),  # not expanded yet
        ({}, 0, 1, RECHECK),
        ({f"{W}_2": "deferred", f"{W}_3": "failed"}, 2, 2, FAIL),
        ({f"{W}_2": "upstream_failed", f"{W}_3": "queued"}, 2, 2, FAIL),
        ({f"{W}_2": "removed", f"{W}_3": "success"}, 2, 2, FAIL),
        ({W: "upstream_failed"}, 0, 1, FAIL),  # never expanded: list_shards or submit failed
    ],
)
def test_a_files_write_waits_for_its_own_shards_only(
    states: dict[str, str | None], start: int, count: int, verdict: str
) -> None:
    got, reason = file_waits_verdict(states, W, start, count)
    assert got == verdict, reason
    if verdict == FAIL:
        assert "shard #" in reason or "was not run" in reason
