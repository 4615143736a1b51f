"""Output and error files are checked against the ids sent in their round, never trusted as they come."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk import ObjectStoragePath

from openai_batch.results import ResultStore, RoundCheck
from openai_batch.results_io import build_manifest, merge_shards
from openai_batch.state import Round, ShardState

if TYPE_CHECKING:
    from pathlib import Path

ZERO = {"missing": 0, "duplicate": 0, "foreign": 0, "without_id": 0, "unparseable": 0}


def _ok(custom_id: str, text: str = "ok", tokens: int = 1) -> bytes:
    body = {"text": text, "usage": {"prompt_tokens": tokens, "completion_tokens": 0}}
    return (
        json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}}).encode() + b"\n"
    )


def _fail(custom_id: str, status: int, code: str) -> bytes:
    body = {"error": {"code": code, "message": code}}
    return (
        json.dumps({"custom_id": custom_id, "response": {"status_code": status, "body": body}}).encode()
        + b"\n"
    )


def _requests(ids: list[str]) -> bytes:
    return b"".join(json.dumps({"custom_id": i, "body": {}}).encode() + b"\n" for i in ids)


def _shard(
    tmp_path: Path, index: int, ids: list[str], output: list[bytes], errors: list[bytes] | None = None
) -> ShardState:
    """Write one shard's request file and its batch's files; return its state (one completed round)."""
    name = f"shard-{index:05d}.jsonl"
    (tmp_path / name).write_bytes(_requests(ids))
    (tmp_path / "batches").mkdir(exist_ok=True)
    batch_id = f"batch_{index}"
    (tmp_path / "batches" / f"{batch_id}.output.jsonl").write_bytes(b"".join(output))
    if errors is not None:
        (tmp_path / "batches" / f"{batch_id}.error.jsonl").write_bytes(b"".join(errors))
    rnd = Round(
        round=0,
        file=name,
        requests=len(ids),
        batch_id=batch_id,
        status="completed",
        output_file_id="file-out",
        error_file_id="file-err" if errors is not None else None,
        request_counts={"total": len(ids), "completed": len(ids), "failed": 0},
    )
    return ShardState(
        identity=f"id-{index}", index=index, endpoint="/v1/chat/completions", model="m", rounds=[rnd]
    )


def _merge(tmp_path: Path, states: list[ShardState], order: list[str]) -> tuple[list[dict[str, Any]], Any]:
    (tmp_path / "order.txt").write_text("".join(json.dumps(i) + "\n" for i in order))
    out = io.BytesIO()
    counts = merge_shards(ObjectStoragePath(str(tmp_path)), states, out)
    return [json.loads(line) for line in out.getvalue().splitlines()], counts


def _plan(lines: int) -> dict[str, Any]:
    return {"source": "s", "key": "k", "input_sha256": "0" * 64, "state_dir": "d", "partition": None} | {
        "lines": lines,
        "rejected": 0,
    }


def test_every_kind_of_stray_line_is_counted_and_none_is_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = ["a", "b", "c", "d"]
    output = [
        _ok("a", "first"),
        _ok("a", "second"),  # duplicate: the first success stays
        _ok("zz-foreign"),  # never sent
        b'{"response": {"status_code": 200, "body": {}}}\n',  # no custom_id
        b'{"custom_id": 7, "response": null}\n',  # an id that is not a string
        b"{cut short\n",  # not JSON
        _ok("c"),
    ]
    errors = [_fail("d", 400, "bad"), _fail("d", 400, "bad")]  # a duplicate failure
    state = _shard(tmp_path, 0, ids, output, errors)
    with caplog.at_level(logging.WARNING, logger="openai_batch.results_io"):
        results, counts = _merge(tmp_path, [state], ids)

    by_id = {r["custom_id"]: r for r in results}
    assert [r["custom_id"] for r in results] == ids
    assert by_id["a"]["response"]["text"] == "first"
    assert by_id["b"]["status"] == "failed"
    assert by_id["b"]["error"]["code"] == "missing_result"
    assert by_id["c"]["status"] == "succeeded"
    assert by_id["d"]["error"]["code"] == "bad"
    expected = {"missing": 1, "duplicate": 2, "foreign": 1, "without_id": 2, "unparseable": 1}
    assert counts.service_anomalies == {"batch_0": expected}
    assert counts.usage.input_tokens == 2  # a and c; neither the duplicate nor the foreign line

    manifest = build_manifest(_plan(4), [state], counts)
    assert manifest["service_anomalies"] == expected
    # Model "m" has no price: the cost is unknown, and the manifest says why.
    assert manifest["estimated_cost_usd"] is None
    assert manifest["cost_unknown_reason"] == "no batch price for model(s) m in openai_batch.pricing.PRICES"
    assert manifest["batches"][0]["shard"] == 1  # numbered from 1, as the UI does
    assert manifest["batches"][0]["service_anomalies"] == expected

    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "batch_0" in message
    assert "1 missing, 2 duplicate, 1 foreign, 2 without custom_id, 1 unparseable" in message
    assert "duplicate: a" in message  # a few examples


def test_a_foreign_id_of_another_shard_does_not_overwrite_its_outcome(tmp_path: Path) -> None:
    # Shard 1's batch answers "x0", an id of shard 0 that failed there for good: it must stay failed.
    first = _shard(tmp_path, 0, ["x0", "x1"], [_ok("x1")], [_fail("x0", 400, "bad")])
    second = _shard(tmp_path, 1, ["y0"], [_ok("y0"), _ok("x0", "stray")])
    results, counts = _merge(tmp_path, [first, second], ["x0", "x1", "y0"])

    x0 = results[0]
    assert (x0["custom_id"], x0["status"], x0["error"]["code"], x0["batch_id"]) == (
        "x0",
        "failed",
        "bad",
        "batch_0",
    )
    assert counts.service_anomalies == {"batch_1": {**ZERO, "foreign": 1}}
    manifest = build_manifest(_plan(3), [first, second], counts)
    assert manifest["batches"][0]["service_anomalies"] == ZERO
    assert manifest["batches"][1]["service_anomalies"] == {**ZERO, "foreign": 1}
    assert manifest["service_anomalies"] == {**ZERO, "foreign": 1}


def test_a_later_round_answering_an_id_it_was_not_sent_keeps_the_earlier_outcome(tmp_path: Path) -> None:
    state = _shard(tmp_path, 0, ["a", "b"], [_ok("a", "round0")])
    (tmp_path / "retry.jsonl").write_bytes(_requests(["b"]))
    (tmp_path / "batches" / "batch_r1.output.jsonl").write_bytes(_ok("b", "round1") + _ok("a", "stray"))
    state.rounds.append(
        Round(
            round=1,
            file="retry.jsonl",
            requests=1,
            batch_id="batch_r1",
            status="completed",
            output_file_id="f",
        )
    )
    results, counts = _merge(tmp_path, [state], ["a", "b"])

    assert [(r["custom_id"], r["response"]["text"]) for r in results] == [("a", "round0"), ("b", "round1")]
    assert counts.service_anomalies == {"batch_0": {**ZERO, "missing": 1}, "batch_r1": {**ZERO, "foreign": 1}}


def test_clean_files_record_no_anomaly(tmp_path: Path) -> None:
    state = _shard(tmp_path, 0, ["a", "b"], [_ok("b"), _ok("a")])
    results, counts = _merge(tmp_path, [state], ["a", "b"])

    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert counts.service_anomalies == {}
    manifest = build_manifest(_plan(2), [state], counts)
    assert manifest["service_anomalies"] == ZERO
    assert manifest["batches"][0]["service_anomalies"] == ZERO


def test_a_failure_then_a_success_for_the_same_id_keeps_the_success(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        check = RoundCheck(["a"])
        store.add_lines([_fail("a", 500, "server_error")], batch_id="b", round=0, check=check)
        store.add_lines([_ok("a", "late")], batch_id="b", round=0, check=check)
        record = store.get("a")
    assert record is not None
    assert record.status == "succeeded"
    assert check.counts == {**ZERO, "duplicate": 1}


def test_without_a_check_a_line_without_an_id_still_raises(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="no custom_id"):
        store.add_lines([b'{"response": null}\n'], batch_id="b", round=0)
