"""Merging a borrowed entry: the owner's answers are used only for the custom_ids borrowed."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

ENDPOINT = "/v1/chat/completions"


def _request(custom_id: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": custom_id}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"


def _answer(custom_id: str) -> str:
    body = {"id": f"chatcmpl-{custom_id}", "object": "chat.completion", "choices": [], "usage": {}}
    response = {"status_code": 200, "request_id": f"req-{custom_id}", "body": body}
    return (
        json.dumps({"id": f"line-{custom_id}", "custom_id": custom_id, "response": response, "error": None})
        + "\n"
    )


def _shard(index: int, identity: str, file: str, requests: int, **extra: Any) -> dict[str, Any]:
    return {"index": index, "identity": identity, "endpoint": ENDPOINT, "model": "gpt-4o-mini", "file": file,
            "requests": requests, **extra}  # fmt: skip


def test_owner_outcomes_of_ids_not_borrowed_are_never_used(tmp_path: Path) -> None:
    from openai_batch.operators import load_state, save_state
    from openai_batch.results_io import build_manifest, merge_shards
    from openai_batch.storage import to_path

    owner, borrower = tmp_path / "owner", tmp_path / "borrower"
    (owner / "batches").mkdir(parents=True)
    borrower.mkdir()
    # The owner sent x-0 and x-1 and got both answers.
    (owner / "shard-00000.jsonl").write_text(_request("x-0") + _request("x-1"))
    owner_shard = _shard(0, "own-0", "shard-00000.jsonl", 2)
    (owner / "plan.json").write_text(json.dumps({"shards": [owner_shard]}))
    state = load_state(to_path(str(owner)), owner_shard)
    rnd = state.current
    rnd.batch_id, rnd.status, rnd.output_file_id, rnd.collected = "batch_owner", "completed", "file-out", True
    save_state(to_path(str(owner)), state)
    (owner / "batches" / "batch_owner.output.jsonl").write_text(_answer("x-0") + _answer("x-1"))
    # The borrower borrowed x-0 only; its own x-1 (another body) has no answer yet.
    (borrower / "shard-00000.jsonl").write_text(_request("x-1").replace('"x-1"}', '"other"}'))
    (borrower / "borrowed-0123456789abcdef.jsonl").write_text(_request("x-0"))
    (borrower / "order.txt").write_text('"x-0"\n"x-1"\n')
    shards = [
        _shard(0, "mine-0", "shard-00000.jsonl", 1),
        _shard(
            1,
            "mine-b",
            "borrowed-0123456789abcdef.jsonl",
            1,
            kind="borrowed",
            owner_state_dir=str(owner),
            owner_shard=0,
        ),
    ]
    plan = {"shards": shards, "source": "in.jsonl", "key": "in.jsonl", "input_sha256": "0" * 64,
            "state_dir": str(borrower), "partition": "2024-06-01", "lines": 2, "rejected": 0}  # fmt: skip
    (borrower / "plan.json").write_text(json.dumps(plan))
    folder = to_path(str(borrower))
    states = [load_state(folder, s) for s in shards]
    out = io.BytesIO()
    counts = merge_shards(folder, states, out)
    results = {r["custom_id"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert results["x-0"]["status"] == "succeeded"
    assert results["x-0"]["batch_id"] == "batch_owner"
    assert results["x-1"]["status"] != "succeeded"  # the owner's answer to x-1 is not ours
    manifest = build_manifest(plan, states, counts)
    assert manifest["counts"]["borrowed"] == 1
    assert manifest["counts"]["reused"] == 0
