"""Plans: the state folder's name and the map-length check before the shards are mapped."""

from __future__ import annotations

from typing import Any

from openai_batch.plans import map_length_error, state_dir_name, variant


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
