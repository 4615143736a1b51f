"""Plans: the state folder's name, the map-length check, and what a file's write waits for."""

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
    map_length_error,
    numbered,
    state_dir_name,
    variant,
)


def _plan(key: str, shards: int) -> Any:
    return {"key": key, "state_dir": f"/r/{key}/_state/x", "shards": [{"index": i} for i in range(shards)]}


def test_a_run_within_the_limit_maps() -> None:
    assert map_length_error([_plan("a.jsonl", 1000), _plan("b.jsonl", 24)], 1024) is None
    assert map_length_error([], 1024) is None


def test_a_run_above_the_limit_names_the_files_with_the_most_shards() -> None:
    error = map_length_error(
        [_plan("small.jsonl", 3), _plan("big.jsonl", 1030), _plan("mid.jsonl", 40)], 1024
    )
    assert error is not None
    assert "1073 shards" in error
    assert "max_map_length (1024)" in error
    assert error.index("big.jsonl (1030)") < error.index("mid.jsonl (40)") < error.index("small.jsonl (3)")


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
