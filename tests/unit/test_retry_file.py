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


def _ok(custom_id: str) -> bytes:
    return json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": {}}}).encode() + b"\n"


def _round(tmp_path: Path, output: list[bytes], **changes: Any) -> tuple[ObjectStoragePath, Round]:
    (tmp_path / "batches").mkdir(exist_ok=True)
    (tmp_path / "shard-00000.jsonl").write_bytes(
        b"".join(json.dumps({"custom_id": f"r{i}", "body": {}}).encode() + b"\n" for i in range(3))
    )
    (tmp_path / "batches" / "batch_1.output.jsonl").write_bytes(b"".join(output))
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


ALL = [_ok("r0"), _ok("r1"), _ok("r2")]


def test_all_answered(tmp_path: Path) -> None:
    assert nothing_to_retry(*_round(tmp_path, ALL))


@pytest.mark.parametrize(
    ("output", "changes"),
    [
        pytest.param(ALL[:2], {}, id="a-line-missing-from-the-output"),
        pytest.param([_ok("r0"), _ok("r0"), _ok("r2")], {}, id="a-duplicate-in-place-of-a-missing-line"),
        pytest.param([_ok("r0"), _ok("r2"), _ok("elsewhere-1")], {}, id="a-foreign-id-in-place-of-one"),
        pytest.param([_ok("r0"), _ok("r2"), b'{"response": {}}\n'], {}, id="an-id-less-line-in-place-of-one"),
        pytest.param([_ok("r0"), _ok("r2"), b"{not json\n"], {}, id="an-unparseable-line-in-place-of-one"),
        pytest.param(ALL, {"error_file_id": "file-err"}, id="an-error-file"),
        pytest.param(ALL, {"status": "expired"}, id="expired"),
        pytest.param(ALL, {"request_counts": {"total": 3, "completed": 2, "failed": 1}}, id="a-failure"),
        pytest.param(ALL, {"output_file_id": None}, id="no-output-file"),
    ],
)
def test_anything_less_writes_a_retry_file(
    tmp_path: Path, output: list[bytes], changes: dict[str, Any]
) -> None:
    assert not nothing_to_retry(*_round(tmp_path, output, **changes))


def test_the_retry_file_skips_lines_it_cannot_read_and_holds_the_unanswered(tmp_path: Path) -> None:
    from openai_batch.results_io import write_retry_file

    output = [_ok("r0"), _ok("r0"), b'{"response": {}}\n', b"{not json\n", _ok("elsewhere-1")]
    state_dir, rnd = _round(tmp_path, output)
    assert write_retry_file(state_dir, rnd, "retry.jsonl") == 2
    assert [
        json.loads(line)["custom_id"] for line in (tmp_path / "retry.jsonl").read_text().splitlines()
    ] == [
        "r1",
        "r2",
    ]


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
