"""The same DAG on an Azure OpenAI connection: ``dag.test()`` against the emulator's ``/openai/v1`` paths."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.conftest import API_KEY, read_jsonl
from tests.dags.test_openai_batch_e2e import full_line, result_dir, run_dag, task_states, write_input

if TYPE_CHECKING:
    import openai

CONN = "azure_test"
DEPLOYMENT = "gpt-4o-mini"  # the emulator's default deployments are named after their models


@pytest.fixture
def azure_pipeline(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An ``openai`` connection to the emulator's Azure paths, marked Azure by its extra."""
    root = pipeline["emulator"].base_url.rstrip("/").removesuffix("/v1")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps(
            {
                "conn_type": "openai",
                "password": API_KEY,
                "host": f"{root}/openai/v1",
                "extra": {"azure": True},
            }
        ),
    )
    pipeline["azure_url"] = f"{root}/openai/v1"
    return pipeline


def _client(pipeline: dict[str, Any]) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=pipeline["azure_url"], api_key=API_KEY, max_retries=0)


def test_azure_file_end_to_end(azure_pipeline: dict[str, Any]) -> None:
    lines: list[Any] = [
        full_line("a-1", "hello", model=DEPLOYMENT),
        {"model": DEPLOYMENT, "messages": [{"role": "user", "content": "bare"}]},
        "{not json",
        {"custom_id": "x", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [1]}},
        full_line("a-2", "bonjour", model=DEPLOYMENT),
    ]
    write_input(azure_pipeline["inbox"] / "az.jsonl", lines)

    run = run_dag({"input": "az.jsonl", "conn_id": CONN})

    assert run.state == "success", task_states(run)
    out = result_dir(azure_pipeline["results"])
    results = read_jsonl(out / "results.jsonl")
    assert [r["custom_id"] for r in results][::2] == ["a-1", "a-2"]
    assert {r["status"] for r in results} == {"succeeded"}
    rejects = {r["line"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert set(rejects) == {3, 4}
    assert "anthropic connection" in rejects[4]
    batches = list(_client(azure_pipeline).batches.list(limit=100))
    assert len(batches) == 1
    assert {r["batch_id"] for r in results} == {batches[0].id}
    # Every call went to Azure's paths: the connection's host, never OpenAI's /v1.
    routes = azure_pipeline["emulator"].stats()["requests_by_route"]
    assert routes.get("POST /openai/v1/batches") == 1
    assert routes.get("POST /openai/v1/files") == 1
    assert not [r for r in routes if " /v1/" in r]


def test_azure_expired_requests_are_resubmitted(azure_pipeline: dict[str, Any]) -> None:
    azure_pipeline["emulator"].set_faults(expire_after_requests=2)
    write_input(
        azure_pipeline["inbox"] / "late.jsonl", [full_line(f"r-{i}", f"q{i}", DEPLOYMENT) for i in range(3)]
    )

    run = run_dag({"input": "late.jsonl", "conn_id": CONN})

    assert run.state == "success", task_states(run)
    results = read_jsonl(result_dir(azure_pipeline["results"]) / "results.jsonl")
    assert [r["custom_id"] for r in results] == ["r-0", "r-1", "r-2"]
    assert {r["status"] for r in results} == {"succeeded"}
    assert len({r["batch_id"] for r in results}) == 2
    assert len(list(_client(azure_pipeline).batches.list(limit=100))) == 2


def test_azure_crash_between_create_and_record_re_attaches(
    azure_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.hooks import OpenAIBatchHook
    from tests.dags.conftest import get_dag

    class Killed(Exception):
        """The process died right after the create call returned."""

    created = OpenAIBatchHook.create_batch_once

    def create_then_die(self: OpenAIBatchHook, *args: Any, **kwargs: Any) -> Any:
        created(self, *args, **kwargs)
        raise Killed("killed between the create and the state write")

    monkeypatch.setattr(OpenAIBatchHook, "create_batch_once", create_then_die)
    write_input(
        azure_pipeline["inbox"] / "crash.jsonl", [full_line(f"c-{i}", f"q{i}", DEPLOYMENT) for i in range(4)]
    )
    dag = get_dag()
    for task in dag.tasks:
        task.retries = 0
    conf = {"input": "crash.jsonl", "conn_id": CONN, "poll_interval": 1, "settle_seconds": 0}
    first = dag.test(run_conf=conf)
    assert first.state == "failed", task_states(first)
    monkeypatch.setattr(OpenAIBatchHook, "create_batch_once", created)

    second = run_dag({"input": "crash.jsonl", "conn_id": CONN})

    assert second.state == "success", task_states(second)
    (batch,) = _client(azure_pipeline).batches.list(limit=100)  # re-attached by its metadata
    results = read_jsonl(result_dir(azure_pipeline["results"]) / "results.jsonl")
    assert [r["custom_id"] for r in results] == [f"c-{i}" for i in range(4)]
    assert {r["batch_id"] for r in results} == {batch.id}


def test_azure_deployments_are_priced_as_their_models(
    azure_pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment named apart from its model: sent by its name, priced by the connection's mapping."""
    azure_pipeline["emulator"].set_azure_deployments({"prod-mini": "gpt-4o-mini"})
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{CONN.upper()}"])
    conn["extra"]["deployments"] = {"prod-mini": "gpt-4o-mini"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(conn))
    write_input(
        azure_pipeline["inbox"] / "dep.jsonl", [full_line(f"d-{i}", f"q{i}", "prod-mini") for i in range(2)]
    )

    run = run_dag({"input": "dep.jsonl", "conn_id": CONN})

    assert run.state == "success", task_states(run)
    out = result_dir(azure_pipeline["results"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provider"] == "azure"
    (batch,) = manifest["batches"]
    assert batch["model"] == "prod-mini"
    assert batch["priced_as"] == "gpt-4o-mini"
    assert manifest["unpriced_models"] == []
    assert manifest["estimated_cost_usd"] > 0
    assert {r["status"] for r in read_jsonl(out / "results.jsonl")} == {"succeeded"}


def test_a_model_name_where_azure_wants_a_deployment_fails_the_batch_not_the_pipeline(
    azure_pipeline: dict[str, Any],
) -> None:
    azure_pipeline["emulator"].set_azure_deployments({"prod-mini": "gpt-4o-mini"})
    write_input(azure_pipeline["inbox"] / "name.jsonl", [full_line("n-1", "q", "gpt-4o-mini")])

    run = run_dag({"input": "name.jsonl", "conn_id": CONN})

    manifest = json.loads((result_dir(azure_pipeline["results"]) / "manifest.json").read_text())
    (batch,) = manifest["batches"]
    assert batch["status"] == "failed"
    assert any(e.get("code") == "model_not_found" for e in batch["errors"]), batch["errors"]
    # The run succeeds: every request has its outcome, and this one's says which name was wrong.
    assert run.state == "success", task_states(run)
    (result,) = read_jsonl(result_dir(azure_pipeline["results"]) / "results.jsonl")
    assert result["status"] == "failed"
    assert result["error"]["code"] == "model_not_found"
    assert "'gpt-4o-mini'" in result["error"]["message"]
