"""State files a later run trusts: synced when written, recovered when a torn write left them unparsable."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk import ObjectStoragePath

from openai_batch.budget import BudgetError, Ledger, check_run_budget, parse_usd
from openai_batch.operators import load_state, save_state
from openai_batch.storage import open_atomic, write_json

if TYPE_CHECKING:
    from pathlib import Path

TRUNCATED = '{"inflight": {"abc-r0a0": {"model": "gpt-4o-mini", "tok'


def _plan(cost_tokens: int = 1_000_000) -> dict[str, Any]:
    shard = {
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "estimated_input_tokens": cost_tokens,
        "estimated_output_tokens": 0,
    }
    return {"key": "in.jsonl", "shards": [shard]}


def _torn_ledger(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ledger.json").write_text(TRUNCATED)


def _kept(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.corrupt-*"))


def test_a_truncated_ledger_does_not_stop_a_run_without_a_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "_ledger"
    _torn_ledger(folder)
    with caplog.at_level(logging.WARNING):
        line = check_run_budget([_plan()], run_id="r1", ledger_dir=str(folder))
    assert "estimated cost" in line
    kept = _kept(folder, "ledger.json")
    assert len(kept) == 1
    assert kept[0].read_text() == TRUNCATED  # kept as it was, for inspection
    assert kept[0].name in caplog.text
    assert "cannot be parsed" in caplog.text
    data = json.loads((folder / "ledger.json").read_text())  # rebuilt, whole again
    assert data["inflight"] == {}
    assert data["spend"][time.strftime("%Y-%m-%d", time.gmtime())]["r1|in.jsonl"]["estimated_usd"] > 0


def test_a_truncated_ledger_admits_under_a_token_limit(tmp_path: Path) -> None:
    folder = tmp_path / "_ledger"
    _torn_ledger(folder)
    line = Ledger(folder).admit("k-r0a0", "gpt-4o-mini", 100, 1000, "shard 1")
    assert "100 of 1,000" in line
    assert len(_kept(folder, "ledger.json")) == 1


def test_a_truncated_ledger_refuses_a_daily_budget_for_the_rest_of_the_day(tmp_path: Path) -> None:
    """The day's recorded spend is lost with the file: a daily budget errs on the safe side."""
    folder = tmp_path / "_ledger"
    _torn_ledger(folder)
    with pytest.raises(BudgetError, match=r"ledger\.json\.corrupt-.*openai_batch_daily_budget_usd") as err:
        check_run_budget([_plan()], run_id="r1", daily_budget_usd="100", ledger_dir=str(folder))
    assert _kept(folder, "ledger.json")[0].name in str(err.value)
    # Still so for a later run of the same day, once the ledger is whole again ...
    with pytest.raises(BudgetError, match="refused until the day ends"):
        check_run_budget([_plan()], run_id="r2", daily_budget_usd="100", ledger_dir=str(folder))
    # ... but not for another day, and never for a run without a daily budget (a cap alone is fine).
    check_run_budget([_plan()], run_id="r3", daily_budget_usd="100", ledger_dir=str(folder), day="2099-01-01")
    check_run_budget([_plan()], run_id="r4", max_cost_usd="100", ledger_dir=str(folder))


def test_a_ledger_of_another_json_type_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "_ledger"
    folder.mkdir()
    (folder / "ledger.json").write_text("[]")
    assert Ledger(folder).spent("2026-01-01") == 0.0
    assert len(_kept(folder, "ledger.json")) == 1


def _synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each ``os.fsync`` syncs: ``dir`` or ``file``."""
    seen: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_the_ledger_is_synced_with_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _synced(monkeypatch)
    Ledger(tmp_path).admit("k", "gpt-4o-mini", 1, None)
    assert seen == ["file", "dir"]


def test_state_files_are_synced_with_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _synced(monkeypatch)
    write_json(ObjectStoragePath(str(tmp_path / "plan.json")), {"a": 1})
    assert seen == ["file", "dir"]
    seen.clear()
    with open_atomic(ObjectStoragePath(str(tmp_path / "results.jsonl"))) as out:
        out.write(b"x\n")
    assert seen == ["file", "dir"]


def _shard_ref() -> dict[str, Any]:
    return {
        "index": 3,
        "identity": "id-3",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "file": "shard-00003.jsonl",
        "requests": 7,
    }


def test_a_torn_shard_state_record_is_set_aside_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = ObjectStoragePath(str(tmp_path))
    record = tmp_path / "shard-00003.state.json"
    record.write_text('{"identity": "id-3", "rou')
    with caplog.at_level(logging.WARNING):
        state = load_state(state_dir, _shard_ref())
    assert (state.identity, state.index, state.current.batch_id) == ("id-3", 3, None)
    kept = _kept(tmp_path, "shard-00003.state.json")
    assert len(kept) == 1
    assert kept[0].name in caplog.text
    assert "batch metadata lookup" in caplog.text
    save_state(state_dir, state)  # a whole record again in its place
    assert json.loads(record.read_text())["identity"] == "id-3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("None", None),
        ("  ", None),
        ("0", 0.0),
        (0, 0.0),
        ("12.5", 12.5),
        (3, 3.0),
        ("nan", "finite"),
        ("NaN", "finite"),
        (float("nan"), "finite"),
        ("inf", "finite"),
        ("-inf", "finite"),
        ("Infinity", "finite"),
        (float("inf"), "finite"),
        ("1e999", "finite"),
        ("-1", "finite"),
        (-0.01, "finite"),
        ("ten", "number"),
        (True, "number"),
        ([1], "number"),
    ],
)
def test_money_settings_are_finite_and_not_negative(value: object, expected: float | str | None) -> None:
    if expected is None or isinstance(expected, float):
        assert parse_usd(value, "the setting X") == expected
        return
    with pytest.raises(BudgetError, match=f"the setting X must be a {expected}"):
        parse_usd(value, "the setting X")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_cost_usd": "nan"}, "the max_cost_usd param"),
        ({"max_cost_usd": "inf"}, "the max_cost_usd param"),
        ({"daily_budget_usd": "nan"}, "the Airflow Variable openai_batch_daily_budget_usd"),
        ({"daily_budget_usd": "inf"}, "the Airflow Variable openai_batch_daily_budget_usd"),
        ({"daily_budget_usd": "-5"}, "the Airflow Variable openai_batch_daily_budget_usd"),
    ],
)
def test_the_budget_check_names_the_bad_money_setting(
    tmp_path: Path, kwargs: dict[str, str], named: str
) -> None:
    with pytest.raises(BudgetError, match=named):
        check_run_budget([_plan()], run_id="r1", ledger_dir=str(tmp_path), **kwargs)  # type: ignore[arg-type]


def _reserve(ledger: Ledger, run_id: str, state_dir: Path, cost: float = 1.0) -> None:
    ledger.check_budget(
        day="2026-01-01",
        run_id=run_id,
        estimates={"in.jsonl": 2 * cost},
        max_cost_usd=None,
        daily_budget_usd=None,
        shards={"in.jsonl": {"state_dir": str(state_dir), "shards": [[0, "id-0", cost], [1, "id-1", cost]]}},
        dag_id="openai_batch",
    )


def test_an_ended_run_counts_only_the_shards_it_sent(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "_ledger")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    _reserve(ledger, "failed-run", state_dir)
    _reserve(ledger, "running-run", tmp_path / "other")
    _reserve(ledger, "unknown-run", tmp_path / "other")
    # Shard 0 of the failed run was uploaded, shard 1 never.
    (state_dir / "shard-00000.state.json").write_text(
        json.dumps(
            {"identity": "id-0", "rounds": [{"round": 0, "input_file_id": "file-1", "batch_id": None}]}
        )
    )
    states = {"failed-run": "failed", "running-run": "running"}

    def run_state(dag_id: str, run_id: str) -> str | None:
        assert dag_id == "openai_batch"
        if run_id not in states:
            raise RuntimeError("the API cannot be reached")
        return states[run_id]

    _, spent = ledger.check_budget(
        day="2026-01-01",
        run_id="new-run",
        estimates={"x.jsonl": 0.5},
        max_cost_usd=None,
        daily_budget_usd=None,
        run_state=run_state,
    )
    assert spent == pytest.approx(1.0 + 2.0 + 2.0)  # sent by the failed run; the others whole
