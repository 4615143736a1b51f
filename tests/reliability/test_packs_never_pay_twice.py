"""Packs of small files: each request is sent once across crashes, re-runs and other packings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from tests.reliability.support import (
    batches_created,
    chat_line,
    read_jsonl,
    run_dag,
    sent_ids,
    submit,
    task_states,
    write_input,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def packing(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__PACK_FROM_FILES", "3")
    return pipeline


def _files(inbox: Path, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        lines = [chat_line(f"{name}-{i}", f"{name} question {i}") for i in range(2)]
        write_input(inbox / f"{name}.jsonl", lines)
        ids += [line["custom_id"] for line in lines]
    return ids


def _listed(inbox: Path, names: list[str]) -> list[dict[str, Any]]:
    """The files as the input sensor lists them."""
    out = []
    for name in names:
        path = inbox / f"{name}.jsonl"
        st = os.stat(path)
        out.append(
            {"source": str(path), "key": path.name, "root": "", "size": st.st_size, "mtime": st.st_mtime}
        )
    return out


def _all_written(results: Path, names: list[str]) -> None:
    for name in names:
        rows = read_jsonl(results / name / "results.jsonl")
        assert [(r["custom_id"], r["status"]) for r in rows] == [
            (f"{name}-0", "succeeded"),
            (f"{name}-1", "succeeded"),
        ]


def _prepare_pack(packing: dict[str, Any], pack: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Run the prepare operator on ``pack`` outside a DAG run, as its task would."""
    from openai_batch.operators import OpenAIBatchPrepareOperator

    results = packing["results"]
    plan: dict[str, Any] = OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=pack,
        inbox=str(packing["inbox"]),
        results_root=str(results),
        ledger_dir=str(results / "_ledger"),
    ).execute({"run_id": run_id})  # type: ignore[arg-type]
    return plan


@pytest.mark.timeout(240)
def test_a_pack_prepare_killed_before_its_files_plans_are_written_sends_each_request_once(
    packing: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.preparation import PackBuilder

    names = ["a", "b", "c"]
    expected = _files(packing["inbox"], names)
    real = PackBuilder._publish_file
    calls = []

    def dies_on_the_second_file(packed: Any, pack_state_dir: str) -> None:
        calls.append(packed.ref.key)
        if len(calls) == 2:  # the pack content is claimed and published; one file's plan is written
            raise OSError("the disk went away")
        real(packed, pack_state_dir)

    monkeypatch.setattr(PackBuilder, "_publish_file", staticmethod(dies_on_the_second_file))
    dag_run = run_dag({"input": "*.jsonl"})  # the prepare's retry goes on from what was published
    assert dag_run.state == "success", task_states(dag_run)
    assert len(calls) >= 4
    assert batches_created(packing["emulator"]) == 1
    assert sorted(sent_ids(packing["emulator"])) == sorted(expected)
    _all_written(packing["results"], names)


@pytest.mark.timeout(300)
def test_a_packed_file_keeps_its_pack_when_a_later_run_packs_it_with_others(packing: dict[str, Any]) -> None:
    """A pack whose wait died: the next run, with one more file, waits for the same batch."""
    from openai_batch.packs import group_files

    inbox, results = packing["inbox"], packing["results"]
    expected = _files(inbox, ["a", "b", "c"])
    (pack,) = group_files(_listed(inbox, ["a", "b", "c"]), pack_from=3)
    plan = _prepare_pack(packing, pack, "manual__first")
    (shard,) = plan["shards"]
    submit(shard)  # the batch is created; its wait never runs (the run died)
    assert batches_created(packing["emulator"]) == 1

    expected += _files(inbox, ["d"])
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    # a, b and c are answered by their pack's batch (its wait resumed); only d is sent anew.
    assert batches_created(packing["emulator"]) == 2
    assert sorted(sent_ids(packing["emulator"])) == sorted(expected)
    _all_written(results, ["a", "b", "c", "d"])


def test_a_packed_file_swapped_for_a_link_outside_the_roots_is_refused_alone(packing: dict[str, Any]) -> None:
    """Each file of a pack is checked against the roots as a file alone is; the others still go."""
    from openai_batch.packs import group_files
    from openai_batch.storage import to_path

    inbox = packing["inbox"]
    _files(inbox, ["a", "b", "c"])
    (pack,) = group_files(_listed(inbox, ["a", "b", "c"]), pack_from=3)
    outside = inbox.parent / "secret.jsonl"
    write_input(outside, [chat_line("secret-0", "not yours")])
    (inbox / "b.jsonl").unlink()
    (inbox / "b.jsonl").symlink_to(outside)  # swapped after the listing
    plan = _prepare_pack(packing, pack, "manual__swap")
    by_key = {m["key"]: m for m in plan["members"]}
    assert "refused" in by_key["b.jsonl"]["error"]
    assert "error" not in by_key["a.jsonl"]
    assert "error" not in by_key["c.jsonl"]
    (unit,) = plan["units"]
    sent = "".join((to_path(s["state_dir"]) / s["file"]).read_text() for s in unit["shards"])
    assert "secret-0" not in sent
    assert "a-0" in sent
    assert "c-1" in sent
