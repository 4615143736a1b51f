"""Real ``dag.test()`` runs against the emulator with state files a torn write left unparsable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reliability.support import chat_line, result_dir, run_dag, task_states, write_input

pytestmark = pytest.mark.timeout(600)


def _lines(count: int) -> list[dict[str, Any]]:
    return [chat_line(f"r-{i:03d}", f"question number {i:03d}") for i in range(count)]


def test_a_run_succeeds_with_a_truncated_ledger(pipeline: dict[str, Any]) -> None:
    ledger = pipeline["results"] / "_ledger"
    ledger.mkdir(parents=True)
    (ledger / "ledger.json").write_text('{"inflight": {"x-r0a0": {"model": "gpt-4o-mi')
    write_input(pipeline["inbox"] / "a.jsonl", _lines(5))

    dag_run = run_dag({"input": "a.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    assert len(list(ledger.glob("ledger.json.corrupt-*"))) == 1
    assert json.loads((ledger / "ledger.json").read_text())["inflight"] == {}  # whole, and released
    assert len((result_dir(pipeline["results"], "a") / "results.jsonl").read_text().splitlines()) == 5


def test_torn_plan_and_shard_records_are_prepared_again_and_re_attach(pipeline: dict[str, Any]) -> None:
    """The second run pays nothing again: same state folder, same shard identities, the same batch."""
    write_input(pipeline["inbox"] / "b.jsonl", _lines(4))
    first = run_dag({"input": "b.jsonl"})
    assert first.state == "success", task_states(first)
    out = result_dir(pipeline["results"], "b")
    (plan_path,) = out.glob("_state/*/plan.json")
    state_dir = plan_path.parent
    plan = json.loads(plan_path.read_text())
    (record,) = state_dir.glob("shard-*.state.json")
    batch_id = json.loads(record.read_text())["rounds"][0]["batch_id"]
    created = pipeline["emulator"].stats()["batches_created"]
    # Results incomplete (the manifest gone) so that the next run reads the state folder again.
    (out / "manifest.json").unlink()
    plan_path.write_text(plan_path.read_text()[:40])
    record.write_text(record.read_text()[:25])

    second = run_dag({"input": "b.jsonl"})

    assert second.state == "success", task_states(second)
    assert pipeline["emulator"].stats()["batches_created"] == created
    again = json.loads(plan_path.read_text())
    assert [s["identity"] for s in again["shards"]] == [s["identity"] for s in plan["shards"]]
    assert again["state_dir"] == plan["state_dir"]
    assert json.loads(record.read_text())["rounds"][0]["batch_id"] == batch_id
    assert len(list(state_dir.glob("plan.json.corrupt-*"))) == 1
    assert len(list(state_dir.glob(f"{record.name}.corrupt-*"))) == 1
    assert json.loads((out / "manifest.json").read_text())["counts"]["succeeded"] == 4
