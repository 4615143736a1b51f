"""Many small files in one run: sent in packs, written file by file (``dag.test()`` and the emulator)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import openai
import pytest

from tests.dags.conftest import API_KEY, read_jsonl
from tests.dags.test_openai_batch_e2e import full_line, run_dag, task_states, write_input

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def packing(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline, packing from 3 small files on (the default is 20)."""
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__PACK_FROM_FILES", "3")
    return pipeline


def sent_ids(emulator: Any) -> list[str]:
    """Return the custom_id of every request of every batch the emulator was sent."""
    client = openai.OpenAI(api_key=API_KEY, base_url=emulator.base_url)
    ids = []
    for batch in client.batches.list(limit=100):
        text = client.files.content(batch.input_file_id).text
        ids += [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]
    return ids


def batches(emulator: Any) -> int:
    return int(emulator.stats().get("batches_created", 0))


def manifest(results: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((results / name / "manifest.json").read_text()))


def test_small_files_are_sent_in_one_batch_and_each_gets_its_own_results(packing: dict[str, Any]) -> None:
    inbox, results = packing["inbox"], packing["results"]
    for n in range(4):
        write_input(inbox / f"f{n}.jsonl", [full_line(f"f{n}-{i}", f"hello {n} {i}") for i in range(3)])
    # A bad line in one file: rejected with its own file's line number, the rest still sent.
    write_input(inbox / "bad.jsonl", [full_line("b-0", "hi"), "not json", full_line("b-1", "there")])
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    states = task_states(dag_run)
    assert [k for k in states if k.startswith("prepare")] == ["prepare[0]"]  # one pack, one prepare
    assert batches(packing["emulator"]) == 1
    own = 0
    expected = sorted([f"f{n}-{i}" for n in range(4) for i in range(3)] + ["b-0", "b-1"])
    assert sorted(sent_ids(packing["emulator"])) == expected
    for n in range(4):
        rows = read_jsonl(results / f"f{n}" / "results.jsonl")
        assert [r["custom_id"] for r in rows] == [f"f{n}-{i}" for i in range(3)]
        assert [r["line"] for r in rows] == [1, 2, 3]
        assert all(r["status"] == "succeeded" for r in rows)
        assert f"hello {n}" in json.dumps(rows[0]["response"])
        found = manifest(results, f"f{n}")
        assert found["counts"]["total"] == 3
        assert found["counts"]["succeeded"] == 3
        assert found["input_key"] == f"f{n}.jsonl"
        assert found["packed_in"].rstrip("/").split("/")[-3] == "_packs"
        # The file's own requests and usage in the pack's batch, not the batch's 14 requests.
        assert sum(b["requests"] for b in found["batches"]) == 3
        assert found["usage"]["input_tokens"] > 0
        assert found["by_model"]["gpt-4o-mini"]["input_tokens"] == found["usage"]["input_tokens"]
        own += found["usage"]["input_tokens"]
        assert found["estimated_cost_usd"] is not None
        assert found["estimated_cost_usd"] > 0
    rows = read_jsonl(results / "bad" / "results.jsonl")
    assert [(r["custom_id"], r["line"]) for r in rows] == [("b-0", 1), ("b-1", 3)]
    own += manifest(results, "bad")["usage"]["input_tokens"]
    # The files' usage adds up to the batch's, as the service counted it.
    client = openai.OpenAI(api_key=API_KEY, base_url=packing["emulator"].base_url)
    (batch,) = client.batches.list(limit=10).data
    assert batch.usage is not None
    assert own == batch.usage.input_tokens
    rejects = read_jsonl(results / "bad" / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [2]

    # Again: every file is done, nothing is sent.
    again = run_dag({"input": "*.jsonl"})
    assert again.state == "success", task_states(again)
    assert batches(packing["emulator"]) == 1


def test_files_whose_ids_collide_go_to_different_pack_contents(packing: dict[str, Any]) -> None:
    inbox, results = packing["inbox"], packing["results"]
    for n in range(3):
        write_input(inbox / f"same{n}.jsonl", [full_line("req-1", f"text {n}"), full_line(f"own-{n}", "x")])
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    assert batches(packing["emulator"]) == 3
    for n in range(3):
        rows = read_jsonl(results / f"same{n}" / "results.jsonl")
        assert [r["custom_id"] for r in rows] == ["req-1", f"own-{n}"]
        assert f"text {n}" in json.dumps(rows[0]["response"])  # its own answer, not another file's
    assert sorted(sent_ids(packing["emulator"])) == sorted(["req-1"] * 3 + [f"own-{n}" for n in range(3)])


def packed_once(packing: dict[str, Any], prefix: str) -> None:
    """Write 3 two-request files and send them, packed, in one batch."""
    for n in range(3):
        name = f"{prefix}{n}"
        write_input(
            packing["inbox"] / f"{name}.jsonl", [full_line(f"{name}-0", "a"), full_line(f"{name}-1", "b")]
        )
    assert run_dag({"input": "*.jsonl"}).state == "success"
    assert batches(packing["emulator"]) == 1


def test_a_packed_file_taken_alone_later_is_answered_by_its_pack(packing: dict[str, Any]) -> None:
    results = packing["results"]
    packed_once(packing, "p")
    # Its results are lost (deleted by hand): a run that takes it alone writes them again from its
    # pack's batch, sending nothing.
    for name in ("results.jsonl", "manifest.json"):
        (results / "p1" / name).unlink()
    dag_run = run_dag({"input": "p1.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    assert batches(packing["emulator"]) == 1
    rows = read_jsonl(results / "p1" / "results.jsonl")
    assert [(r["custom_id"], r["status"]) for r in rows] == [("p1-0", "succeeded"), ("p1-1", "succeeded")]


def test_small_anthropic_files_are_packed_too(
    packing: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.dags.test_anthropic_e2e import CONN, _body, _client, native

    root = packing["emulator"].base_url.rstrip("/").removesuffix("/v1")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "anthropic", "password": API_KEY, "host": root}),
    )
    inbox, results = packing["inbox"], packing["results"]
    for n in range(3):  # native lines, and a bare body whose id is generated from the file's key
        write_input(inbox / f"c{n}.jsonl", [native(f"c{n}-0", f"hi {n}"), _body(f"bare {n}")])
    dag_run = run_dag({"input": "*.jsonl", "conn_id": CONN})
    assert dag_run.state == "success", task_states(dag_run)
    assert len(list(_client(packing).messages.batches.list(limit=100))) == 1
    for n in range(3):
        rows = read_jsonl(results / f"c{n}" / "results.jsonl")
        assert rows[0]["custom_id"] == f"c{n}-0"
        assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
        assert [r["response"]["type"] for r in rows] == ["message", "message"]


def test_packed_files_whose_requests_are_all_answered_already_send_nothing(packing: dict[str, Any]) -> None:
    inbox, results = packing["inbox"], packing["results"]
    packed_once(packing, "r")
    for n in range(3):  # a new content, the same requests: each is carried over, none sent again
        with (inbox / f"r{n}.jsonl").open("a") as fout:
            fout.write("\n")
    dag_run = run_dag({"input": "*.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    assert batches(packing["emulator"]) == 1
    for n in range(3):
        found = manifest(results, f"r{n}")
        assert found["counts"]["succeeded"] == 2
        assert found["counts"]["reused"] == 2
