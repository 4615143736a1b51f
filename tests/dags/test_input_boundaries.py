"""Input files that change under the pipeline: each fails alone, and a finished archive stays done."""

from __future__ import annotations

import gzip
import json
from typing import TYPE_CHECKING, Any

from openai_batch.operators import OpenAIBatchPrepareOperator
from tests.reliability.support import batches_created, chat_line, read_jsonl, run_dag, sent_ids, task_states

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def lines(*ids: str) -> str:
    return "".join(json.dumps(chat_line(i, f"hello {i}")) + "\n" for i in ids)


def manifest_of(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "manifest.json").read_text()))


def before_prepare(monkeypatch: pytest.MonkeyPatch, name: str, action: Any) -> None:
    """Run ``action`` once the file called ``name`` was listed, right before its prepare task starts."""
    checked = OpenAIBatchPrepareOperator.input_ref

    def input_ref(self: OpenAIBatchPrepareOperator, source: Any) -> Any:
        if isinstance(source, dict) and source["key"].endswith(name):
            action()
        return checked(self, source)

    monkeypatch.setattr(OpenAIBatchPrepareOperator, "input_ref", input_ref)


def test_a_file_removed_after_listing_fails_alone(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, results = pipeline["inbox"], pipeline["results"]
    (inbox / "a.jsonl").write_text(lines("a-0", "a-1"))
    (inbox / "b.jsonl").write_text(lines("b-0"))
    before_prepare(monkeypatch, "b.jsonl", (inbox / "b.jsonl").unlink)

    dag_run = run_dag({"input": "*.jsonl"})

    states = task_states(dag_run)
    assert dag_run.state == "failed", states  # b's failure is visible ...
    assert [r["custom_id"] for r in read_jsonl(results / "a" / "results.jsonl")] == ["a-0", "a-1"]
    assert manifest_of(results / "a")["counts"]["succeeded"] == 2  # ... a was sent and written
    error = manifest_of(results / "b")["error"]
    assert "b.jsonl" in error
    assert "gone" in error
    assert (results / "b" / "rejects.jsonl").exists()
    assert "upstream_failed" not in states.values(), states
    assert sorted(v for k, v in states.items() if k.startswith("write_results")) == ["failed", "success"]


def test_a_prepare_that_fails_holds_back_neither_the_budget_nor_the_other_files(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    inbox, results = pipeline["inbox"], pipeline["results"]
    (inbox / "a.jsonl").write_text(lines("a-0"))
    (inbox / "b.jsonl").write_text(lines("b-0"))

    opened = OpenAIBatchPrepareOperator._execute_opened

    def storage_down(self: OpenAIBatchPrepareOperator, context: Any, ref: Any, *args: Any) -> Any:
        if ref.key == "b.jsonl":  # fails for good, as storage trouble would after the retries
            raise AirflowFailException("storage is down")
        return opened(self, context, ref, *args)

    monkeypatch.setattr(OpenAIBatchPrepareOperator, "_execute_opened", storage_down)

    dag_run = run_dag({"input": "*.jsonl"})

    states = task_states(dag_run)
    assert states["check_budget"] == "success", states
    assert states["list_shards"] == "success", states
    assert sorted(v for k, v in states.items() if k.startswith("prepare")) == ["failed", "success"]
    assert batches_created(pipeline["emulator"]) == 1  # a's shard only
    assert [r["custom_id"] for r in read_jsonl(results / "a" / "results.jsonl")] == ["a-0"]


def test_an_archive_done_once_is_skipped_without_new_results_or_event(pipeline: dict[str, Any]) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    inbox, results = pipeline["inbox"], pipeline["results"]
    (inbox / "z.jsonl.gz").write_bytes(gzip.compress(lines("z-0", "z-1").encode()))
    first = run_dag({"input": "z.jsonl.gz"})
    assert first.state == "success", task_states(first)
    [folder] = [m.parent for m in results.rglob("manifest.json") if "_state" not in m.parts]
    manifest = manifest_of(folder)
    assert manifest["input_stat"]["size"] == (inbox / "z.jsonl.gz").stat().st_size
    assert manifest["input_raw_sha256"] != manifest["input_sha256"]  # compressed bytes vs content
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}

    again = run_dag({"input": "z.jsonl.gz"})

    states = task_states(again)
    assert again.state == "success", states
    assert states["write_results[0]"] == "skipped", states
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == mtimes
    assert batches_created(pipeline["emulator"]) == 1
    with create_session() as session:
        count = session.scalar(
            select(func.count()).select_from(AssetEvent).where(AssetEvent.source_run_id == again.run_id)
        )
    assert count == 0


def test_the_dag_passes_the_cap_variable_and_timeouts(airflow_db: None) -> None:
    from tests.dags.conftest import get_dag

    dag = get_dag()
    assert "openai_batch_max_input_bytes" in dag.get_task("prepare").partial_kwargs["max_input_bytes"]
    for task_id in ("prepare", "check_budget", "submit", "write_results"):
        task = dag.get_task(task_id)
        timeout = getattr(task, "partial_kwargs", {}).get("execution_timeout") or task.execution_timeout
        assert timeout is not None, task_id


def test_more_shards_than_max_map_length_are_sent_over_two_runs_each_request_once(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Airflow maps at most [core] max_map_length items: a run sends that many shards, the next the rest."""
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    ids = ["m1", "m2", "m3", "m4", "m5"]
    (pipeline["inbox"] / "many.jsonl").write_text(lines(*ids))
    conf = {"input": "many.jsonl", "max_requests_per_batch": 1}

    first = run_dag(conf)
    states = task_states(first)
    assert first.state == "success", states
    assert sorted(k for k in states if k.startswith("wait_for_batch")) == [
        f"wait_for_batch[{i}]" for i in range(3)
    ]
    assert states["write_results[0]"] == "skipped", states  # postponed, not written half
    assert batches_created(pipeline["emulator"]) == 3
    assert not (pipeline["results"] / "many" / "results.jsonl").exists()
    out = "".join(capfd.readouterr())
    assert "many.jsonl: 2 shard(s) left for the next run ([core] max_map_length 3)" in out

    second = run_dag(conf)
    states = task_states(second)
    assert second.state == "success", states
    assert sorted(k for k in states if k.startswith("wait_for_batch")) == [
        "wait_for_batch[0]",
        "wait_for_batch[1]",
    ]
    assert [r["custom_id"] for r in read_jsonl(pipeline["results"] / "many" / "results.jsonl")] == ids
    assert manifest_of(pipeline["results"] / "many")["counts"]["succeeded"] == 5
    assert sorted(sent_ids(pipeline["emulator"])) == ids  # each request paid once over the two runs
