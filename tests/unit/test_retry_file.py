"""A round whose batch answered every request needs no retry file; anything less does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk import ObjectStoragePath

from openai_batch.results_io import nothing_to_retry
from openai_batch.state import Round

if TYPE_CHECKING:
    from pathlib import Path


def _round(tmp_path: Path, output_lines: int, **changes: Any) -> tuple[ObjectStoragePath, Round]:
    (tmp_path / "batches").mkdir(exist_ok=True)
    (tmp_path / "batches" / "batch_1.output.jsonl").write_bytes(b'{"custom_id": "x"}\n' * output_lines)
    fields: dict[str, Any] = {
        "round": 0,
        "file": "shard-00000.jsonl",
        "requests": 3,
        "batch_id": "batch_1",
        "status": "completed",
        "output_file_id": "file-out",
        "request_counts": {"total": 3, "completed": 3, "failed": 0},
    }
    fields.update(changes)
    return ObjectStoragePath(str(tmp_path)), Round(**fields)


def test_all_answered(tmp_path: Path) -> None:
    assert nothing_to_retry(*_round(tmp_path, 3))


@pytest.mark.parametrize(
    ("lines", "changes"),
    [
        pytest.param(2, {}, id="a-line-missing-from-the-output"),
        pytest.param(3, {"error_file_id": "file-err"}, id="an-error-file"),
        pytest.param(3, {"status": "expired"}, id="expired"),
        pytest.param(3, {"request_counts": {"total": 3, "completed": 2, "failed": 1}}, id="a-failure"),
        pytest.param(3, {"output_file_id": None}, id="no-output-file"),
    ],
)
def test_anything_less_writes_a_retry_file(tmp_path: Path, lines: int, changes: dict[str, Any]) -> None:
    assert not nothing_to_retry(*_round(tmp_path, lines, **changes))
