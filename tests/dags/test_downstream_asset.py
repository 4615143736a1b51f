"""The results asset: events carry the manifest summary, and the downstream example DAG reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.dags.conftest import ROOT, get_dag

pytestmark = pytest.mark.usefixtures("airflow_db")


def request_line(custom_id: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def get_downstream() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("openai_batch_downstream")


def test_downstream_dag_is_scheduled_on_the_results_asset() -> None:
    from openai_batch.assets import RESULTS_ASSET

    downstream = get_downstream()
    assert type(downstream.timetable).__name__ == "AssetTriggeredTimetable"
    assert list(downstream.timetable.asset_condition.objects) == [RESULTS_ASSET]
    assert downstream.doc_md
    # The producer's outlet is the very same asset.
    (write_results,) = [t for t in get_dag().tasks if t.task_id == "write_results"]
    assert list(write_results.partial_kwargs.get("outlets") or write_results.outlets) == [RESULTS_ASSET]


def test_results_event_carries_the_manifest_summary(pipeline: dict[str, Any]) -> None:
    from airflow.models.asset import AssetEvent, AssetModel, DagScheduleAssetReference
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from openai_batch.assets import RESULTS_ASSET

    inbox = pipeline["inbox"]
    (inbox / "one.jsonl").write_text(request_line("a", "hello") + "\n" + request_line("b", "hi") + "\n")
    (inbox / "two.jsonl").write_text(request_line("c", "bonjour") + "\n{not json\n")

    conf = {"poll_interval": 1, "input": "*.jsonl", "input_timeout": 60, "settle_seconds": 0}
    dag_run = get_dag().test(run_conf=conf)
    assert dag_run.state == "success"
    # The same files again: skipped (results exist for the same content), so no event at all.
    again = get_dag().test(run_conf=conf)
    assert again.state == "success"

    def run_events(session: Any, run_id: str) -> list[Any]:
        return list(
            session.scalars(
                select(AssetEvent)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(AssetModel.uri == RESULTS_ASSET.uri, AssetEvent.source_run_id == run_id)
                .order_by(AssetEvent.id)
            ).all()
        )

    with create_session() as session:
        events = run_events(session, dag_run.run_id)
        assert run_events(session, again.run_id) == []
        extras = [dict(e.extra) for e in events]
        assert {e.source_dag_id for e in events} == {"openai_batch"}
        assert {e.source_task_id for e in events} == {"write_results"}
        # The downstream task on the recorded events, as the scheduler passes them: asset -> events.
        summarize = get_downstream().get_task("summarize").python_callable
        summary = summarize(triggering_asset_events={RESULTS_ASSET: events})
        # The metadata db links the asset to the downstream DAG: the scheduler starts it on these events.
        consumers = session.scalars(
            select(DagScheduleAssetReference.dag_id)
            .join(AssetModel, AssetModel.id == DagScheduleAssetReference.asset_id)
            .where(AssetModel.uri == RESULTS_ASSET.uri)
        ).all()
    assert "openai_batch_downstream" in consumers

    # One event per written file, each with that file's manifest summary.
    assert len(extras) == 2, extras
    by_input = {extra["input"].rsplit("/", 1)[-1]: extra for extra in extras}
    assert set(by_input) == {"one.jsonl", "two.jsonl"}
    for stem, extra in (("one", by_input["one.jsonl"]), ("two", by_input["two.jsonl"])):
        assert set(extra) >= {"input", "input_sha256", "counts", "usage", "estimated_cost_usd", "results"}
        results_file = extra["results"]
        assert results_file.endswith(f"/{stem}/results.jsonl")
        manifest = json.loads(Path(results_file).with_name("manifest.json").read_text())
        assert extra["counts"] == manifest["counts"]
        assert extra["input_sha256"] == manifest["input_sha256"]
    assert by_input["one.jsonl"]["counts"]["succeeded"] == 2
    assert by_input["two.jsonl"]["counts"]["rejected"] == 1

    assert summary["counts"] == {
        "total": 4,
        "succeeded": 3,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "rejected": 1,
        "reused": 0,
    }
    assert sorted(f["results"] for f in summary["files"]) == sorted(e["results"] for e in extras)
    assert summary["estimated_cost_usd"] == pytest.approx(sum(e["estimated_cost_usd"] for e in extras))
    # An event made by hand (no manifest summary) is ignored rather than failing the run.
    assert summarize(triggering_asset_events={RESULTS_ASSET: [{"extra": {}}]})["files"] == []
