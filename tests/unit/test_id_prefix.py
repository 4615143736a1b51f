"""Generated custom_ids are unique across input files, and a file that already has state keeps its ids."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from openai_batch.identity import InputRef
from openai_batch.idprefix import file_id_prefix
from openai_batch.prepare import default_id_prefix
from tests.reliability.support import prepare, write_input

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _body(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def _sent_ids(plan: dict[str, Any]) -> list[str]:
    state_dir = plan["state_dir"]
    ids = []
    for shard in plan["shards"]:
        with open(f"{state_dir}/{shard['file']}", encoding="utf-8") as fh:
            ids += [json.loads(line)["custom_id"] for line in fh if line.strip()]
    return ids


def test_files_of_the_same_name_in_dated_folders_get_disjoint_ids(tmp_path: Path) -> None:
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    ids: list[list[str]] = []
    for day in ("2024-01-01", "2024-01-04", "2024-01-05"):
        source = write_input(inbox / day / "day.jsonl", [_body(f"{day} {n}") for n in range(3)])
        ids.append(_sent_ids(prepare(source, results, inbox=inbox)))
    assert all(len(part) == 3 for part in ids)
    assert len(set().union(*map(set, ids))) == 9, ids
    assert all(i.startswith("day-") for part in ids for i in part)


def test_a_file_with_an_existing_plan_keeps_its_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai_batch.idprefix as idprefix

    inbox, results = tmp_path / "inbox", tmp_path / "results"
    source = write_input(inbox / "2024-01-01" / "day.jsonl", [_body("a"), _body("b")])
    # A plan made by an earlier version (ids from the file name only), its run not finished.
    monkeypatch.setattr(idprefix, "default_id_prefix", lambda _key: "day-earlier0")
    first = _sent_ids(prepare(source, results, inbox=inbox))
    monkeypatch.undo()

    again = prepare(source, results, inbox=inbox)
    assert first == ["day-earlier0-1", "day-earlier0-2"]
    assert _sent_ids(again) == first


def _earlier_results(folder: Path, ids: list[str]) -> None:
    state_dir = folder / "_state" / "old"
    state_dir.mkdir(parents=True)
    (state_dir / "order.txt").write_text("".join(json.dumps(i) + "\n" for i in ids))
    (folder / "manifest.json").write_text(json.dumps({"state_dir": str(state_dir)}))


def test_a_changed_file_keeps_the_name_only_prefix_of_its_earlier_results(tmp_path: Path) -> None:
    ref = InputRef(source=str(tmp_path / "in" / "2024-01-01" / "day.jsonl"), key="2024-01-01/day.jsonl")
    folder = tmp_path / "results" / "2024-01-01" / "day"
    legacy, current = default_id_prefix("day.jsonl"), default_id_prefix("2024-01-01/day.jsonl")
    assert legacy != current

    assert file_id_prefix(ref, ObjectStoragePath(str(folder))) == current  # no earlier results
    # Explicit ids first, then the generated ones of the earlier version: their prefix is kept,
    # so the unchanged requests of the new content are found in the earlier results.
    _earlier_results(folder, ["mine-1", f"{legacy}-2", f"{legacy}-3"])
    assert file_id_prefix(ref, ObjectStoragePath(str(folder))) == legacy


def test_earlier_results_with_full_key_ids_or_none_generated_take_the_full_key(tmp_path: Path) -> None:
    ref = InputRef(source=str(tmp_path / "day.jsonl"), key="2024-01-01/day.jsonl")
    current = default_id_prefix("2024-01-01/day.jsonl")
    first, second = tmp_path / "a", tmp_path / "b"
    _earlier_results(first, [f"{current}-1"])
    _earlier_results(second, ["mine-1", "mine-2"])
    assert file_id_prefix(ref, ObjectStoragePath(str(first))) == current
    assert file_id_prefix(ref, ObjectStoragePath(str(second))) == current


def test_a_file_directly_in_the_inbox_keeps_its_ids(tmp_path: Path) -> None:
    ref = InputRef(source=str(tmp_path / "day.jsonl"), key="day.jsonl")
    assert file_id_prefix(ref, ObjectStoragePath(str(tmp_path / "r"))) == default_id_prefix("day.jsonl")
