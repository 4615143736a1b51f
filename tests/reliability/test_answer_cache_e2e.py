"""The opt-in answer cache through real runs: an identical request in another file is not paid again."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.reliability.support import (
    batches_created,
    chat_line,
    read_jsonl,
    result_dir,
    run_dag,
    sent_ids,
    task_states,
    write_input,
)

if TYPE_CHECKING:
    import pytest


def test_identical_requests_of_another_file_come_from_the_cache_only_when_turned_on(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pipeline["emulator"]
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_REUSE_IDENTICAL", "true")
    first = write_input(
        pipeline["inbox"] / "monday.jsonl", [chat_line(f"mon-{i}", f"q {i}") for i in range(3)]
    )
    assert run_dag({"input": str(first)}).state == "success"
    mon = result_dir(pipeline["results"], "monday")
    answers = {r["custom_id"][4:]: r["response"] for r in read_jsonl(mon / "results.jsonl")}

    # Another file, other custom_ids: two requests identical to Monday's, one new.
    lines = [chat_line("tue-a", "q 0"), chat_line("tue-b", "new one"), chat_line("tue-c", "q 2")]
    second = write_input(pipeline["inbox"] / "tuesday.jsonl", lines)
    dag_run = run_dag({"input": str(second)})

    assert dag_run.state == "success", task_states(dag_run)
    assert sorted(sent_ids(server)) == ["mon-0", "mon-1", "mon-2", "tue-b"]
    tue = result_dir(pipeline["results"], "tuesday")
    results = {r["custom_id"]: r for r in read_jsonl(tue / "results.jsonl")}
    assert list(results) == ["tue-a", "tue-b", "tue-c"]
    assert {r["status"] for r in results.values()} == {"succeeded"}
    assert results["tue-a"]["response"] == answers["0"]
    assert results["tue-c"]["response"] == answers["2"]
    manifest = json.loads((tue / "manifest.json").read_text())
    assert manifest["from_cache"] == ["tue-a", "tue-c"]
    assert manifest["counts"]["from_cache"] == 2
    assert manifest["counts"]["reused"] == 0
    assert [b["requests"] for b in manifest["batches"]] == [1]
    assert manifest["usage"]["input_tokens"] > 0  # only the one request paid here

    # Off (the default): the same requests in a third file are sent, whatever the cache holds.
    monkeypatch.delenv("AIRFLOW_VAR_OPENAI_BATCH_REUSE_IDENTICAL")
    before = batches_created(server)
    third = write_input(pipeline["inbox"] / "wednesday.jsonl", [chat_line("wed-a", "q 0")])
    assert run_dag({"input": str(third)}).state == "success"
    assert batches_created(server) == before + 1
    wed = json.loads((result_dir(pipeline["results"], "wednesday") / "manifest.json").read_text())
    assert wed["from_cache"] == []


def test_a_cache_variable_that_is_not_true_or_false_fails_prepare_naming_it(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_REUSE_IDENTICAL", "sometimes")
    source = write_input(pipeline["inbox"] / "x.jsonl", [chat_line("x-1", "hi")])
    dag_run = run_dag({"input": str(source)})
    assert dag_run.state == "failed"
    assert batches_created(pipeline["emulator"]) == 0
    states = task_states(dag_run)
    assert states["prepare[0]"] == "failed", states
