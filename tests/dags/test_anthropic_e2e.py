"""The same DAG on an Anthropic connection: ``dag.test()`` against the emulator's Message Batches API."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.conftest import API_KEY, read_jsonl
from tests.dags.test_openai_batch_e2e import full_line, result_dir, run_dag, task_states, write_input

if TYPE_CHECKING:
    from pathlib import Path

CONN = "anthropic_test"
MODEL = "claude-haiku-4-5"


def _body(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def native(custom_id: str, text: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": _body(text)}


@pytest.fixture
def anthropic_pipeline(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An ``anthropic`` connection (apache-airflow-providers-anthropic's type) to the emulator."""
    root = pipeline["emulator"].base_url.rstrip("/").removesuffix("/v1")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "anthropic", "password": API_KEY, "host": root}),
    )
    return pipeline


def _client(pipeline: dict[str, Any]) -> Any:
    import anthropic

    root = pipeline["emulator"].base_url.rstrip("/").removesuffix("/v1")
    return anthropic.Anthropic(base_url=root, api_key=API_KEY, max_retries=0)


def _batches(pipeline: dict[str, Any]) -> list[Any]:
    return list(_client(pipeline).messages.batches.list(limit=100))


def test_anthropic_file_end_to_end(anthropic_pipeline: dict[str, Any]) -> None:
    lines: list[Any] = [
        native("q-1", "hello"),
        _body("a bare Messages body"),
        full_line("o-1", "an OpenAI line"),
        native("bad id!", "refused before sending"),
        "{not json",
        native("q-2", "bonjour"),
        native("q-1", "a duplicate id"),
    ]
    write_input(anthropic_pipeline["inbox"] / "claude.jsonl", lines)

    run = run_dag({"input": "claude.jsonl", "conn_id": CONN})

    assert run.state == "success", task_states(run)
    out = result_dir(anthropic_pipeline["results"])
    results = read_jsonl(out / "results.jsonl")
    assert [r["custom_id"] for r in results][0::2] == ["q-1", "q-2"]  # input order
    assert results[0]["custom_id"] == "q-1"
    assert results[2]["custom_id"] == "q-2"
    assert {r["status"] for r in results} == {"succeeded"}
    assert all(r["response"]["type"] == "message" and r["response"]["role"] == "assistant" for r in results)
    assert len({r["batch_id"] for r in results}) == 1
    assert results[0]["batch_id"].startswith("msgbatch_")
    rejects = {r["line"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert set(rejects) == {3, 4, 5, 7}
    assert "openai connection" in rejects[3]
    assert "Anthropic's rule" in rejects[4]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["succeeded"] == 3
    assert manifest["counts"]["rejected"] == 4
    assert manifest["usage"]["input_tokens"] > 0
    assert manifest["usage"]["output_tokens"] > 0
    assert manifest["actual"]["cost_usd"] > 0  # claude-haiku-4-5 is in the price table
    assert len(_batches(anthropic_pipeline)) == 1
    # The key is in no file the run wrote (results, rejects, manifest, state, downloaded results).
    written = [p for p in anthropic_pipeline["results"].rglob("*") if p.is_file()]
    assert written
    assert not [p for p in written if API_KEY.encode() in p.read_bytes()]


def test_anthropic_expired_requests_are_resubmitted(anthropic_pipeline: dict[str, Any]) -> None:
    server = anthropic_pipeline["emulator"]
    server.set_faults(expire_after_requests=2)  # every batch expires after its 2nd request
    write_input(anthropic_pipeline["inbox"] / "late.jsonl", [native(f"r-{i}", f"q{i}") for i in range(3)])

    run = run_dag({"input": "late.jsonl", "conn_id": CONN})

    assert run.state == "success", task_states(run)
    results = read_jsonl(result_dir(anthropic_pipeline["results"]) / "results.jsonl")
    assert [r["custom_id"] for r in results] == ["r-0", "r-1", "r-2"]
    assert {r["status"] for r in results} == {"succeeded"}
    # The expired request went again in a later batch, the two answered ones did not.
    first, second = sorted({r["batch_id"] for r in results}, key=[r["batch_id"] for r in results].index)
    assert [r["batch_id"] for r in results].count(second) == 1
    assert len(_batches(anthropic_pipeline)) == 2
    assert first != second


def test_anthropic_crash_between_create_and_record_re_attaches(
    anthropic_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.anthropic_hook import AnthropicBatchHook
    from tests.dags.conftest import get_dag

    class Killed(Exception):
        """The process died right after the create call returned."""

    created = AnthropicBatchHook.create_batch_once

    def create_then_die(self: AnthropicBatchHook, *args: Any, **kwargs: Any) -> Any:
        created(self, *args, **kwargs)
        raise Killed("killed between the create and the state write")

    monkeypatch.setattr(AnthropicBatchHook, "create_batch_once", create_then_die)
    write_input(anthropic_pipeline["inbox"] / "crash.jsonl", [native(f"c-{i}", f"q{i}") for i in range(4)])
    dag = get_dag()
    for task in dag.tasks:
        task.retries = 0
    first = dag.test(
        run_conf={"input": "crash.jsonl", "conn_id": CONN, "poll_interval": 1, "settle_seconds": 0}
    )
    assert first.state == "failed", task_states(first)
    assert len(_batches(anthropic_pipeline)) == 1  # the batch exists; no state record names it
    monkeypatch.setattr(AnthropicBatchHook, "create_batch_once", created)

    second = run_dag({"input": "crash.jsonl", "conn_id": CONN})

    assert second.state == "success", task_states(second)
    (batch,) = _batches(anthropic_pipeline)  # re-attached: no second batch was paid for
    results = read_jsonl(result_dir(anthropic_pipeline["results"]) / "results.jsonl")
    assert [r["custom_id"] for r in results] == [f"c-{i}" for i in range(4)]
    assert {r["batch_id"] for r in results} == {batch.id}
    assert {r["status"] for r in results} == {"succeeded"}


def test_openai_lines_on_an_anthropic_connection_fail_naming_the_file(
    anthropic_pipeline: dict[str, Any], tmp_path: Path
) -> None:
    write_input(anthropic_pipeline["inbox"] / "wrong.jsonl", [full_line("o-1", "x"), full_line("o-2", "y")])

    run = run_dag({"input": "wrong.jsonl", "conn_id": CONN})

    assert run.state == "failed"
    out = result_dir(anthropic_pipeline["results"])
    reasons = [r["reason"] for r in read_jsonl(out / "rejects.jsonl")]
    assert len(reasons) == 2
    assert all("openai connection" in r for r in reasons)
    assert _batches(anthropic_pipeline) == []
