"""Golden layout: every on-disk and remote name a later run trusts, frozen.

A later run finds its earlier work by these names: state folders and their files, the ledger's
files and keys, the request record's and answer cache's schemas, batch metadata keys, generated
custom_ids, and the trigger classpaths Airflow stores with deferred tasks. A change to any of them
strands the work of every deployment that upgrades, so this test fails on any difference. Update
``tests/golden/layout.json`` only together with a migration (regenerate it with
``OPENAI_BATCH_UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.dags.conftest import read_jsonl
from tests.reliability.support import chat_line, run_dag, task_states, write_input

if TYPE_CHECKING:
    import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "layout.json"

#: Trigger classpaths stored with deferred task instances: each must stay importable.
TRIGGERS = [
    "openai_batch.triggers.OpenAIBatchTrigger",
    "openai_batch.triggers.InputFilesTrigger",
    "openai_batch.triggers.OpenAIBatchCapacityTrigger",
    "openai_batch.triggers.OpenAIBatchBorrowTrigger",
    "openai_batch.progress.OpenAIBatchProgressTrigger",
    "openai_batch.triggers.FileWaitsTrigger",
]


def _tree(root: Path) -> list[str]:
    """Return the relative paths of the files under ``root``, with batch ids normalised."""
    names = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        names.append(re.sub(r"batch_[0-9a-f]+", "<batch_id>", rel))
    return sorted(names)


def _schema(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        tables = sorted(row[0] for row in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
        return [*tables, f"user_version {db.execute('PRAGMA user_version').fetchone()[0]}"]
    finally:
        db.close()


def _keys(obj: Any) -> Any:
    """Return the shape of a JSON value: dict keys (recursively), the shape of a list's first item."""
    if isinstance(obj, dict):
        return {k: _keys(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [_keys(obj[0])] if obj else []
    return type(obj).__name__


def _ledger_shape(ledger: dict[str, Any]) -> dict[str, Any]:
    """Return the ledger's shape with its day and run ids replaced (they change with every run)."""
    days = ledger.get("spend") or {}
    entries = {key: entry for day in days.values() for key, entry in day.items()}  # runs across midnight
    spend = {"<day>": {"<run_id>|" + key.split("|", 1)[1]: _keys(v) for key, v in sorted(entries.items())}}
    return {**_keys({k: v for k, v in ledger.items() if k != "spend"}), "spend": spend}


def _layout(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from airflow.sdk.module_loading import import_string

    from openai_batch.identity import folder_of, history_folder, state_folder
    from openai_batch.idprefix import default_id_prefix
    from openai_batch.layout import digests_file, round_file, shard_state_file, take_file
    from openai_batch.plans import variant as _variant
    from openai_batch.progress import progress_file
    from openai_batch.state import batch_metadata, shard_identity

    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_REUSE_IDENTICAL", "true")
    inbox, results = pipeline["inbox"], pipeline["results"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "short line"}]}
    write_input(inbox / "2024-01-01" / "day.jsonl", [body, chat_line("full-1", "full line"), "not json"])
    # The first batch expires after one request: the other goes to a follow-up round.
    pipeline["emulator"].set_faults(expire_after_requests=1)
    dag_run = run_dag({"input": "2024-01-01/day.jsonl", "max_retry_rounds": 1})
    pipeline["emulator"].set_faults(expire_after_requests=0)
    assert dag_run.state == "success", task_states(dag_run)
    # The same request in another file: answered from the cache.
    write_input(inbox / "again.jsonl", [chat_line("again-1", "full line")])
    dag_run = run_dag({"input": "again.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)

    out = results / "2024-01-01" / "day"
    (state_dir,) = [p for p in (out / "_state").iterdir()]
    manifest = json.loads((out / "manifest.json").read_text())
    plan = json.loads((state_dir / "plan.json").read_text())
    record = json.loads((state_dir / "shard-00000.state.json").read_text())
    ledger = results / "_ledger"
    server = pipeline["emulator"]
    import openai

    from tests.dags.conftest import API_KEY

    client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url)
    metadata = [sorted((b.metadata or {}).keys()) for b in client.batches.list(limit=10)]
    for path in TRIGGERS:  # raises when a stored classpath no longer imports
        import_string(path)
    return {
        "results_tree": _tree(results),
        "plan": _keys(plan),
        "shard_state": _keys(record),
        "manifest": _keys(manifest),
        "ledger_json": _ledger_shape(json.loads((ledger / "ledger.json").read_text())),
        "requests_sqlite": _schema(ledger / "requests.sqlite"),
        "answers_sqlite": _schema(ledger / "answers.sqlite"),
        "arrivals_sqlite": _schema(ledger / "arrivals.sqlite"),
        "batch_metadata_keys": sorted({tuple(m) for m in metadata}),
        "generated_ids": [r["custom_id"] for r in read_jsonl(out / "results.jsonl")],
        "again_from_cache": json.loads((results / "again" / "manifest.json").read_text())["from_cache"],
        "names": {
            "state_folder": state_folder("0123456789abcdef" * 4),
            "history_folder": history_folder("0123456789abcdef" * 4),
            "folder_of_dated": folder_of("2024-01-01/day.jsonl"),
            "folder_of_odd": folder_of("a b/ü.jsonl"),
            "variant_default": _variant("/v1/chat/completions", None, 50_000, ""),
            "shard_identity": shard_identity("a" * 64, "b" * 64, 3, "-force1"),
            "batch_metadata": batch_metadata("ident", 1, 2, "/in/x.jsonl"),
            "id_prefix_name": default_id_prefix("day.jsonl"),
            "progress_file": progress_file("/results/x/_state/abc-123", 7),
            "take_file": take_file("shard-00003.jsonl", 2),
            "round_file": round_file(3, 2),
            "digests_file": digests_file("shard-00003.round2.jsonl"),
            "shard_state_file": shard_state_file(3),
        },
        "triggers": TRIGGERS,
    }


def test_the_names_later_runs_trust_are_unchanged(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = json.loads(json.dumps(_layout(pipeline, monkeypatch)))  # tuples as lists, like the file
    if os.environ.get("OPENAI_BATCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for key in sorted(set(golden) | set(found)):
        assert found.get(key) == golden.get(key), key
