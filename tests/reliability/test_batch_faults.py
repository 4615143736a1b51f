"""Never lose a request: expiry, HTTP errors, per-request failures and all-failed batches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from openai_batch.results import classify_line, is_retryable
from tests.reliability.support import (
    batches_created,
    chat_line,
    read_jsonl,
    result_dir,
    run_dag,
    task_states,
    write_input,
)


def _lines(n: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"question {i}") for i in range(n)]


def _outputs(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return read_jsonl(out / "results.jsonl"), json.loads((out / "manifest.json").read_text())


def test_expired_batch_keeps_its_partial_output_and_resubmits_the_rest(pipeline: dict[str, Any]) -> None:
    server = pipeline["emulator"]
    server.set_faults(expire_after_requests=4)  # every batch expires after its 4th request
    write_input(pipeline["inbox"] / "expiring.jsonl", _lines(6))

    dag_run = run_dag({"input": "expiring.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    results, manifest = _outputs(result_dir(pipeline["results"], "expiring"))
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(6)]
    assert all(r["status"] == "succeeded" for r in results), results
    first, second = manifest["batches"]
    assert (first["round"], first["status"], first["requests"]) == (0, "expired", 6)
    assert first["request_counts"]["completed"] == 4
    assert (second["round"], second["status"], second["requests"]) == (1, "completed", 2)
    assert manifest["rounds"] == 2
    assert manifest["counts"]["succeeded"] == 6
    # The 4 answers of the expired batch were kept, only the 2 expired requests were sent again.
    by_batch = Counter(r["batch_id"] for r in results)
    assert by_batch == {first["batch_id"]: 4, second["batch_id"]: 2}
    assert server.stats()["batches_expired"] == 1


def test_http_errors_on_every_route_neither_fail_nor_duplicate(pipeline: dict[str, Any]) -> None:
    server = pipeline["emulator"]
    # 20% of every /v1 call (upload, create, list, retrieve, download) answered 429 or 500.
    server.set_faults(error_rate=0.2, error_codes=[429, 500], retry_after_ms=50, seed=11)
    write_input(pipeline["inbox"] / "flaky.jsonl", _lines(6))

    dag_run = run_dag({"input": "flaky.jsonl", "max_requests_per_batch": 2})

    assert dag_run.state == "success", task_states(dag_run)
    stats = server.stats()
    assert stats["injected_errors"] > 0, stats
    assert stats["batches_created"] == 3  # one per shard: no create was paid twice
    assert stats["files_uploaded"] == 3
    results, manifest = _outputs(result_dir(pipeline["results"], "flaky"))
    ids = [r["custom_id"] for r in results]
    assert ids == [f"req-{i}" for i in range(6)]  # each exactly once, in input order
    assert all(r["status"] == "succeeded" for r in results)
    assert len(manifest["batches"]) == 3


def _round_files(state_dir: Path) -> dict[int, set[str]]:
    """Return ``{round: custom_ids sent}`` of shard 0 from its request files."""
    state = json.loads((state_dir / "shard-00000.state.json").read_text())
    return {
        r["round"]: {line["custom_id"] for line in read_jsonl(state_dir / r["file"])} for r in state["rounds"]
    }


def test_retryable_request_failures_are_resubmitted_and_client_errors_are_not(
    pipeline: dict[str, Any],
) -> None:
    server = pipeline["emulator"]
    server.set_faults(request_failure_rate=0.5, request_failure_codes=[500, 429, 400, 400], seed=5)
    write_input(pipeline["inbox"] / "partly.jsonl", _lines(12))

    dag_run = run_dag({"input": "partly.jsonl", "max_retry_rounds": 3})

    assert dag_run.state == "success", task_states(dag_run)
    out = result_dir(pipeline["results"], "partly")
    results, manifest = _outputs(out)
    state_dir = Path(manifest["state_dir"])
    assert state_dir.parent == out / "_state"
    sent = _round_files(state_dir)
    last_round = max(sent)
    assert last_round >= 1
    seen = {"retried": 0, "kept": 0}
    for batch in manifest["batches"]:
        error_file = state_dir / "batches" / f"{batch['batch_id']}.error.jsonl"
        if not error_file.exists():
            continue
        for line in read_jsonl(error_file):
            status, _body, error = classify_line(line)
            later = set().union(*(ids for rnd, ids in sent.items() if rnd > batch["round"]))
            if is_retryable(status, error):
                if batch["round"] < last_round:
                    assert line["custom_id"] in sent[batch["round"] + 1], line
                    seen["retried"] += 1
            else:
                assert line["response"]["status_code"] == 400, line
                assert line["custom_id"] not in later, line
                seen["kept"] += 1
    assert seen["retried"] > 0
    assert seen["kept"] > 0
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(12)]
    for r in results:
        if r["status"] == "failed":
            # Failed for good: a client error, or a server error in the last round allowed.
            assert r["error"]["code"] == "invalid_request_error" or r["batch_id"] in {
                b["batch_id"] for b in manifest["batches"] if b["round"] == 3
            }, r
    assert manifest["counts"]["succeeded"] + manifest["counts"]["failed"] == 12


def test_batch_where_every_request_failed_is_reported_with_the_api_message(
    pipeline: dict[str, Any],
) -> None:
    server = pipeline["emulator"]
    server.set_faults(request_failure_rate=1.0, request_failure_codes=[400])
    write_input(pipeline["inbox"] / "hopeless.jsonl", _lines(3))

    dag_run = run_dag({"input": "hopeless.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    results, manifest = _outputs(result_dir(pipeline["results"], "hopeless"))
    (batch,) = manifest["batches"]  # 400s are final: no follow-up round
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert batches_created(server) == 1
    for r in results:
        assert r["status"] == "failed"
        assert r["response"] is None or "error" in r["response"]
        assert r["error"]["code"] == "invalid_request_error"
        assert r["error"]["message"].startswith("Injected failure")
    assert manifest["counts"] == {
        "total": 3,
        "succeeded": 0,
        "failed": 3,
        "expired": 0,
        "cancelled": 0,
        "rejected": 0,
        "reused": 0,
        "borrowed": 0,
        "from_cache": 0,
    }
    assert manifest["usage"]["output_tokens"] == 0
