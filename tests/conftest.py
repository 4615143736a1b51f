"""Test-wide settings: an isolated Airflow home with this project's dags and plugins."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Set before anything imports airflow: every test session gets its own Airflow home and SQLite db.
_home = os.environ.get("OPENAI_BATCH_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="openai-batch-airflow-")
os.environ["OPENAI_BATCH_TEST_AIRFLOW_HOME"] = _home
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_home}/airflow.db"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = f"{_home}/logs"
os.environ.setdefault("AIRFLOW_CONN_FS_DEFAULT", '{"conn_type": "fs", "extra": {"path": "/"}}')
os.environ.pop("OPENAI_API_KEY", None)


@pytest.fixture
def native_fingerprints() -> Any:
    """The C fingerprint table's type (``native/``, built by ``make venv``): CI fails without it."""
    from openai_batch import prepare

    if prepare._NATIVE_FINGERPRINTS is None:
        if os.environ.get("CI"):
            pytest.fail("the C fingerprint table is not built: make venv installs native/")
        pytest.skip("the C fingerprint table is not built (make venv installs native/)")
    return prepare._NATIVE_FINGERPRINTS
