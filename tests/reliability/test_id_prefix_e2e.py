"""A changed file whose earlier results carry name-only generated ids still reuses its unchanged answers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from openai_batch.prepare import default_id_prefix
from tests.reliability.support import read_jsonl, run_dag, task_states, write_input

if TYPE_CHECKING:
    import pytest


def _body(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def test_a_changed_dated_file_keeps_the_ids_of_its_earlier_results(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_batch.idprefix as idprefix

    path = pipeline["inbox"] / "2024-01-01" / "day.jsonl"
    write_input(path, [_body(f"q {i}") for i in range(3)])
    legacy = default_id_prefix("day.jsonl")
    # The first content is processed as earlier versions did: ids from the file name only.
    with monkeypatch.context() as patch:  # its own undo: the fixtures' settings stay
        patch.setattr(idprefix, "file_id_prefix", lambda ref, folder: default_id_prefix(ref.name))
        assert run_dag({"input": "2024-01-01/day.jsonl"}).state == "success"

    write_input(path, [_body(f"q {i}") for i in range(3)] + [_body("q new")])
    dag_run = run_dag({"input": "2024-01-01/day.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    out = pipeline["results"] / "2024-01-01" / "day"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["reused"] == 3
    assert [b["requests"] for b in manifest["batches"]] == [1]
    assert [r["custom_id"] for r in read_jsonl(out / "results.jsonl")] == [
        f"{legacy}-{n}" for n in range(1, 5)
    ]
