"""The DAG folder imports cleanly and the DAG follows the project's policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import ROOT, get_dag

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_dag_imports_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert "openai_batch" in bag.dag_ids


def test_dag_policy() -> None:
    dag = get_dag()
    assert dag.schedule == "@daily" or str(dag.timetable.summary) == "@daily"
    assert dag.catchup is False
    assert set(dag.tags) >= {"openai", "batch"}
    assert dag.doc_md
    assert {t.task_id for t in dag.tasks} == {
        "wait_for_input",
        "prepare",
        "check_budget",
        "list_shards",
        "submit",
        "wait_for_batch",
        "write_results",
    }
    for task in dag.tasks:
        if task.task_id != "wait_for_input":
            assert task.retries >= 1, task.task_id


def test_params_have_titles_descriptions_and_schema() -> None:
    dag = get_dag()
    expected = {
        "input",
        "conn_id",
        "endpoint",
        "model",
        "max_requests_per_batch",
        "poll_interval",
        "dry_run",
        "force",
        "max_retry_rounds",
        "input_timeout",
        "output_expires_after",
        "max_cost_usd",
        "settle_seconds",
    }
    assert set(dag.params.keys()) == expected
    for name in expected:
        param = dag.params.get_param(name)
        assert param.description, name
        assert param.schema.get("title"), name
        assert "type" in param.schema, name
    assert dag.params.get_param("conn_id").value == "openai_default"
    assert "/v1/embeddings" in dag.params.get_param("endpoint").schema["enum"]
    assert dag.params.get_param("max_requests_per_batch").schema["maximum"] == 50000
    assert dag.params.get_param("poll_interval").schema["minimum"] == 1


def test_dag_file_has_no_heavy_imports_at_module_level() -> None:
    """Parsing must not import the SDK client, the hook or the preparation code (they load at run time)."""
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        "heavy = ('openai', 'openai_batch.hooks', 'openai_batch.prepare', 'openai_batch.results'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "dags" / "openai_batch.py")],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "plugins")},
    )
    assert out.stdout.strip() == "", out.stdout


def test_plugins_folder_has_triggers_not_dags() -> None:
    assert not list(Path(ROOT / "dags").glob("*trigger*"))
    from openai_batch.triggers import OpenAIBatchTrigger

    classpath, _ = OpenAIBatchTrigger(conn_id="c", batch_id="batch_1").serialize()
    assert classpath == "openai_batch.triggers.OpenAIBatchTrigger"
