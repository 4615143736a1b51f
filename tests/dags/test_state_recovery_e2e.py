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
    # A torn manifest too: the results count as incomplete, so the next run reads the state folder again.
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:30])
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
    assert len(list(out.glob("manifest.json.corrupt-*"))) == 1
    assert json.loads((out / "manifest.json").read_text())["counts"]["succeeded"] == 4


def _run_without_retries(conf: dict[str, Any]) -> Any:
    from tests.dags.conftest import get_dag

    dag = get_dag()
    for task in dag.tasks:
        task.retries = 0
    return dag.test(run_conf={"poll_interval": 1, "settle_seconds": 0, **conf})


def test_a_run_that_failed_before_upload_gives_its_reservation_back(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second run fits the day's budget only once the first run's estimate is no longer counted."""
    import time

    from openai_batch.budget import Ledger, plan_cost
    from tests.reliability.support import prepare

    inbox, results, server = pipeline["inbox"], pipeline["results"], pipeline["emulator"]
    first_src = write_input(inbox / "first.jsonl", _lines(10))
    second_src = write_input(
        inbox / "second.jsonl", [chat_line(f"s-{i}", f"other {i:03d}") for i in range(10)]
    )
    first_cost, second_cost = (plan_cost(prepare(src, results / "_dry")) for src in (first_src, second_src))
    assert first_cost is not None
    assert second_cost is not None
    budget = round(max(first_cost, second_cost) * 1.5, 6)  # one run fits, not both
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_DAILY_BUDGET_USD", str(budget))
    server.set_faults(error_rate=1.0, error_routes=["POST /v1/files"], error_codes=[400])

    first = _run_without_retries({"input": "first.jsonl"})

    assert first.state == "failed", task_states(first)
    assert task_states(first)["check_budget"] == "success"
    assert server.stats().get("batches_created", 0) == 0
    server.reset_faults()

    second = _run_without_retries({"input": "second.jsonl"})

    assert second.state == "success", task_states(second)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    entry = Ledger(results / "_ledger").locked  # read back what the ledger says of the first run
    with entry() as data:
        first_entry = data["spend"][day][f"{first.run_id}|first.jsonl"]
    assert first_entry["ended"] == "failed"
    assert first_entry["estimated_usd"] == 0.0  # nothing of it was sent
    assert first_entry["reserved_usd"] == pytest.approx(first_cost)
