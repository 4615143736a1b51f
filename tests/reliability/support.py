"""Helpers shared by the reliability tests: inputs, DAG runs, direct operator calls, emulator counters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.dags.conftest import get_dag, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
PARTITION = "2024-06-01"

__all__ = [
    "PARTITION",
    "ROOT",
    "batches_created",
    "sent_ids",
    "chat_line",
    "prepare",
    "read_jsonl",
    "result_dir",
    "run_dag",
    "submit",
    "task_states",
    "write_input",
]


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """Return a full batch line for the chat endpoint."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def write_input(path: Path, lines: list[Any]) -> Path:
    """Write objects (or raw strings) as JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def run_dag(conf: dict[str, Any], **kwargs: Any) -> Any:
    """Run the ``openai_batch`` DAG once with ``dag.test()`` (deferred tasks run inline)."""
    return get_dag().test(run_conf={"poll_interval": 1, "settle_seconds": 0, **conf}, **kwargs)


def task_states(dag_run: Any) -> dict[str, str]:
    """Return ``{task_id[map_index]: state}`` of a DAG run, for assertion messages."""
    return {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.state
        for ti in dag_run.get_task_instances()
    }


def result_dir(results: Path, stem: str) -> Path:
    """Return the one result folder of input ``<stem>.jsonl``."""
    found = [m for m in results.rglob("manifest.json") if m.parent.name == stem and "_history" not in m.parts]
    assert len(found) == 1, found
    return found[0].parent


def batches_created(server: Any) -> int:
    """Return the emulator's count of created batches."""
    return int(server.stats().get("batches_created", 0))


def prepare(
    source: Path,
    results: Path,
    partition: str = PARTITION,
    max_requests_per_batch: int = 50_000,
    inbox: Path | None = None,
) -> dict[str, Any]:
    """Run the prepare operator as its task would (inbox: the file's folder by default); return the plan."""
    from openai_batch.operators import OpenAIBatchPrepareOperator

    op = OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=str(source),
        inbox=str(inbox or source.parent),
        results_root=str(results),
        partition=partition,
        max_requests_per_batch=max_requests_per_batch,
    )
    plan: dict[str, Any] = op.execute({"run_id": "manual__reliability"})  # type: ignore[arg-type]
    return plan


def submit(shard: dict[str, Any]) -> dict[str, Any]:
    """Run the submit operator as its task would; return its XCom value."""
    from openai_batch.operators import OpenAIBatchSubmitOperator

    result: dict[str, Any] = OpenAIBatchSubmitOperator(task_id="submit", shard=shard).execute({})  # type: ignore[arg-type]
    return result


def metadata_db_bytes(home: Path) -> dict[str, bytes]:
    """Return the bytes of the SQLite metadata db and its WAL and shm files, read by another process.

    Opening and closing one of these files in this process would drop the POSIX locks that the
    process's own SQLite connections hold on it (a lock belongs to the process, not to the
    descriptor), and a concurrent writer could then corrupt the db.
    """
    found: dict[str, bytes] = {}
    for db_file in sorted(home.glob("airflow.db*")):
        found[str(db_file)] = subprocess.run(["cat", str(db_file)], capture_output=True, check=True).stdout
    return found


def sent_ids(server: Any) -> list[str]:
    """Return the custom_id of every request line of every batch input file the emulator received."""
    import openai

    from tests.dags.conftest import API_KEY

    client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url)
    ids: list[str] = []
    for batch in client.batches.list(limit=100):
        text = client.files.content(batch.input_file_id).text
        ids += [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]
    return ids
