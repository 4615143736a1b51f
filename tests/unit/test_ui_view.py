"""The results view's data for a file still running, from state and progress records only."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.progress import OpenAIBatchProgressTrigger, progress_file, read_progress
from openai_batch.ui.view import file_view, render_file

if TYPE_CHECKING:
    from pathlib import Path


def plan_for(root: Path) -> dict[str, Any]:
    state_dir = root / "_state" / "abcd-v1"
    state_dir.mkdir(parents=True)
    (state_dir / "rejects.jsonl").write_text(json.dumps({"line": 4, "reason": "not JSON", "raw": "{"}) + "\n")
    shards = [{"index": i, "identity": f"id-{i}", "requests": 10, "model": "gpt-4o-mini"} for i in range(2)]
    return {
        "key": "reviews.jsonl",
        "out_dir": str(root / "reviews"),
        "state_dir": str(state_dir),
        "input_sha256": "f" * 64,
        "lines": 21,
        "rejected": 1,
        "reused": 0,
        "shards": shards,
    }


def write_state(
    state_dir: Path, index: int, identity: str, batch_id: str | None, status: str | None = None
) -> None:
    record = {
        "identity": identity,
        "index": index,
        "rounds": [{"round": 0, "batch_id": batch_id, "status": status}],
    }
    (state_dir / f"shard-{index:05d}.state.json").write_text(json.dumps(record))


def test_running_file_shows_the_last_polled_counts(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    state_dir = tmp_path / "_state" / "abcd-v1"
    write_state(state_dir, 0, "id-0", "batch_a", status="validating")  # as submit records it
    write_state(state_dir, 1, "id-of-other-content", "batch_old")
    trigger = OpenAIBatchProgressTrigger(
        progress_file=progress_file(str(state_dir), 0), conn_id="c", batch_id="batch_a"
    )
    poll = {
        "id": "batch_a",
        "status": "in_progress",
        "request_counts": {"total": 10, "completed": 4, "failed": 1},
    }
    asyncio.run(trigger._on_poll(poll))

    view = file_view(0, plan, tmp_path)

    assert view.state == "running"
    assert view.counts == {"total": 21, "rejected": 1, "reused": 0}
    first, second = view.batches
    assert (first.batch_id, first.status, first.live) == ("batch_a", "in_progress", True)
    assert first.request_counts == {"total": 10, "completed": 4, "failed": 1}
    assert (second.batch_id, second.status) == (None, "not submitted")  # another content's record
    assert view.rejects == ["line 4: not JSON"]
    html = render_file(view, "x")
    assert "4/10 done, 1 failed (50%)" in html
    assert "in_progress (live)" in html


def test_progress_trigger_serializes_its_file(tmp_path: Path) -> None:
    target = str(tmp_path / "p.json")
    path, kwargs = OpenAIBatchProgressTrigger(progress_file=target, conn_id="c", batch_id="b").serialize()
    assert path == "openai_batch.progress.OpenAIBatchProgressTrigger"
    again = OpenAIBatchProgressTrigger(**kwargs)
    assert again.progress_file == target
    assert again.batch_id == "b"
    asyncio.run(
        again._on_poll({"id": "b", "status": "finalizing", "request_counts": {"total": 2, "completed": 2}})
    )
    from openai_batch.storage import to_path

    record = read_progress(to_path(target))
    assert record is not None
    assert record["status"] == "finalizing"
    assert record["request_counts"] == {"total": 2, "completed": 2}


def test_the_progress_write_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each poll's record is written in a worker thread: a slow store (an S3 PUT) never blocks the loop."""
    import threading

    import openai_batch.storage

    real_write = openai_batch.storage.write_json
    writers: list[threading.Thread] = []

    def spy(path: Any, value: Any) -> None:
        writers.append(threading.current_thread())
        real_write(path, value)

    monkeypatch.setattr(openai_batch.storage, "write_json", spy)
    target = str(tmp_path / "p.json")
    trigger = OpenAIBatchProgressTrigger(progress_file=target, conn_id="c", batch_id="b")

    async def poll_once() -> threading.Thread:
        await trigger._on_poll({"id": "b", "status": "in_progress", "request_counts": {"total": 1}})
        return threading.current_thread()

    loop_thread = asyncio.run(poll_once())
    assert len(writers) == 1
    assert writers[0] is not loop_thread
    from openai_batch.storage import to_path

    record = read_progress(to_path(target))
    assert record is not None
    assert record["status"] == "in_progress"


def test_results_outside_the_root_are_not_read(tmp_path: Path) -> None:
    plan = plan_for(tmp_path / "real")
    view = file_view(0, plan, tmp_path / "other-root")
    assert view.state == "unavailable"
    assert view.batches == []
    assert view.files == []


def test_one_progress_line_per_poll_with_a_percentage(caplog: pytest.LogCaptureFixture) -> None:
    trigger = OpenAIBatchProgressTrigger(conn_id="c", batch_id="batch_p")
    trigger._log = logging.getLogger("test.trigger")  # a stdlib logger, which caplog sees
    with caplog.at_level(logging.INFO):
        trigger._log_progress(
            {
                "id": "batch_p",
                "status": "in_progress",
                "request_counts": {"total": 8, "completed": 5, "failed": 1},
            }
        )
    assert [r.getMessage() for r in caplog.records] == [
        "Batch batch_p is in_progress: 5/8 done, 1 failed (75%)"
    ]


def test_http_client_request_lines_are_not_logged_at_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from openai_batch.hooks import OpenAIBatchHook
    from openai_emulator.testing import EmulatorServer

    with EmulatorServer(tmp_path / "emu") as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_OPENAI_DEFAULT",
            json.dumps({"conn_type": "openai", "password": "sk-test-quiet", "host": server.base_url}),
        )
        with caplog.at_level(logging.INFO):
            OpenAIBatchHook(conn_id="openai_default").list_batches()
        assert server.stats().get("requests_total", 0) >= 1  # the call did reach the server
    assert not [r for r in caplog.records if "HTTP Request" in r.getMessage()], caplog.text


def test_object_storage_results_are_named_not_read(tmp_path: Path) -> None:
    plan = {**plan_for(tmp_path), "out_dir": "s3://bucket/results/reviews"}
    view = file_view(0, plan, tmp_path)
    assert (view.key, view.state, view.files) == ("reviews.jsonl", "on object storage", [])


def test_capacity_shows_tokens_in_use_per_model_and_the_waiting_shards(tmp_path: Path) -> None:
    from openai_batch.budget import Ledger, NoCapacityError, read_ledger
    from openai_batch.ui.view import capacity_view, render_capacity

    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("k1", "gpt-4o-mini", 1200, 3000, label="shard 1 of a.jsonl (round 0)")
    ledger.admit("k2", "gpt-4o-mini", 1300, 3000, label="shard 2 of a.jsonl (round 0)")
    ledger.admit("k3", "gpt-4o", 500, None, label="shard 1 of b.jsonl (round 0)")
    with pytest.raises(NoCapacityError):
        ledger.admit("k4", "gpt-4o-mini", 1000, 3000, label="shard <3> of a.jsonl (round 0)", poll=5)
    data = read_ledger(tmp_path / "ledger")
    since = data["waiting"]["k4"]["since"]
    limits = {"gpt-4o-mini": 3000, "gpt-4.1-mini": 9000}

    view = capacity_view(data, limits, since + 12)
    rows = {m.model: (m.tokens, m.limit, m.batches, m.waiting) for m in view.models}
    assert rows == {
        "gpt-4o-mini": (2500, 3000, 2, 1),
        "gpt-4o": (500, None, 1, 0),
        "gpt-4.1-mini": (0, 9000, 0, 0),  # a limit of its own, nothing in flight
    }
    assert [(w.label, w.model, w.tokens, round(w.waited_seconds)) for w in view.waiting] == [
        ("shard <3> of a.jsonl (round 0)", "gpt-4o-mini", 1000, 12)
    ]
    html = render_capacity(view)
    assert '<tr data-model="gpt-4o-mini">' in html
    assert '<td data-cap="tokens">2,500</td><td data-cap="limit">3,000</td>' in html
    assert '<td data-cap="batches">2</td><td data-cap="waiting">1</td>' in html
    assert "shard &lt;3&gt; of a.jsonl" in html  # escaped
    assert "<td>12 s</td>" in html
    # Once it stopped checking for three polls and a minute, it is no longer shown as waiting.
    assert capacity_view(data, limits, since + 80).waiting == []
    assert "no limit" in render_capacity(capacity_view(data, {}, since))
    assert "No batch in flight" in render_capacity(capacity_view({}, {}, since))


def test_a_shard_held_back_by_capacity_says_so_and_so_does_its_file(tmp_path: Path) -> None:
    from openai_batch.budget import Ledger, NoCapacityError, read_ledger
    from openai_batch.capacity import round_key
    from openai_batch.ui.view import capacity_view

    plan = plan_for(tmp_path)
    state_dir = tmp_path / "_state" / "abcd-v1"
    write_state(state_dir, 0, "id-0", "batch_a", "in_progress")  # shard 1 was admitted and sent
    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("other", "gpt-4o-mini", 900, 1000, label="shard 1 of other.jsonl (round 0)")
    with pytest.raises(NoCapacityError):  # shard 2 (no state record yet) waits for room
        ledger.admit(round_key("id-1", 0, 0), "gpt-4o-mini", 500, 1000, label="shard 2 of reviews.jsonl")
    held = capacity_view(read_ledger(tmp_path / "ledger"), {"gpt-4o-mini": 1000}, 0)
    view = file_view(0, plan, tmp_path, frozenset(w.key for w in held.waiting))
    assert [b.status for b in view.batches] == ["in_progress", "waiting for capacity"]
    assert view.state == "waiting for capacity"
    assert [b.status for b in file_view(0, plan, tmp_path).batches] == ["in_progress", "not submitted"]


def test_the_view_names_the_api_and_an_azure_deployments_model() -> None:
    from openai_batch.ui.view import BatchRow, FileView

    view = FileView(0, "az.jsonl", "written", provider="azure")
    view.batches = [BatchRow(0, 0, "batch_1", "completed", None, model="prod-mini", priced_as="gpt-4o-mini")]
    html = render_file(view, "x")
    assert '<b class="provider">Azure OpenAI Batch</b>' in html
    assert "prod-mini <span class='why'>(deployment of gpt-4o-mini)</span>" in html
    claude = render_file(FileView(1, "c.jsonl", "written", provider="anthropic"), "x")
    assert '<b class="provider">Anthropic Message Batches</b>' in claude
