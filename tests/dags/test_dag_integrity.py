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
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
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


def test_params_declare_draft_7_and_still_refuse_bad_values() -> None:
    """Every param is checked as draft 7 (a cheaper meta-schema check on each resolve), keywords intact."""
    from airflow.sdk.exceptions import ParamValidationError
    from jsonschema import Draft7Validator
    from jsonschema.validators import validator_for

    dag = get_dag()
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        assert validator_for(schema) is Draft7Validator, name
        Draft7Validator.check_schema(schema)
    bad = {
        "poll_interval": [0, 3601, "60", 1.5],
        "conn_id": ["", "has space", None],
        "endpoint": ["/v1/unknown"],
        "max_requests_per_batch": [50001],
        "output_expires_after": [{"anchor": "created_at"}, {"anchor": "x", "seconds": 3600}, {"seconds": 60}],
        "max_cost_usd": [-1],
        "dry_run": ["yes"],
    }
    for name, values in bad.items():
        param = dag.params.get_param(name)
        for value in values:
            with pytest.raises(ParamValidationError):
                param.resolve(value)
    expiry = {"anchor": "created_at", "seconds": 3600}
    good = {"poll_interval": 1, "output_expires_after": expiry, "input": None}
    for name, value in good.items():
        assert dag.params.get_param(name).resolve(value) == value


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


def test_the_run_for_a_day_starts_once_the_day_has_ended() -> None:
    """Logical date D, data interval [D, D+1), run after D+1: the scheduled run sees the whole day."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dag = DagSerialization.from_dict(DagSerialization.to_dict(get_dag()))  # as the scheduler has it
    day = pendulum.datetime(2024, 3, 5, tz="UTC")
    info = dag.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=day, latest=None, catchup=True),
    )
    assert info is not None
    assert info.data_interval.start == day
    assert info.data_interval.end == day.add(days=1)
    assert info.run_after == day.add(days=1)
    assert info.logical_date == day  # the partition the run takes: <inbox>/2024-03-05/


def test_the_inbox_asset_is_watched_by_the_inbox_watcher() -> None:
    from openai_batch.assets import INBOX_ASSET_NAME

    dag = get_dag()
    asset = dag.timetable.asset_condition
    assert asset.name == INBOX_ASSET_NAME
    (watcher,) = asset.watchers
    path, kwargs = watcher.trigger.serialize()
    assert path == "openai_batch.watcher.InboxArrivalTrigger"
    assert kwargs["inbox"] is None  # read from the Variable at each listing, so the UI's value wins
