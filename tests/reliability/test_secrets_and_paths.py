"""The API key never lands anywhere, and crafted names or ids never write outside the results root."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.reliability.support import (
    chat_line,
    metadata_db_bytes,
    prepare,
    read_jsonl,
    run_dag,
    task_states,
    write_input,
)

if TYPE_CHECKING:
    from collections.abc import Callable

SECRET = "sk-canary-7f3e9c1d5b2a-do-not-log"
CRAFTED_IDS = ["../../escape", "/tmp/abs-escape", "..\\..\\win-escape", "ok-1"]
CRAFTED_NAME = "we ird ü ..name.jsonl"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _db_texts(dag_id: str) -> dict[str, list[str]]:
    """Return the run's XCom values, rendered template fields and trigger kwargs, as text."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id)).all()
        rendered = session.scalars(
            select(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.dag_id == dag_id)
        ).all()
        triggers = session.scalars(select(Trigger)).all()
        return {
            "xcom": [json.dumps(x.value, default=str) for x in xcoms],
            "rendered": [json.dumps(r.rendered_fields, default=str) for r in rendered],
            "trigger": [json.dumps(t.kwargs, default=str) for t in triggers],
        }


def test_api_key_appears_in_no_log_output_xcom_rendered_field_or_file(
    tmp_path: Path,
    point_pipeline: Callable[..., dict[str, Any]],
    emulator_with: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = emulator_with(api_key=SECRET)  # only this key is accepted: proves it was really sent
    paths = point_pipeline(server.base_url, api_key=SECRET)
    write_input(
        paths["inbox"] / CRAFTED_NAME,
        [chat_line(cid, f"hello {i}") for i, cid in enumerate(CRAFTED_IDS)] + ["{broken"],
    )
    # Failures put API error messages (and the request) into the results: they must not carry the key.
    server.set_faults(request_failure_rate=0.5, request_failure_codes=[400], seed=1)

    dag_run = run_dag({"input": "*.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    assert server.stats()["batches_created"] == 1
    assert "unauthorized" not in server.stats()
    captured = capfd.readouterr()
    haystacks: dict[str, str] = {
        "stdout": captured.out,
        "stderr": captured.err,
        "log records": caplog.text,
    }
    assert "wait_for_batch" in caplog.text + captured.out + captured.err  # the run's logs were captured
    home = Path(os.environ["AIRFLOW_HOME"])
    for path in _files(home / "logs") | _files(paths["results"]):
        haystacks[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for name, data in metadata_db_bytes(home).items():  # the metadata db, byte for byte (with its WAL)
        haystacks[name] = data.decode("latin-1")
    db = _db_texts("openai_batch")
    assert db["xcom"], "no XCom rows found"
    assert db["rendered"], "no rendered template fields found"
    for table, values in db.items():
        haystacks[f"db:{table}"] = "\n".join(values)
    assert any(p.name.endswith(".state.json") for p in _files(paths["results"]))
    leaks = [where for where, text in haystacks.items() if SECRET in text or SECRET[3:20] in text]
    assert leaks == []


def test_crafted_file_names_and_custom_ids_stay_inside_the_results_root(
    tmp_path: Path, pipeline: dict[str, Any]
) -> None:
    results: Path = pipeline["results"]
    before = _files(tmp_path.parent)
    write_input(pipeline["inbox"] / CRAFTED_NAME, [chat_line(cid, "x") for cid in CRAFTED_IDS])
    write_input(pipeline["inbox"] / "..evil.jsonl", [chat_line("dot", "x")])  # a dotfile: not taken

    dag_run = run_dag({"input": "*.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    (manifest,) = results.rglob("manifest.json")
    assert manifest.parent.parent == results  # <results>/<one segment for the file>
    assert manifest.parent.name.startswith("we_ird_..name.jsonl~")  # cleaned for reading, hashed for keying
    got = read_jsonl(manifest.parent / "results.jsonl")
    assert [r["custom_id"] for r in got] == CRAFTED_IDS  # kept verbatim, as data
    assert all(r["status"] == "succeeded" for r in got)

    # A traversal in the source path is refused; a partition key plays no part in where results go.
    outside = write_input(tmp_path / "elsewhere" / "evil.jsonl", [chat_line("e", "x")])
    sneaky = pipeline["inbox"] / ".." / "elsewhere" / "evil.jsonl"
    with pytest.raises(AirflowFailException, match="outside the inbox"):
        prepare(Path(str(sneaky)), results, partition="../../../escaped", inbox=pipeline["inbox"])
    plan = prepare(pipeline["inbox"] / CRAFTED_NAME, results, partition="../../../escaped")
    assert Path(plan["out_dir"]).resolve().parent == results.resolve()

    new = _files(tmp_path.parent) - before
    stray = [
        p
        for p in new
        if not p.resolve().is_relative_to(results.resolve())
        and not p.resolve().is_relative_to((tmp_path / "emulator").resolve())
        and p.resolve() not in {(pipeline["inbox"] / CRAFTED_NAME).resolve(), outside.resolve()}
        and p.name != "..evil.jsonl"
    ]
    assert stray == []
    assert not Path("/tmp/abs-escape").exists()
    assert not any("escape" in p.name for p in new)
