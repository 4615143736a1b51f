"""A round whose batch answered every request needs no retry file; anything less does."""

from __future__ import annotations

import json
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


def test_retry_file_holds_the_requests_without_a_final_outcome(tmp_path: Path) -> None:
    from openai_batch.results_io import write_retry_file

    requests = [json.dumps({"custom_id": f"r{i}", "body": {"n": i}}).encode() + b"\n" for i in range(6)]
    (tmp_path / "shard-00000.jsonl").write_bytes(b"".join(requests))
    (tmp_path / "batches").mkdir()
    output = [
        {"custom_id": "r0", "response": {"status_code": 200, "body": {"ok": 1}}},
        {"custom_id": "r1", "response": {"status_code": 400, "body": {"error": {"code": "bad"}}}},
        {"custom_id": "r2", "response": {"status_code": 500, "body": {"error": {"code": "server_error"}}}},
    ]
    errors = [
        {"custom_id": "r3", "response": None, "error": {"code": "batch_expired", "message": "late"}},
        {
            "custom_id": "r4",
            "response": {"status_code": 429, "body": {"error": {"code": "rate_limit_exceeded"}}},
        },
    ]
    (tmp_path / "batches" / "batch_1.output.jsonl").write_bytes(
        b"".join(json.dumps(o).encode() + b"\n" for o in output)
    )
    (tmp_path / "batches" / "batch_1.error.jsonl").write_bytes(
        b"\n".join(json.dumps(o).encode() for o in errors)
    )
    rnd = Round(
        round=0,
        file="shard-00000.jsonl",
        requests=6,
        batch_id="batch_1",
        status="completed",
        output_file_id="file-out",
        error_file_id="file-err",
    )
    state_dir = ObjectStoragePath(str(tmp_path))
    # r0 succeeded and r1 failed for good; r2 (500), r3 (expired), r4 (429) and r5 (no line) go again
    assert write_retry_file(state_dir, rnd, "retry.jsonl") == 4
    assert (tmp_path / "retry.jsonl").read_bytes() == b"".join(requests[2:])
