"""Unit tests of the cost and capacity ledger and estimates."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from typing import TYPE_CHECKING

import pytest

from openai_batch import budget
from openai_batch.budget import (
    DEFAULT_OUTPUT_TOKENS,
    BudgetError,
    Ledger,
    NoCapacityError,
    check_run_budget,
    ledger_for,
    limit_for,
    parse_limits,
    plan_cost,
    read_ledger,
    round_enqueued_tokens,
    shard_estimates,
)
from openai_batch.capacity import capacity_summary, waiting_stale_after

if TYPE_CHECKING:
    from pathlib import Path


def _line(i: int, body_extra: dict[str, object]) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f'say "max_tokens": 99 {i}'}]}
    return json.dumps(
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**body, **body_extra},
        }
    )


def test_output_tokens_from_max_tokens_keys_else_the_default(tmp_path: Path) -> None:
    path = tmp_path / "shard.jsonl"
    lines = [
        _line(0, {"max_tokens": 10}),
        _line(1, {"max_completion_tokens": 20}),
        _line(2, {"max_output_tokens": 30}),
        _line(3, {}),  # the text mentions "max_tokens": 99 inside a string: not a key
    ]
    path.write_text("\n".join(lines) + "\n")
    enqueued, output = shard_estimates(path, "/v1/chat/completions")
    assert output == 10 + 20 + 30 + DEFAULT_OUTPUT_TOKENS
    assert enqueued == sum((len(x) + 1 + 3) // 4 for x in lines)
    assert shard_estimates(path, "/v1/embeddings")[1] == 0


def _estimates_line_by_line(data: bytes, endpoint: str) -> tuple[int, int]:
    """The estimate's rule applied to one line at a time: the reference the block reader must match."""
    key = re.compile(rb'"max_(?:completion_|output_)?tokens"\s*:\s*(\d+)')
    enqueued = output = 0
    for line in _split_at_newlines(data):
        if line.strip():
            enqueued += max(1, (len(line) + 3) // 4)
            if endpoint == "/v1/chat/completions":
                found = key.search(line)
                output += int(found.group(1)) if found else DEFAULT_OUTPUT_TOKENS
    return enqueued, output


def _split_at_newlines(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


@pytest.mark.parametrize("block", [1, 2, 5, 16, 4096])
def test_estimates_read_in_blocks_match_the_rule_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Lines cut across blocks, blank lines anywhere, a last line without a break, odd keys."""
    monkeypatch.setattr(budget, "ESTIMATE_BLOCK", block)
    pieces = [
        b'{"a":1}',
        b'"max_tokens": 12',
        b'"max_tokens":\n5',  # the value on the next line: not this line's, not that one's
        b'"max_output_tokens" :\t7',
        b'"max_completion_tokens":3, "max_tokens": 9',  # the first key of a line counts
        b"  ",
        b"\r",
        b"\t\x0b",
        b"",
        b"x" * 50,
        b'"max_tokens": 1\r',
        b'"max_tokensx": 4',
        b"\xff\xfe",
    ]
    rng = random.Random(block)
    path = tmp_path / "requests.jsonl"
    for _ in range(300):
        data = b"".join(
            rng.choice(pieces) + (b"\n" if rng.random() < 0.5 else b"") for _ in range(rng.randint(0, 20))
        )
        path.write_bytes(data)
        for endpoint in ("/v1/chat/completions", "/v1/embeddings"):
            assert shard_estimates(path, endpoint) == _estimates_line_by_line(data, endpoint), data


def test_a_rounds_enqueued_tokens_come_from_the_plan_for_the_shards_own_file_only(tmp_path: Path) -> None:
    chat = "/v1/chat/completions"
    shard = {"file": "shard-00000.jsonl", "enqueued_tokens": 1234}
    # The shard's own file is not read (it does not even exist here): prepare estimated it.
    assert round_enqueued_tokens(shard, tmp_path / "shard-00000.jsonl", chat) == 1234
    # A retry round's file holds other lines: it is estimated from them.
    retry = tmp_path / "shard-00000.round1.jsonl"
    retry.write_text(_line(0, {}) + "\n")
    assert round_enqueued_tokens(shard, retry, chat) == shard_estimates(retry, chat)[0] != 1234
    # A plan without the figure: the file is read.
    (tmp_path / "shard-00000.jsonl").write_text(_line(1, {}) + "\n")
    expected = shard_estimates(tmp_path / "shard-00000.jsonl", chat)[0]
    assert (
        round_enqueued_tokens({"file": "shard-00000.jsonl"}, tmp_path / "shard-00000.jsonl", chat) == expected
    )


def test_plan_cost_counts_output_tokens_and_unknown_models() -> None:
    shard = {"endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "estimated_input_tokens": 1_000_000}
    assert plan_cost({"shards": [{**shard, "estimated_output_tokens": 0}]}) == pytest.approx(0.075)
    assert plan_cost({"shards": [{**shard, "estimated_output_tokens": 1_000_000}]}) == pytest.approx(0.375)
    assert plan_cost({"shards": [{**shard, "model": "no-such-model", "estimated_output_tokens": 1}]}) is None


def test_limits_per_model_with_a_default() -> None:
    limits = parse_limits('{"gpt-4o": 90000, "*": 2000000}')
    assert limit_for(limits, "gpt-4o") == 90_000
    assert limit_for(limits, "gpt-4o-mini") == 2_000_000
    assert limit_for(parse_limits(""), "gpt-4o") is None
    with pytest.raises(ValueError, match="JSON object"):
        parse_limits("[1, 2]")


def test_admission_waits_then_goes_when_capacity_frees(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("a", "m", 40, 100)
    ledger.admit("b", "m", 40, 100)
    ledger.admit("x", "other", 90, 100)  # another model has its own limit
    with pytest.raises(
        NoCapacityError, match=r"m has 80 of 100 enqueued tokens in use by 2 batch\(es\)"
    ) as info:
        ledger.admit("c", "m", 40, 100)
    assert info.value.ever_fits
    assert ledger.in_use()["m"] == {"tokens": 80, "batches": 2, "waiting": 1}
    ledger.admit("a", "m", 40, 100)  # admitted already: idempotent, nothing added
    assert ledger.in_use()["m"]["tokens"] == 80
    ledger.release("a")
    ledger.admit("c", "m", 40, 100)
    assert ledger.in_use()["m"] == {"tokens": 80, "batches": 2, "waiting": 0}
    with pytest.raises(NoCapacityError) as never:
        ledger.admit("huge", "m", 101, 100)
    assert not never.value.ever_fits


def test_admission_is_atomic_across_threads(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    admitted: list[str] = []

    def take(key: str) -> None:
        try:
            ledger.admit(key, "m", 30, 100)
            admitted.append(key)
        except NoCapacityError:
            pass

    threads = [threading.Thread(target=take, args=(f"k{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3
    assert ledger.in_use()["m"]["tokens"] == 90


def test_stale_entries_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("created", "m", 60, 100)
    ledger.attach("created", "batch_1")
    ledger.admit("never-created", "m", 40, 100)
    later = time.time() + 2 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    assert ledger.in_use()["m"] == {"tokens": 60, "batches": 1, "waiting": 0}
    monkeypatch.setattr(time, "time", lambda: later + 27 * 3600)
    assert "m" not in ledger.in_use()


def test_daily_budget_counts_actual_spending_of_earlier_runs(tmp_path: Path) -> None:
    ledger_dir = str(tmp_path / "ledger")
    plan = {
        "key": "a.jsonl",
        "shards": [
            {
                "endpoint": "/v1/chat/completions",
                "model": "gpt-4o-mini",
                "estimated_input_tokens": 0,
                "estimated_output_tokens": 1_000_000,
            }
        ],
    }  # $0.30
    check_run_budget([plan], run_id="r1", daily_budget_usd="1", ledger_dir=ledger_dir, day="2026-01-01")
    Ledger(tmp_path / "ledger").record_actual(run_id="r1", name="a.jsonl", actual_usd=0.5, estimated_usd=0.3)
    assert Ledger(tmp_path / "ledger").spent("2026-01-01") == 0.5
    with pytest.raises(BudgetError, match=r"\$0.60 plus \$0.50 spent by earlier runs on 2026-01-01"):
        check_run_budget(
            [plan, {**plan, "key": "b.jsonl"}],
            run_id="r2",
            daily_budget_usd=1,
            ledger_dir=ledger_dir,
            day="2026-01-01",
        )
    check_run_budget(
        [plan], run_id="r3", daily_budget_usd=1, ledger_dir=ledger_dir, day="2026-01-02"
    )  # a new day
    with pytest.raises(BudgetError, match=r"estimated cost \$0.30 exceeds max_cost_usd \$0.10"):
        check_run_budget([plan], run_id="r4", max_cost_usd=0.1, ledger_dir=None)
    unpriced = {**plan, "shards": [{**plan["shards"][0], "model": "nope"}], "unpriced_models": ["nope"]}
    with pytest.raises(BudgetError, match="no price is known for model"):
        check_run_budget([unpriced], run_id="r5", max_cost_usd=1, ledger_dir=None)


def test_ledger_needs_a_local_folder(tmp_path: Path) -> None:
    assert ledger_for(f"file://{tmp_path}") == Ledger(tmp_path)
    assert ledger_for("s3://bucket/results/_ledger") is None
    assert ledger_for("") is None
    with pytest.raises(BudgetError, match="no ledger folder"):
        check_run_budget([], run_id="r", daily_budget_usd=5, ledger_dir="s3://bucket/_ledger")


def test_waiting_shards_are_listed_until_they_go_or_stop_checking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("a", "m", 60, 100)
    with pytest.raises(
        NoCapacityError, match=r"c \(50 tokens\) waits: m has 60 of 100 .* 1 shard\(s\) waiting"
    ):
        ledger.admit("c", "m", 50, 100, label="c", poll=10)
    first = read_ledger(tmp_path / "ledger")["waiting"]["c"]
    assert (first["model"], first["tokens"], first["label"], first["poll"]) == ("m", 50, "c", 10)
    with pytest.raises(NoCapacityError, match="2 shard"):
        ledger.admit("d", "m", 45, 100, label="d", poll=10)
    # Checked again later: it keeps its place (since) and is seen again.
    now = time.time() + 50
    monkeypatch.setattr(time, "time", lambda: now)
    with pytest.raises(NoCapacityError):
        ledger.admit("c", "m", 50, 100, label="c", poll=10)
    summary = capacity_summary(read_ledger(tmp_path / "ledger"), now)
    assert [w["key"] for w in summary["waiting"]] == ["c", "d"]
    assert summary["waiting"][0]["since"] == first["since"]
    assert summary["models"]["m"] == {"tokens": 60, "batches": 1, "waiting": 2}
    # d stopped checking (its task failed or was cleared): dropped after 3 polls and a minute.
    now += waiting_stale_after(10) - 49
    assert [w["key"] for w in capacity_summary(read_ledger(tmp_path / "ledger"), now)["waiting"]] == ["c"]
    assert ledger.in_use()["m"]["waiting"] == 1
    # c goes once a holds no more: no longer waiting.
    assert (
        ledger.release("a") == "m: 60 enqueued tokens given back; 0 in use by 0 batch(es); 1 shard(s) waiting"
    )
    assert "50 of 100" in ledger.admit("c", "m", 50, 100, label="c", poll=10)
    assert ledger.in_use()["m"] == {"tokens": 50, "batches": 1, "waiting": 0}
    assert ledger.release("never-admitted") is None


def test_a_shard_that_can_never_fit_is_not_listed_as_waiting(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    with pytest.raises(NoCapacityError) as info:
        ledger.admit("huge", "m", 101, 100)
    assert not info.value.ever_fits
    assert read_ledger(tmp_path / "ledger")["waiting"] == {}


def test_reconcile_looks_up_old_entries_once_per_window_and_releases_only_ended_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.budget import RECONCILE_SECONDS, reconcile
    from openai_batch.provider import NOT_FOUND

    ledger = Ledger(tmp_path / "ledger")
    for key in ("done", "gone", "live", "unknown", "young", "no-batch"):
        ledger.admit(key, "m", 10, 100)
    ledger.admit("other", "n", 10, 100)
    for key in ("done", "gone", "live", "unknown", "young", "other"):
        ledger.attach(key, f"batch_{key}")
    statuses = {"batch_done": "completed", "batch_gone": NOT_FOUND, "batch_live": "in_progress"}
    asked: list[str] = []

    def status_of(batch_id: str) -> str | None:
        asked.append(batch_id)
        return statuses.get(batch_id)  # None: the lookup failed

    start = time.time()
    assert reconcile(ledger, "m", status_of) == []  # every entry is younger than the window
    assert asked == []
    later = start + RECONCILE_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with ledger.locked() as data:  # taken just before the window ends: not looked up yet
        data["inflight"]["young"]["since"] = later - 10
    lines = reconcile(ledger, "m", status_of)
    assert sorted(asked) == ["batch_done", "batch_gone", "batch_live", "batch_unknown"]
    assert lines == [
        "released capacity of batch batch_done: it is completed",
    ]
    # A 404 keeps the room: another organisation's live batch sharing the ledger answers 404 too.
    assert set(read_ledger(ledger.folder)["inflight"]) == {
        "gone",
        "live",
        "unknown",
        "young",
        "no-batch",
        "other",
    }
    asked.clear()
    assert reconcile(ledger, "m", status_of) == []  # within the window: nothing looked up again
    assert asked == []
    monkeypatch.setattr(time, "time", lambda: later + RECONCILE_SECONDS + 1)
    statuses["batch_unknown"] = "expired"
    assert reconcile(ledger, "m", status_of) == ["released capacity of batch batch_unknown: it is expired"]
    assert sorted(asked) == ["batch_gone", "batch_live", "batch_unknown", "batch_young"]


def test_an_entry_given_another_batch_meanwhile_is_not_released(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.admit("k", "m", 10, 100)
    ledger.attach("k", "batch_new")
    assert not ledger.release_ended("k", "batch_old")
    assert ledger.in_use()["m"]["tokens"] == 10
    assert ledger.release_ended("k", "batch_new")
    assert "m" not in ledger.in_use()
