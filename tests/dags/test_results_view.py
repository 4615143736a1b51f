"""The results view of a real ``dag.test()`` run, served by Airflow's own API app with its auth manager."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.test_openai_batch_e2e import full_line, run_dag, task_states, write_input

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fastapi.testclient import TestClient

DAG_ID = "openai_batch"


def api_client(monkeypatch: pytest.MonkeyPatch, *, all_admins: bool) -> TestClient:
    """Airflow's API app (plugins mounted) with the simple auth manager, login on or off."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from airflow.plugins_manager import get_fastapi_plugins  # noqa: F401 - plugins load through it
    from fastapi.testclient import TestClient

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", str(all_admins))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "ada:admin,vic:viewer")
    purge_cached_app()
    return TestClient(create_app("core"))


def token_for(username: str, role: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role)))


@pytest.fixture
def finished_run(pipeline: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Two files, one with a reject, run to the end."""
    write_input(pipeline["inbox"] / "alpha.jsonl", [full_line(f"a{i}", f"hi {i}") for i in range(3)])
    write_input(pipeline["inbox"] / "beta.jsonl", [full_line("b0", "bonjour", model="gpt-4o"), "{broken"])
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    yield {**pipeline, "run_id": dag_run.run_id}
    from airflow.api_fastapi.app import purge_cached_app

    purge_cached_app()


def test_unauthenticated_requests_are_refused(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = api_client(monkeypatch, all_admins=False)
    run_url = f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}"
    for url in (run_url, f"{run_url}/files/0/manifest.json", f"/openai-batch/dags/{DAG_ID}"):
        response = client.get(url)
        assert response.status_code == 401, (url, response.status_code, response.text[:200])
        assert "alpha" not in response.text
    bad = client.get(run_url, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code in (401, 403)


def test_signed_in_user_sees_each_file(finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    client = api_client(monkeypatch, all_admins=False)
    headers = {"Authorization": f"Bearer {token_for('vic', 'viewer')}"}
    run_url = f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}"
    page = client.get(run_url, headers=headers)
    assert page.status_code == 200, page.text[:300]
    html = page.text
    assert 'data-key="alpha.jsonl"' in html
    assert 'data-key="beta.jsonl"' in html
    assert '<td data-count="succeeded">3</td>' in html
    assert "line 2:" in html  # beta's first reject reason
    assert html.count('class="cost">$') == 2
    assert html.count('<b class="provider">OpenAI Batch API</b>') == 2  # the API each file went to
    manifests = {}
    for index in (0, 1):
        response = client.get(f"{run_url}/files/{index}/manifest.json", headers=headers)
        assert response.status_code == 200
        manifests[response.json()["input_key"]] = response.json()
    assert manifests["alpha.jsonl"]["counts"]["succeeded"] == 3
    assert manifests["beta.jsonl"]["counts"]["rejected"] == 1
    results = client.get(f"{run_url}/files/0/results.jsonl", headers=headers)
    assert results.status_code == 200
    assert len([json.loads(x) for x in results.text.splitlines()]) in (1, 3)
    # Only the three result files, and only files of this run.
    for url in (
        f"{run_url}/files/0/plan.json",
        f"{run_url}/files/0/..%2F..%2Fetc%2Fpasswd",
        f"{run_url}/files/9/manifest.json",
    ):
        assert client.get(url, headers=headers).status_code == 404, url
    listing = client.get(f"/openai-batch/dags/{DAG_ID}", headers=headers)
    assert listing.status_code == 200
    assert finished_run["run_id"] in listing.text


def test_results_outside_the_root_are_not_served(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # The API server's results root differs from where this run wrote: nothing of it is shown or sent.
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_RESULTS", str(tmp_path / "elsewhere"))
    client = api_client(monkeypatch, all_admins=True)
    run_url = f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}"
    page = client.get(run_url)
    assert page.status_code == 200
    assert "results are not under the results root" in page.text
    assert client.get(f"{run_url}/files/0/manifest.json").status_code == 404


def test_all_admins_needs_no_login(finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    client = api_client(monkeypatch, all_admins=True)
    page = client.get(f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}")
    assert page.status_code == 200
    assert 'data-key="alpha.jsonl"' in page.text


def test_pages_show_the_capacity_in_use_and_the_waiting_shards(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.budget import Ledger, NoCapacityError

    # The finished run gave its capacity back; two batches of another run are in flight, one waits.
    ledger = Ledger(finished_run["results"] / "_ledger")
    assert ledger.in_use() == {}
    ledger.admit("k1", "gpt-4o-mini", 700, 2000, label="shard 1 of other.jsonl (round 0)")
    ledger.admit("k2", "gpt-4o-mini", 800, 2000, label="shard 2 of other.jsonl (round 0)")
    with pytest.raises(NoCapacityError):
        ledger.admit("k3", "gpt-4o-mini", 600, 2000, label="shard 3 of other.jsonl (round 0)", poll=5)
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_TOKEN_LIMITS", json.dumps({"gpt-4o-mini": 2000, "*": 90000}))
    client = api_client(monkeypatch, all_admins=False)
    headers = {"Authorization": f"Bearer {token_for('vic', 'viewer')}"}
    for url in (f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}", f"/openai-batch/dags/{DAG_ID}"):
        page = client.get(url, headers=headers)
        assert page.status_code == 200, page.text[:300]
        html = page.text
        assert '<section class="capacity">' in html, url
        assert (
            '<tr data-model="gpt-4o-mini"><td class="l">gpt-4o-mini</td><td data-cap="tokens">1,500</td>'
            '<td data-cap="limit">2,000</td><td data-cap="batches">2</td><td data-cap="waiting">1</td></tr>'
        ) in html
        assert (
            "<td class='l'>shard 3 of other.jsonl (round 0)</td><td class='l'>gpt-4o-mini</td><td>600</td>"
            in html
        )
    # Given back, and the waiting shard gone: nothing in flight, the limit still shown.
    ledger.release("k1")
    ledger.release("k2")
    ledger.admit("k3", "gpt-4o-mini", 600, 2000)
    ledger.release("k3")
    html = client.get(f"/openai-batch/dags/{DAG_ID}", headers=headers).text
    assert '<td data-cap="tokens">0</td><td data-cap="limit">2,000</td><td data-cap="batches">0</td>' in html
    assert "Waiting for capacity" not in html


def test_a_skipped_file_says_so_and_names_the_run_that_wrote_its_results(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    again = run_dag({"input": "alpha.jsonl"})
    assert again.state == "success", task_states(again)
    client = api_client(monkeypatch, all_admins=True)
    html = client.get(f"/openai-batch/runs/{DAG_ID}/{again.run_id}").text
    assert f"skipped: results complete since run {finished_run['run_id']}" in html
    assert ">written<" not in html  # this run wrote nothing


def test_an_unknown_cost_says_why(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    write_input(pipeline["inbox"] / "local.jsonl", [full_line("l0", "hi", model="my-local-llama")])
    dag_run = run_dag({"input": "local.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    client = api_client(monkeypatch, all_admins=True)
    html = client.get(f"/openai-batch/runs/{DAG_ID}/{dag_run.run_id}").text
    assert 'Estimated cost: <b class="cost">unknown</b>' in html
    assert "no batch price for model(s) my-local-llama in openai_batch.pricing.PRICES" in html


def test_the_dag_tab_sums_up_each_run_and_charts_cost_and_tokens_by_model(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = api_client(monkeypatch, all_admins=True)
    html = client.get(f"/openai-batch/dags/{DAG_ID}").text
    run_id = finished_run["run_id"]
    row = html[html.index(f"<tr data-run='{run_id}'>") :]
    row = row[: row.index("</tr>")]
    assert "<td data-count='succeeded'>4</td>" in row  # alpha's 3 and beta's 1
    assert "<td data-count='rejected'>1</td>" in row
    assert "<td class='cost'>$" in row
    assert f"target='_top' href='../../dags/{DAG_ID}/runs/" in row  # Airflow's own run page
    assert html.count("<svg class='chart'") == 2
    for model in ("gpt-4o-mini", "gpt-4o"):
        assert f"data-model='{model}'" in html


def test_each_shard_shows_its_model_and_each_file_where_its_results_are(
    finished_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = api_client(monkeypatch, all_admins=True)
    html = client.get(f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}").text
    beta = html[html.index('data-key="beta.jsonl"') :]
    alpha = html[html.index('data-key="alpha.jsonl"') :]
    assert "<td class='l batch-model'>gpt-4o</td>" in beta[: beta.index("</section>")]
    assert "<td class='l batch-model'>gpt-4o-mini</td>" in alpha[: alpha.index("</section>")]
    assert f"Folder: <code>{finished_run['results'] / 'alpha'}</code>" in html


def test_the_dag_tab_counts_each_file_of_a_pack(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__PACK_FROM_FILES", "2")
    write_input(pipeline["inbox"] / "alpha.jsonl", [full_line(f"a{i}", f"hi {i}") for i in range(3)])
    write_input(pipeline["inbox"] / "beta.jsonl", [full_line("b0", "bonjour"), "{broken"])
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    assert [ti.map_index for ti in dag_run.get_task_instances() if ti.task_id == "prepare"] == [0]  # one pack
    client = api_client(monkeypatch, all_admins=True)
    try:
        html = client.get(f"/openai-batch/dags/{DAG_ID}").text
        page = client.get(f"/openai-batch/runs/{DAG_ID}/{dag_run.run_id}").text
        beta = client.get(f"/openai-batch/runs/{DAG_ID}/{dag_run.run_id}/files/1/results.jsonl")
    finally:
        from airflow.api_fastapi.app import purge_cached_app

        purge_cached_app()
    row = html[html.index(f"<tr data-run='{dag_run.run_id}'>") :]
    row = row[: row.index("</tr>")]
    assert "<td>2</td><td>2</td>" in row  # files planned, files written: the pack's two, not one
    assert "<td data-count='succeeded'>4</td>" in row
    assert "<td data-count='rejected'>1</td>" in row
    assert "2 file(s)." in page  # the run's page shows each file of the pack
    assert "alpha.jsonl" in page
    assert "beta.jsonl" in page
    assert beta.status_code == 200
    assert [json.loads(line)["custom_id"] for line in beta.text.splitlines()] == ["b0"]
