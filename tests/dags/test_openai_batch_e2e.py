"""End to end: ``dag.test()`` against the emulator over real HTTP."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.dags.conftest import get_dag, read_jsonl

if TYPE_CHECKING:
    from pathlib import Path

# The seed script's sample lines: bare request bodies, which the real API would reject unwrapped.
SEED_LINES = [
    {
        "model": "gpt-4-turbo",
        "messages": [
            {"role": "system", "content": "你是一个写作助手"},
            {"role": "user", "content": "写一首关于春天的诗"},
        ],
    },
    {
        "model": "gpt-4-turbo",
        "messages": [
            {"role": "system", "content": "你是一个写作助手"},
            {"role": "user", "content": "解释量子力学的基本原理"},
        ],
    },
    {
        "model": "gpt-4-turbo",
        "messages": [
            {"role": "system", "content": "你是一个写作助手"},
            {"role": "user", "content": "写一段关于人工智能的演讲稿"},
        ],
    },
]


def full_line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def write_input(path: Path, lines: list[Any]) -> None:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines)
    )


def run_dag(conf: dict[str, Any], **kwargs: Any) -> Any:
    dag = get_dag()
    return dag.test(run_conf={"poll_interval": 1, "settle_seconds": 0, **conf}, **kwargs)


def task_states(dag_run: Any) -> dict[str, str]:
    return {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.state
        for ti in dag_run.get_task_instances()
    }


def result_dir(results: Path) -> Path:
    manifests = [m for m in results.rglob("manifest.json") if "_history" not in m.parts]
    assert len(manifests) == 1, manifests
    return manifests[0].parent


def test_mixed_file_end_to_end(pipeline: dict[str, Any]) -> None:
    lines: list[Any] = [
        SEED_LINES[0],
        full_line("full-1", "hello"),
        "{this is not json",
        SEED_LINES[1],
        full_line("full-2", "bonjour", model="gpt-4o"),
        "",
        SEED_LINES[2],
    ]
    write_input(pipeline["inbox"] / "sample.jsonl", lines)

    dag_run = run_dag({"input": "sample.jsonl"})

    assert dag_run.state == "success", task_states(dag_run)
    out = result_dir(pipeline["results"])
    assert out.name == "sample"
    results = read_jsonl(out / "results.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    manifest = json.loads((out / "manifest.json").read_text())

    # Input order, every valid line once, joined to its response.
    ids = [r["custom_id"] for r in results]
    assert ids[1] == "full-1"
    assert ids[3] == "full-2"
    assert len(ids) == len(set(ids)) == 5
    # Each result names its input line (1-based), so a bare body's answer is found without its id.
    assert [r["line"] for r in results] == [1, 2, 4, 5, 7]
    assert all(r["status"] == "succeeded" for r in results), results
    assert all(r["response"]["object"] == "chat.completion" for r in results)
    assert all(r["batch_id"].startswith("batch_") for r in results)
    assert "春天" in json.dumps(results[0]["response"], ensure_ascii=False)
    # Three models (gpt-4-turbo, gpt-4o-mini, gpt-4o) -> three shards -> three batches.
    assert len({r["batch_id"] for r in results}) == 3

    assert rejects == [{"line": 3, "reason": rejects[0]["reason"], "raw": "{this is not json"}]
    assert "json" in rejects[0]["reason"].lower()

    counts = manifest["counts"]
    assert counts == {
        "total": 6,
        "succeeded": 5,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "rejected": 1,
        "reused": 0,
        "borrowed": 0,
        "from_cache": 0,
    }
    assert counts["total"] == len(results) + len(rejects)  # conservation
    assert len(manifest["batches"]) == 3
    assert {b["status"] for b in manifest["batches"]} == {"completed"}
    assert manifest["usage"]["input_tokens"] > 0
    assert manifest["usage"]["output_tokens"] > 0
    assert manifest["estimated_cost_usd"] is not None
    assert manifest["estimated_cost_usd"] > 0
    assert len(manifest["input_sha256"]) == 64
    # Version 2: the run that wrote it, shards numbered as the UI does, no day for a manual run
    # over the inbox root, and no reason for an unknown cost when every model has a price.
    assert manifest["manifest_version"] == 2
    assert (manifest["run_id"], manifest["run_type"]) == (dag_run.run_id, "manual")
    assert manifest["partition"] is None
    assert sorted(b["shard"] for b in manifest["batches"]) == [1, 2, 3]
    assert manifest["cost_unknown_reason"] is None


def test_same_content_is_not_submitted_twice(pipeline: dict[str, Any]) -> None:
    write_input(pipeline["inbox"] / "again.jsonl", SEED_LINES)
    assert run_dag({"input": "again.jsonl"}).state == "success"
    assert _batches(pipeline["emulator"]) == 1
    manifest = pipeline["results"] / "again" / "manifest.json"
    first = manifest.read_text()

    dag_run = run_dag({"input": "again.jsonl"})
    assert dag_run.state == "success", task_states(dag_run)
    assert _batches(pipeline["emulator"]) == 1  # skipped: same content, results exist
    assert manifest.read_text() == first

    # force re-processes the file as a new submission.
    assert run_dag({"input": "again.jsonl", "force": True}).state == "success"
    assert _batches(pipeline["emulator"]) == 2


def _batches(emulator: Any) -> int:
    return int(emulator.stats().get("batches_created", 0))


def test_dry_run_uploads_nothing(pipeline: dict[str, Any]) -> None:
    write_input(pipeline["inbox"] / "plan.jsonl", [*SEED_LINES, "[1, 2]"])
    dag_run = run_dag({"input": "plan.jsonl", "dry_run": True})
    assert dag_run.state == "success", task_states(dag_run)
    out = pipeline["results"] / "plan"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["valid"] == 3
    assert plan["rejected"] == 1
    assert len(plan["shards"]) == 1
    assert plan["estimated_input_tokens"] > 0
    assert not (out / "results.jsonl").exists()
    assert _batches(pipeline["emulator"]) == 0


def test_file_without_valid_line_fails_naming_the_file(pipeline: dict[str, Any]) -> None:
    write_input(pipeline["inbox"] / "bad.jsonl", ["nope", '{"stream": true}'])
    dag_run = run_dag({"input": "bad.jsonl"})
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["write_results[0]"] == "failed", states
    rejects = read_jsonl(pipeline["results"] / "bad" / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [1, 2]
    manifest = json.loads((pipeline["results"] / "bad" / "manifest.json").read_text())
    assert "bad.jsonl: no valid request in 2 lines" in manifest["error"]
    assert manifest["counts"]["rejected"] == 2
