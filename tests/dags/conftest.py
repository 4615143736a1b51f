"""Fixtures for DAG runs: a migrated metadata db, an emulator, and an isolated inbox/results pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-0123456789abcdef-secret"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the session's SQLite metadata db once."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
        timeout=300,
    )


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    """Run an emulator with fast timings for one test."""
    from openai_emulator.testing import EmulatorServer

    with EmulatorServer(tmp_path / "emulator", validating_seconds=0.1, finalizing_seconds=0.1) as server:
        yield server


@pytest.fixture
def pipeline(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch, airflow_db: None
) -> dict[str, Any]:
    """Point the DAG at the emulator and at a fresh inbox and results root."""
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    inbox.mkdir()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": API_KEY, "host": emulator.base_url}),
    )
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_INBOX", str(inbox))
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_RESULTS", str(results))
    return {"inbox": inbox, "results": results, "emulator": emulator}


def get_dag() -> Any:
    """Return the parsed ``openai_batch`` DAG."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("openai_batch")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Return the objects of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
