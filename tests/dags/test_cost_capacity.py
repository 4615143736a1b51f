"""Cost and capacity control against the emulator: enqueued-token limit, max_cost_usd, daily budget."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.reliability.conftest import emulator_with, point_pipeline  # noqa: F401 - fixtures
from tests.reliability.support import PARTITION, chat_line, prepare, run_dag, task_states, write_input

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(600)

MODEL = "gpt-4o-mini"


def _lines(prefix: str, count: int, max_tokens: int | None = None) -> list[dict[str, Any]]:
    lines = []
    for i in range(count):
        line = chat_line(f"{prefix}-{i:03d}", f"question {prefix} number {i:03d} " + "x" * 200, MODEL)
        if max_tokens is not None:
            line["body"]["max_tokens"] = max_tokens
        lines.append(line)
    return lines


def _emulator_tokens(path: Path) -> int:
    """The emulator's enqueued-token estimate of one request file (a quarter of each line's length)."""
    return sum(
        max(1, (len(raw) + 3) // 4) for raw in path.read_bytes().splitlines(keepends=True) if raw.strip()
    )


def _list_batches(base_url: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        f"{base_url}/batches?limit=100", headers={"Authorization": "Bearer sk-test-0123456789abcdef-secret"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: list[dict[str, Any]] = json.load(resp)["data"]
    return data


def _drive_shard(
    shard: dict[str, Any], ledger_dir: str, limits: str, errors: list[BaseException], **sensor_args: Any
) -> None:
    """Run one shard's submit and wait tasks as the scheduler would, resuming after each deferral."""
    from airflow.sdk.exceptions import TaskDeferred

    from openai_batch.operators import OpenAIBatchSubmitOperator

    ctx: Any = {"run_id": "manual__capacity"}
    try:
        submit = OpenAIBatchSubmitOperator(
            task_id="submit", shard=shard, ledger_dir=ledger_dir, token_limits=limits, capacity_poll=0.2
        )
        call: Any = submit.execute
        while True:
            try:
                submitted = call(ctx) if call == submit.execute else call(ctx, None)
                break
            except TaskDeferred as deferred:  # waiting for capacity: a time trigger
                time.sleep(0.2)
                call = getattr(submit, deferred.method_name)
        _drive_wait(submitted, ledger_dir, limits, **sensor_args)
    except BaseException as err:  # reported by the test
        errors.append(err)


def _drive_wait(submitted: dict[str, Any], ledger_dir: str, limits: str, **sensor_args: Any) -> None:
    """Run one shard's wait task as the scheduler would, resuming after each deferral."""
    from airflow.sdk.exceptions import TaskDeferred

    from openai_batch.sensors import OpenAIBatchSensor
    from openai_batch.triggers import OpenAIBatchTrigger

    ctx: Any = {"run_id": "manual__capacity"}
    deadline = time.monotonic() + 120
    sensor = OpenAIBatchSensor(
        task_id="wait_for_batch",
        shard=submitted,
        ledger_dir=ledger_dir,
        token_limits=limits,
        capacity_poll=0.2,
        poll_interval=0.2,
        **sensor_args,
    )
    call = sensor.execute
    while time.monotonic() < deadline:
        try:
            call(ctx) if call == sensor.execute else call(ctx, None)
            return
        except TaskDeferred as deferred:
            time.sleep(0.2)
            # A batch trigger resumes through execute (it checks the batch and goes on); a time
            # trigger resumes the method it names.
            call = (
                sensor.execute
                if isinstance(deferred.trigger, OpenAIBatchTrigger)
                else getattr(sensor, deferred.method_name)
            )
    raise AssertionError(f"the wait of shard {submitted['index']} did not end in 120 s")


def test_shards_without_room_end_submit_and_are_sent_by_their_wait(
    tmp_path: Path,
    emulator_with: Any,  # noqa: F811
    point_pipeline: Any,  # noqa: F811
) -> None:
    """
    Room for one shard of five: the other submits end at once without a batch (no deferral), and
    each shard's wait sends it once there is room, so the run ends.

    wait_for_batch is mapped over every submit's output: a submit that waited for capacity itself
    held back the waits that give capacity back, and the run never ended. The waits are driven one
    after another here, as a scheduler with a single slot would; tests/deploy/test_capacity.py shows
    shards running side by side under a real scheduler.
    """
    from airflow.sdk.exceptions import TaskDeferred

    from openai_batch.budget import Ledger
    from openai_batch.operators import OpenAIBatchSubmitOperator, OpenAIBatchWriteResultsOperator

    inbox = tmp_path / "in"
    src = write_input(inbox / "five.jsonl", _lines("f", 20))
    results = tmp_path / "results"
    plan = prepare(src, results, max_requests_per_batch=4, inbox=inbox)
    shards = plan["shards"]
    assert len(shards) == 5
    shard_tokens = max(_emulator_tokens(_shard_file(s)) for s in shards)
    cap = shard_tokens + shard_tokens // 2
    server = emulator_with(token_limit=cap, requests_per_second=50)
    point_pipeline(server.base_url)
    ledger_dir = str(tmp_path / "ledger")
    limits = json.dumps({MODEL: cap})

    submitted = []
    for shard in shards:
        operator = OpenAIBatchSubmitOperator(
            task_id="submit", shard=shard, ledger_dir=ledger_dir, token_limits=limits, capacity_poll=0.2
        )
        try:
            submitted.append(operator.execute({"run_id": "manual__capacity"}))  # type: ignore[arg-type]
        except TaskDeferred:
            pytest.fail("a submit without room deferred; the waits that give capacity back would never start")
    assert [bool(s["batch_id"]) for s in submitted] == [True, False, False, False, False]
    in_use = Ledger(tmp_path / "ledger").in_use()[MODEL]
    assert (in_use["batches"], in_use["waiting"]) == (1, 4), in_use

    for shard in submitted:
        _drive_wait(shard, ledger_dir, limits)

    stats = server.stats()
    assert stats.get("batches_created") == 5, stats
    assert stats.get("batches_completed") == 5, stats
    assert stats.get("batches_failed", 0) == 0, stats
    assert stats["batches_in_flight_max"] == 1, stats
    assert Ledger(tmp_path / "ledger").in_use() == {}
    out = OpenAIBatchWriteResultsOperator(task_id="write_results", plan=plan, ledger_dir=ledger_dir).execute(
        {"run_id": "manual__capacity", "outlet_events": {}}  # type: ignore[arg-type]
    )
    assert out["counts"]["succeeded"] == 20, out["counts"]


def _shard_file(shard: dict[str, Any]) -> Path:
    """Return the local path of a shard's request file."""
    from openai_batch.storage import local_dir, to_path

    folder = local_dir(to_path(shard["state_dir"]))
    assert folder is not None
    return folder / shard["file"]


def test_estimate_above_max_cost_uploads_nothing(
    pipeline: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    from openai_batch.budget import plan_cost
    from openai_batch.pricing import format_usd

    write_input(pipeline["inbox"] / "big.jsonl", _lines("big", 30, max_tokens=4000))
    # 30 requests x 4000 output tokens at gpt-4o-mini's batch price ($0.30/1M) = $0.036 and some input.
    estimate = plan_cost(prepare(pipeline["inbox"] / "big.jsonl", pipeline["results"] / "_dry"))
    assert estimate is not None
    assert 0.036 < estimate < 0.04
    capfd.readouterr()
    dag_run = run_dag({"input": "big.jsonl", "max_cost_usd": 0.01})
    states = task_states(dag_run)
    assert states["check_budget"] == "failed", states
    assert all(
        states[k] == "upstream_failed" for k in states if k.startswith(("submit", "wait_for_batch"))
    ), states
    stats = pipeline["emulator"].stats()
    assert stats.get("files_uploaded", 0) == 0, stats
    assert stats.get("batches_created", 0) == 0, stats
    text = "".join(capfd.readouterr())  # the task's log goes to the console under dag.test()
    assert f"estimated cost {format_usd(estimate)} exceeds" in text, text[-2000:]
    assert "exceeds max_cost_usd $0.01" in text
    assert "Raise the max_cost_usd param" in text


def test_daily_budget_counts_what_earlier_runs_spent(
    pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from openai_batch.budget import Ledger, plan_cost
    from openai_batch.pricing import format_usd

    inbox, results = pipeline["inbox"], pipeline["results"]
    write_input(inbox / "first.jsonl", _lines("first", 40))
    write_input(inbox / "second.jsonl", _lines("second", 10, max_tokens=50))
    first = run_dag({"input": "first.jsonl"})
    assert first.state == "success", task_states(first)
    manifest = json.loads(next(results.rglob("first/manifest.json")).read_text())
    actual = manifest["actual"]["cost_usd"]
    # Estimate and actual side by side; the default 1000 output tokens per request is above what came back.
    assert manifest["estimate"]["output_tokens"] == 40 * 1000
    assert 0 < actual < manifest["estimate"]["cost_usd"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    ledger = Ledger(results / "_ledger")
    assert ledger.spent(today) == pytest.approx(actual)  # the actual, not the estimate, counts

    second_estimate = plan_cost(prepare(inbox / "second.jsonl", results / "_dry", partition=PARTITION))
    assert second_estimate is not None
    budget = round(second_estimate + actual / 2, 6)  # the second run fits alone, not after the first
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_DAILY_BUDGET_USD", str(budget))
    uploaded = pipeline["emulator"].stats().get("files_uploaded", 0)
    capfd.readouterr()
    second = run_dag({"input": "second.jsonl"})
    text = "".join(capfd.readouterr())
    assert task_states(second)["check_budget"] == "failed", task_states(second)
    assert pipeline["emulator"].stats().get("files_uploaded", 0) == uploaded
    assert f"plus {format_usd(actual)} spent by earlier runs" in text, text[-2000:]
    assert f"exceeds the daily budget {format_usd(budget)}" in text
    assert "openai_batch_daily_budget_usd" in text

    # Raised as the message says, the same file goes.
    monkeypatch.setenv(
        "AIRFLOW_VAR_OPENAI_BATCH_DAILY_BUDGET_USD", str(round(actual + second_estimate + 0.001, 6))
    )
    third = run_dag({"input": "second.jsonl"})
    assert third.state == "success", task_states(third)
    assert pipeline["emulator"].stats().get("files_uploaded", 0) == uploaded + 1


def test_token_limit_exceeded_is_retried_past_the_attempt_cap_when_the_shard_fits(
    tmp_path: Path,
    emulator_with: Any,  # noqa: F811
    point_pipeline: Any,  # noqa: F811
) -> None:
    """The configured limit is above what the service takes (another client uses the organisation)."""
    inbox = tmp_path / "in"
    src = write_input(inbox / "over.jsonl", _lines("o", 16))
    plan = prepare(src, tmp_path / "results", max_requests_per_batch=4, inbox=inbox)
    shard_tokens = max(_emulator_tokens(_shard_file(s)) for s in plan["shards"])
    server = emulator_with(token_limit=shard_tokens + shard_tokens // 2, requests_per_second=8)
    point_pipeline(server.base_url)
    limits = json.dumps({MODEL: 4 * shard_tokens})  # all four admitted; the service takes one at a time
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_drive_shard,
            args=(s, str(tmp_path / "ledger"), limits, errors),
            kwargs={"max_token_limit_retries": 0, "token_limit_wait": 0.2},
        )
        for s in plan["shards"]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    batches = _list_batches(server.base_url)
    refused = [b for b in batches if b["status"] == "failed"]
    assert refused, "the service never refused a batch: the fallback was not exercised"
    assert all(e["code"] == "token_limit_exceeded" for b in refused for e in b["errors"]["data"])
    assert sum(b["status"] == "completed" for b in batches) == 4


def _gets(emulator: Any) -> int:
    """How many times the emulator answered ``GET /v1/batches/{batch_id}``."""
    return int(emulator.stats()["requests_by_route"].get("GET /v1/batches/{batch_id}", 0))


def _leaked_and_live(emulator: Any) -> tuple[str, str]:
    """Create a batch that completes (its release will be lost) and one that stays live (validating)."""
    import openai

    client = openai.OpenAI(
        base_url=emulator.base_url, api_key="sk-test-0123456789abcdef-secret", max_retries=0
    )

    def create(custom_id: str) -> str:
        data = (json.dumps(chat_line(custom_id, "hello", MODEL)) + "\n").encode()
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        return client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id

    leaked = create("leaked")
    deadline = time.monotonic() + 30
    while client.batches.retrieve(leaked).status != "completed":
        assert time.monotonic() < deadline, "the emulator did not complete the batch"
        time.sleep(0.1)
    emulator.configure(validating_seconds=3600.0)  # batches created from now on stay live
    live = create("live")
    assert client.batches.retrieve(live).status == "validating"
    return leaked, live


def test_a_leaked_entry_is_released_after_reconciliation_and_live_ones_stay(
    pipeline: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """
    A run failed after its batch was created: its entry would hold the room for 27 h.

    A shard refused for capacity looks the model's entries up at the API, releases the one whose
    batch completed, keeps the live one, and is admitted. A second refusal within the throttle
    window looks nothing up again.
    """
    from openai_batch.budget import RECONCILE_SECONDS, Ledger, read_ledger
    from openai_batch.operators import OpenAIBatchSubmitOperator

    emulator = pipeline["emulator"]
    leaked, live = _leaked_and_live(emulator)
    src = write_input(pipeline["inbox"] / "two.jsonl", _lines("t", 8))
    plan = prepare(src, pipeline["results"] / "_sizing", max_requests_per_batch=4, inbox=pipeline["inbox"])
    first, second = plan["shards"]
    size = max(_emulator_tokens(_shard_file(s)) for s in plan["shards"])
    limit = 2 * size + size // 2  # the live batch and one shard fit; not with the leaked one too
    ledger_dir = tmp_path / "ledger"
    old = time.time() - RECONCILE_SECONDS - 60  # old enough to be looked up
    with Ledger(ledger_dir).locked() as data:
        for key, batch_id in (("leaked-r0a0", leaked), ("live-r0a0", live)):
            data["inflight"][key] = {
                "model": MODEL,
                "tokens": size,
                "since": old,
                "batch_id": batch_id,
                "label": key,
            }
    limits = json.dumps({MODEL: limit})
    ctx: Any = {"run_id": "manual__reconcile"}

    def submit(shard: dict[str, Any]) -> dict[str, Any]:
        op = OpenAIBatchSubmitOperator(
            task_id="submit", shard=shard, ledger_dir=str(ledger_dir), token_limits=limits, capacity_poll=1
        )
        result: dict[str, Any] = op.execute(ctx)
        return result

    capfd.readouterr()
    gets = _gets(emulator)
    admitted = submit(first)
    text = "".join(capfd.readouterr())
    assert admitted["batch_id"], "the shard was refused although the leaked batch had completed"
    assert f"released capacity of batch {leaked}: it is completed" in text, text[-3000:]
    assert _gets(emulator) - gets == 2  # the leaked and the live entry, once each
    inflight = read_ledger(ledger_dir)["inflight"]
    assert "leaked-r0a0" not in inflight
    assert inflight["live-r0a0"]["batch_id"] == live  # still live at the API: kept
    assert inflight["live-r0a0"]["checked"] >= old
    assert {e["batch_id"] for e in inflight.values()} == {live, admitted["batch_id"]}

    # The live batch and the first shard fill the room: the second shard is refused, and
    # nothing is looked up again (the live entry was checked just now, the new one is young).
    gets = _gets(emulator)
    refused = submit(second)
    text = "".join(capfd.readouterr())
    assert refused["batch_id"] is None
    assert "the shard waits for capacity in wait_for_batch" in text, text[-3000:]
    assert _gets(emulator) == gets
    assert set(read_ledger(ledger_dir)["inflight"]) == {"live-r0a0", *set(inflight) - {"live-r0a0"}}
