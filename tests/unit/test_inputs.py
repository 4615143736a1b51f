"""Which files a run takes: run types, settling, refused and ignored files, past dates."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from openai_batch.sensors import OpenAIBatchInputSensor, input_pattern
from openai_batch.storage import scan_inputs
from openai_batch.triggers import InputFilesTrigger

if TYPE_CHECKING:
    from pathlib import Path

DAY = pendulum.datetime(2024, 3, 5, tz="UTC")


def context(run_type: str, logical_date: Any = DAY) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_type=run_type, run_after=DAY), "logical_date": logical_date}


@pytest.mark.parametrize(
    ("run_type", "logical_date", "param", "expected"),
    [
        pytest.param("scheduled", DAY, None, "/in/2024-03-05/*", id="scheduled-takes-its-date"),
        pytest.param("backfill", DAY, None, "/in/2024-03-05/*", id="backfill-takes-its-date"),
        pytest.param("manual", DAY, None, "/in/*", id="ui-form-prefilled-date-takes-the-inbox"),
        pytest.param("manual", None, None, "/in/*", id="manual-without-date"),
        pytest.param("asset_triggered", DAY, None, "/in/*", id="asset-triggered"),
        pytest.param("manual", DAY, "x/*.jsonl", "/in/x/*.jsonl", id="param-relative"),
        pytest.param("scheduled", DAY, "/abs/a.jsonl", "/abs/a.jsonl", id="param-absolute"),
    ],
)
def test_input_pattern(run_type: str, logical_date: Any, param: str | None, expected: str) -> None:
    assert input_pattern(param, "/in", context(run_type, logical_date)) == expected  # type: ignore[arg-type]


def _write(path: Path, text: str = '{"model": "m", "messages": [1]}\n', age: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_scan_sorts_files_into_taken_waiting_and_ignored(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox / "ok.jsonl")
    _write(inbox / "ok2.jsonl.gz")
    _write(inbox / "fresh.jsonl", age=0)
    _write(inbox / "requests.json")
    _write(inbox / "big.jsonl.part")
    _write(inbox / ".hidden.jsonl")
    secret = _write(tmp_path / "secret.jsonl")
    os.symlink(secret, inbox / "link-out.jsonl")
    os.symlink("/proc/self/environ", inbox / "env.jsonl")
    os.mkfifo(inbox / "pipe.jsonl")

    scan = scan_inputs(str(inbox / "*"), str(inbox), settle_seconds=30)

    assert [f["key"] for f in scan.taken] == ["ok.jsonl", "ok2.jsonl.gz"]
    assert scan.waiting == [str(inbox / "fresh.jsonl")]
    reasons = {os.path.basename(p): r for p, r in scan.ignored}
    assert reasons["requests.json"] == "not a .jsonl or .jsonl.gz file"
    assert reasons["big.jsonl.part"].startswith("still being written")
    assert reasons[".hidden.jsonl"] == "hidden file"
    assert "outside the inbox" in reasons["link-out.jsonl"]
    assert "never read" in reasons["env.jsonl"]
    assert reasons["pipe.jsonl"] == "not a regular file"
    assert not scan.ready()  # fresh.jsonl is still being written


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    scan = scan_inputs(str(tmp_path / "nope" / "*"), str(tmp_path))
    assert not scan.base_exists
    assert scan_inputs(str(tmp_path / "*"), str(tmp_path)).base_exists


def _sensor(inbox: Path, **kwargs: Any) -> OpenAIBatchInputSensor:
    return OpenAIBatchInputSensor(task_id="wait_for_input", inbox=str(inbox), poll_interval=1, **kwargs)


def test_past_date_without_input_is_skipped_at_once(tmp_path: Path) -> None:
    with pytest.raises(AirflowSkipException, match="No input for the past date 2024-03-05"):
        _sensor(tmp_path).execute(context("backfill"))  # type: ignore[arg-type]


def test_today_without_input_waits_and_says_the_folder_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = pendulum.now("UTC").start_of("day")
    with pytest.raises(TaskDeferred):
        _sensor(tmp_path).execute(context("scheduled", today))  # type: ignore[arg-type]
    assert "does not exist" in capsys.readouterr().out


def test_ignored_files_are_named_in_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "requests.json")
    _write(tmp_path / "good.jsonl")
    files = _sensor(tmp_path).execute(context("manual"))  # type: ignore[arg-type]
    assert [f["key"] for f in files] == ["good.jsonl"]
    assert "requests.json: not a .jsonl or .jsonl.gz file" in capsys.readouterr().out


@pytest.mark.parametrize("param", ["/proc/self/environ", "../outside/*.jsonl"])
def test_input_param_outside_the_roots_is_refused(tmp_path: Path, param: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _write(tmp_path / "outside" / "x.jsonl")
    with pytest.raises(AirflowFailException, match="outside the inbox|never read"):
        _sensor(inbox, input=param).execute(context("manual"))  # type: ignore[arg-type]


async def test_trigger_waits_until_a_growing_file_stops_changing(tmp_path: Path) -> None:
    path = tmp_path / "growing.jsonl"
    path.write_text("")
    stop = threading.Event()

    def append() -> None:
        for i in range(8):
            with path.open("a") as fout:
                fout.write(f'{{"n": {i}}}\n')
            time.sleep(0.25)
        stop.set()

    writer = threading.Thread(target=append)
    writer.start()
    trigger = InputFilesTrigger(
        pattern=str(tmp_path / "*"), poll_interval=0.1, inbox=str(tmp_path), settle_seconds=1.0
    )
    event = await asyncio.wait_for(anext(trigger.run()), timeout=30)
    writer.join()
    assert stop.is_set()  # it fired only after the last write
    (taken,) = event.payload["files"]
    assert taken["size"] == path.stat().st_size
    assert path.read_text().count("\n") == 8
