"""Claiming in the prepare task: borrowed plan entries, force, dry runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _prepare(tmp_path: Path, run_id: str, **kwargs: Any) -> dict[str, Any]:
    from openai_batch.operators import OpenAIBatchPrepareOperator

    op = OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=str(tmp_path / "inbox" / "in.jsonl"),
        inbox=str(tmp_path / "inbox"),
        results_root=str(tmp_path / "results"),
        partition="2024-06-01",
        ledger_dir=str(tmp_path / "ledger"),
        **kwargs,
    )
    plan: dict[str, Any] = op.execute({"run_id": run_id})  # type: ignore[arg-type]
    return plan


def _input(tmp_path: Path, n: int) -> None:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    lines = [
        {
            "custom_id": f"c-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": str(i)}]},
        }
        for i in range(n)
    ]
    (tmp_path / "inbox" / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_second_split_of_the_same_content_borrows_every_request(tmp_path: Path) -> None:
    _input(tmp_path, 3)
    first = _prepare(tmp_path, "run-1")
    assert [s["requests"] for s in first["shards"]] == [3]
    second = _prepare(tmp_path, "run-2", max_requests_per_batch=1)
    (entry,) = second["shards"]
    assert entry["kind"] == "borrowed"
    assert (entry["owner_state_dir"], entry["owner_shard"], entry["requests"]) == (first["state_dir"], 0, 3)
    assert second["borrowed"] == 3
    assert "kind" not in first["shards"][0]  # normal shard entries keep their keys


def test_force_sends_everything_again_and_a_dry_run_claims_nothing(tmp_path: Path) -> None:
    _input(tmp_path, 2)
    dry = _prepare(tmp_path, "run-dry", plan_only=True, max_requests_per_batch=1)
    assert dry["shards"] == []
    first = _prepare(tmp_path, "run-1")
    assert [s["requests"] for s in first["shards"]] == [2]  # the dry run claimed nothing
    forced = _prepare(tmp_path, "run-forced", force=True)
    assert [(s.get("kind"), s["requests"]) for s in forced["shards"]] == [(None, 2)]
    # The forced run owns the requests now: another split borrows them from it.
    again = _prepare(tmp_path, "run-3", max_requests_per_batch=1)
    assert {s["owner_state_dir"] for s in again["shards"]} == {forced["state_dir"]}


def test_published_shards_carry_their_own_digests_and_a_rewritten_one_none(tmp_path: Path) -> None:
    import hashlib

    from airflow.sdk import ObjectStoragePath

    from openai_batch.claims import digests_of

    _input(tmp_path, 3)
    first = _prepare(tmp_path, "run-1")
    _input(tmp_path, 5)  # c-0..c-2 unchanged: borrowed from the first, so its shard is rewritten
    second = _prepare(tmp_path, "run-2")
    for plan, ids in ((first, ["c-0", "c-1", "c-2"]), (second, ["c-3", "c-4"])):
        state = Path(plan["state_dir"].removeprefix("file://"))
        shard = state / "shard-00000.jsonl"
        lines = shard.read_bytes().splitlines()
        assert [json.loads(line)["custom_id"] for line in lines] == ids
        side = state / "shard-00000.digests.json"
        if plan is first:  # published by prepare, as claiming read the shard
            kept = json.loads(side.read_bytes())
            assert kept["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
        else:  # the shard was rewritten after claiming read it: nothing stale is published
            assert not side.exists()
        expected = {json.loads(line)["custom_id"]: hashlib.sha256(line).hexdigest() for line in lines}
        assert digests_of(ObjectStoragePath(f"file://{shard}")) == expected
