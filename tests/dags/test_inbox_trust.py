"""Real inboxes, end to end on the emulator: every file keeps its own results, is paid once, and is
read only where it belongs; unusable files fail alone; broken results are repaired without paying."""

from __future__ import annotations

import gzip
import json
import os
from typing import TYPE_CHECKING, Any

from tests.dags.conftest import API_KEY
from tests.reliability.support import (
    batches_created,
    chat_line,
    read_jsonl,
    run_dag,
    task_states,
    write_input,
)

if TYPE_CHECKING:
    from pathlib import Path


def manifests(results: Path) -> dict[str, dict[str, Any]]:
    """Return ``{input_key: manifest}`` of every current results folder (not history)."""
    found = {}
    for path in results.rglob("manifest.json"):
        if "_history" in path.parts or "_state" in path.parts:
            continue
        manifest = json.loads(path.read_text())
        manifest["_folder"] = path.parent
        found[manifest["input_key"]] = manifest
    return found


def ids_in(folder: Path) -> list[str]:
    return [r["custom_id"] for r in read_jsonl(folder / "results.jsonl")]


def test_files_whose_cleaned_names_collide_keep_their_own_results(pipeline: dict[str, Any]) -> None:
    inbox, results, server = pipeline["inbox"], pipeline["results"], pipeline["emulator"]
    files = {
        "数据.jsonl": ["d-0", "d-1", "d-2"],
        "测试.jsonl": ["t-0", "t-1"],
        "a b.jsonl": ["s-0", "s-1"],
        "a_b.jsonl": ["u-0"],
        "dupA/requests.jsonl": ["A-0", "A-1"],
        "dupB/requests.jsonl": ["B-0"],
    }
    for name, ids in files.items():
        write_input(inbox / name, [chat_line(cid, f"text of {cid}") for cid in ids])

    first = run_dag({"input": "*.jsonl"})
    assert first.state == "success", task_states(first)
    labels = {(ti.task_id, ti.rendered_map_index) for ti in first.get_task_instances() if ti.map_index >= 0}
    # The grid names each mapped task's file (and shard), not just its index.
    assert {label for task, label in labels if task == "prepare"} == {
        "数据.jsonl",
        "测试.jsonl",
        "a b.jsonl",
        "a_b.jsonl",
    }
    assert ("wait_for_batch", "a b.jsonl #1/1") in labels
    second = run_dag({"input": "dup*/requests.jsonl"})
    assert second.state == "success", task_states(second)

    found = manifests(results)
    assert sorted(found) == sorted(files)
    assert len({m["_folder"] for m in found.values()}) == len(files)  # no two files share a folder
    for key, ids in files.items():
        manifest = found[key]
        assert manifest["input"] == str((inbox / key).resolve())
        assert ids_in(manifest["_folder"]) == ids, key  # its own requests, in its own order
        assert manifest["counts"]["succeeded"] == len(ids)
    assert batches_created(server) == len(files)  # one batch per file: nothing paid twice
    # The dated layout is kept for plain names.
    assert found["dupA/requests.jsonl"]["_folder"] == results / "dupA" / "requests"


def test_one_unusable_file_fails_alone(pipeline: dict[str, Any]) -> None:
    inbox, results = pipeline["inbox"], pipeline["results"]
    (inbox / "empty.jsonl").write_bytes(b"")
    (inbox / "blank.jsonl").write_bytes(b"\n  \n\t\n")
    (inbox / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    write_input(inbox / "invalid.jsonl", ["nope", "[1, 2]"])
    write_input(inbox / "good.jsonl", [chat_line("g-0", "hello"), chat_line("g-1", "hi")])
    packed = "".join(json.dumps(chat_line(f"z-{i}", "zipped")) + "\n" for i in range(3))
    (inbox / "packed.jsonl.gz").write_bytes(gzip.compress(packed.encode()))
    (inbox / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip at all")

    dag_run = run_dag({"input": "*"})

    assert dag_run.state == "failed"  # the failure is visible ...
    found = manifests(results)
    assert ids_in(found["good.jsonl"]["_folder"]) == ["g-0", "g-1"]  # ... and the good files were sent
    assert found["good.jsonl"]["counts"]["succeeded"] == 2
    assert ids_in(found["packed.jsonl.gz"]["_folder"]) == ["z-0", "z-1", "z-2"]
    for bad in ("empty.jsonl", "blank.jsonl", "binary.jsonl", "invalid.jsonl", "corrupt.jsonl.gz"):
        assert bad in found[bad]["error"], found[bad]["error"]  # ... and names the file
        assert (found[bad]["_folder"] / "rejects.jsonl").exists()
    assert len(read_jsonl(found["invalid.jsonl"]["_folder"] / "rejects.jsonl")) == 2
    states = task_states(dag_run)
    assert (
        sorted(states[k] for k in states if k.startswith("write_results")) == ["failed"] * 5 + ["success"] * 2
    )
    assert all(states[k] == "success" for k in states if k.startswith(("prepare", "submit", "wait_for")))


def test_links_and_params_that_point_outside_are_refused(pipeline: dict[str, Any], tmp_path: Path) -> None:
    inbox, results, server = pipeline["inbox"], pipeline["results"], pipeline["emulator"]
    outside = write_input(tmp_path / "elsewhere" / "private.jsonl", [chat_line("private", "do not send")])
    os.symlink(outside, inbox / "outside.jsonl")
    os.symlink("/proc/self/environ", inbox / "environ.jsonl")
    write_input(inbox / "good.jsonl", [chat_line("g-0", "hello")])

    dag_run = run_dag({"input": "*.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    assert sorted(manifests(results)) == ["good.jsonl"]
    assert batches_created(server) == 1  # the outside file was not paid for

    for param in ("/proc/self/environ", "../elsewhere/*.jsonl"):
        refused = run_dag({"input": param})
        assert refused.state == "failed", param
        assert task_states(refused)["wait_for_input"] == "failed"
    assert batches_created(server) == 1
    assert sorted(manifests(results)) == ["good.jsonl"]
    for path in results.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="replace"), path


def test_broken_results_are_repaired_from_state_without_paying_again(pipeline: dict[str, Any]) -> None:
    inbox, results, server = pipeline["inbox"], pipeline["results"], pipeline["emulator"]
    server.set_faults(expire_fraction=0.5)  # every first batch expires half way: a second round is needed
    write_input(inbox / "rounds.jsonl", [chat_line(f"r-{i}", f"q {i}") for i in range(6)])
    first = run_dag({"input": "rounds.jsonl", "max_requests_per_batch": 3})
    assert first.state == "success", task_states(first)
    server.set_faults(expire_fraction=None)
    manifest = manifests(results)["rounds.jsonl"]
    folder = manifest["_folder"]
    assert manifest["rounds"] >= 2
    good = (folder / "results.jsonl").read_bytes()
    paid = batches_created(server)

    # A full disk (or a crash) left a truncated results file behind the manifest's back.
    (folder / "results.jsonl").write_bytes(good[: len(good) // 3])
    repaired = run_dag({"input": "rounds.jsonl", "max_requests_per_batch": 3})
    assert repaired.state == "success", task_states(repaired)
    assert (folder / "results.jsonl").read_bytes() == good
    assert batches_created(server) == paid  # repaired from the state it kept, nothing paid again

    # A re-run of complete results does nothing at all.
    again = run_dag({"input": "rounds.jsonl", "max_requests_per_batch": 3})
    assert again.state == "success"
    assert batches_created(server) == paid
    assert ids_in(folder) == [f"r-{i}" for i in range(6)]


def test_custom_ids_the_api_or_sqlite_cannot_carry_are_rejected_up_front(pipeline: dict[str, Any]) -> None:
    inbox, results = pipeline["inbox"], pipeline["results"]
    lines = [
        json.dumps(chat_line("fine", "hello")),
        json.dumps(chat_line("nul\u0000inside", "x")),
        '{"custom_id": "\\ud800lone", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}',
        json.dumps(chat_line("ünïcode-✓", "fine too")),
    ]
    write_input(inbox / "ids.jsonl", lines)

    dag_run = run_dag({"input": "ids.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    folder = manifests(results)["ids.jsonl"]["_folder"]
    assert ids_in(folder) == ["fine", "ünïcode-✓"]
    assert all(r["status"] == "succeeded" for r in read_jsonl(folder / "results.jsonl"))
    rejects = read_jsonl(folder / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [2, 3]
    assert "NUL character (U+0000" in rejects[0]["reason"]
    assert "lone surrogate (U+D800" in rejects[1]["reason"]


def test_a_request_with_a_lone_surrogate_escape_is_sent_and_answered(
    pipeline: dict[str, Any],
) -> None:
    # Valid JSON that msgspec refuses and the stdlib reads: prepare keeps the line, so claiming, the
    # submit and the write must each read it too.
    inbox, results = pipeline["inbox"], pipeline["results"]
    lines = [
        json.dumps(chat_line("plain", "hello")),
        '{"custom_id": "odd-text", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "half \\udc00 a pair"}]}}',
    ]
    write_input(inbox / "surrogate.jsonl", lines)

    dag_run = run_dag({"input": "surrogate.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    folder = manifests(results)["surrogate.jsonl"]["_folder"]
    assert ids_in(folder) == ["plain", "odd-text"]
    assert read_jsonl(folder / "rejects.jsonl") == []


def test_unknown_models_are_unpriced_not_guessed(pipeline: dict[str, Any]) -> None:
    inbox, results = pipeline["inbox"], pipeline["results"]
    write_input(inbox / "typo.jsonl", [chat_line("t-0", "x", model="gtp-4o-mini"), chat_line("t-1", "y")])
    dag_run = run_dag({"input": "typo.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    manifest = manifests(results)["typo.jsonl"]
    assert manifest["estimated_cost_usd"] is None
    assert manifest["unpriced_models"] == ["gtp-4o-mini"]


def test_a_file_that_comes_back_changed_reuses_its_unchanged_answers(pipeline: dict[str, Any]) -> None:
    inbox, results, server = pipeline["inbox"], pipeline["results"], pipeline["emulator"]
    path = inbox / "grows.jsonl"
    write_input(path, [chat_line(f"g-{i}", f"q {i}") for i in range(4)])
    assert run_dag({"input": "grows.jsonl"}).state == "success"
    first = manifests(results)["grows.jsonl"]
    first_results = (first["_folder"] / "results.jsonl").read_bytes()
    assert batches_created(server) == 1

    # g-1 changes, g-4 is added; g-0, g-2 and g-3 are unchanged and already succeeded.
    lines = [chat_line(f"g-{i}", f"q {i}") for i in range(5)]
    lines[1] = chat_line("g-1", "a different question")
    write_input(path, lines)
    dag_run = run_dag({"input": "grows.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)

    second = manifests(results)["grows.jsonl"]
    assert second["input_sha256"] != first["input_sha256"]
    assert second["counts"]["reused"] == 3
    assert second["counts"]["succeeded"] == 5
    assert [b["requests"] for b in second["batches"]] == [2]  # only the changed and the new request
    assert batches_created(server) == 2
    got = read_jsonl(second["_folder"] / "results.jsonl")
    assert [r["custom_id"] for r in got] == [f"g-{i}" for i in range(5)]
    earlier = {r["custom_id"]: r for r in (json.loads(x) for x in first_results.splitlines())}
    for record in got:
        if record["custom_id"] in ("g-0", "g-2", "g-3"):
            assert record == earlier[record["custom_id"]]  # carried over as it was paid for
        else:
            assert record["batch_id"] != earlier["g-0"]["batch_id"]
    # The earlier content's results are kept, not overwritten.
    history = second["_folder"] / "_history" / first["input_sha256"][:16]
    assert (history / "results.jsonl").read_bytes() == first_results
    assert json.loads((history / "manifest.json").read_text())["input_sha256"] == first["input_sha256"]
