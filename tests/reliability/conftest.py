"""Fixtures for the recovery and fault-tolerance tests; the DAG fixtures come from tests/dags."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.conftest import API_KEY, airflow_db, emulator, pipeline  # noqa: F401 - fixtures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def point_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: None) -> Callable[..., Any]:  # noqa: F811
    """Return ``point(base_url, api_key=API_KEY)``: aim ``openai_default`` and the folders at one server."""
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    inbox.mkdir(exist_ok=True)
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_INBOX", str(inbox))
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_RESULTS", str(results))

    def point(base_url: str, api_key: str = API_KEY) -> dict[str, Any]:
        monkeypatch.setenv(
            "AIRFLOW_CONN_OPENAI_DEFAULT",
            json.dumps({"conn_type": "openai", "password": api_key, "host": base_url}),
        )
        return {"inbox": inbox, "results": results}

    return point


@pytest.fixture
def emulator_with(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Return ``start(**settings)``: an in-process emulator with fast timings and the given settings."""
    from openai_emulator.testing import EmulatorServer

    servers: list[Any] = []

    def start(**settings: Any) -> Any:
        server = EmulatorServer(
            tmp_path / f"emulator-{len(servers)}",
            **{"validating_seconds": 0.1, "finalizing_seconds": 0.1, **settings},
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
