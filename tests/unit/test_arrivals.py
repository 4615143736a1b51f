"""The inbox watcher and the arrival record: what is announced, taken and done, and when again."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from openai_batch.arrivals import REANNOUNCE_AFTER, TAKEN_LEASE, ArrivalRecord, FileStat, Row, is_due
from openai_batch.assets import INBOX_ASSET_NAME
from openai_batch.sensors import OpenAIBatchInputSensor
from openai_batch.watcher import InboxArrivalTrigger

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_800_000_000.0
STAT = FileStat("/in/a.jsonl", 10, 1_000, 7)


@pytest.mark.parametrize(
    ("row", "now", "due"),
    [
        (None, NOW, True),  # never seen
        (Row(10, 1_000, 7, "done", NOW - 10, "r"), NOW, False),
        (Row(10, 1_000, 7, "done", NOW - 10**7, "r"), NOW, False),  # done stays done
        (Row(11, 1_000, 7, "done", NOW - 10, "r"), NOW, True),  # grew
        (Row(10, 2_000, 7, "done", NOW - 10, "r"), NOW, True),  # rewritten in place
        (Row(10, 1_000, 8, "done", NOW - 10, "r"), NOW, True),  # replaced by another file
        (Row(10, 1_000, 7, "announced", NOW - 10, None), NOW, False),
        (Row(10, 1_000, 7, "announced", NOW - REANNOUNCE_AFTER, None), NOW, True),  # never taken
        (Row(10, 1_000, 7, "taken", NOW - REANNOUNCE_AFTER * 2, "r"), NOW, False),  # its run is on it
        (Row(10, 1_000, 7, "taken", NOW - TAKEN_LEASE, "r"), NOW, True),  # its run never finished
    ],
)
def test_is_due(row: Row | None, now: float, due: bool) -> None:
    assert is_due(STAT, row, now) is due


def _write(path: Path, text: str = '{"model": "m", "messages": []}\n', age: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    inbox, ledger, outside = tmp_path / "inbox", tmp_path / "ledger", tmp_path / "outside"
    for folder in (inbox, ledger, outside):
        folder.mkdir()
    return {"inbox": inbox, "ledger": ledger, "outside": outside}


def _watcher(dirs: dict[str, Path], settle: float = 30.0) -> InboxArrivalTrigger:
    return InboxArrivalTrigger(
        settle_seconds=settle, inbox=str(dirs["inbox"]), ledger_dir=str(dirs["ledger"])
    )


def test_the_watcher_announces_each_settled_file_once_and_again_when_it_changes(
    dirs: dict[str, Path],
) -> None:
    inbox = dirs["inbox"]
    _write(inbox / "root.jsonl")
    _write(inbox / "2024-01-01" / "day.jsonl.gz")
    _write(inbox / "deep" / "er" / "x.jsonl")
    _write(inbox / "fresh.jsonl", age=0)  # still being written (or just landed)
    _write(inbox / "notes.txt")
    _write(inbox / "part.jsonl.part")
    _write(inbox / ".hidden.jsonl")
    _write(inbox / "_done" / "old.jsonl")  # moved aside: not entered
    _write(inbox / ".tmp" / "t.jsonl")
    (inbox / "link.jsonl").symlink_to(_write(dirs["outside"] / "secret.jsonl"))  # points out: refused
    (inbox / "inside-link.jsonl").symlink_to(inbox / "root.jsonl")  # points in: the same file
    watcher, memory = _watcher(dirs), {}
    first = watcher.look(memory)
    assert sorted(f["key"] for f in first) == ["2024-01-01/day.jsonl.gz", "deep/er/x.jsonl", "root.jsonl"]
    assert all(f["source"].startswith(os.path.realpath(inbox)) for f in first)
    assert watcher.look({}) == []  # a new triggerer (empty memory) reads the record: nothing again
    os.utime(inbox / "fresh.jsonl", (time.time() - 60, time.time() - 60))
    assert [f["key"] for f in watcher.look(memory)] == ["fresh.jsonl"]  # settled now
    _write(inbox / "root.jsonl", text='{"model": "m", "messages": []}\n' * 2)  # changed content
    assert [f["key"] for f in watcher.look(memory)] == ["root.jsonl"]


def test_an_announcement_nobody_took_is_repeated_and_a_done_file_never(dirs: dict[str, Path]) -> None:
    path = _write(dirs["inbox"] / "a.jsonl")
    _write(dirs["inbox"] / "b.jsonl")
    watcher = _watcher(dirs)
    now = time.time()
    assert len(watcher.look({}, now)) == 2
    st = path.stat()
    ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").mark(
        [FileStat(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)], "done", now, "r1"
    )
    later = now + REANNOUNCE_AFTER + 1
    assert [f["key"] for f in watcher.look({}, later)] == ["b.jsonl"]  # b was never taken
    much_later = [f["key"] for f in watcher.look({}, later + 10**7)]
    assert much_later == ["b.jsonl"]  # b again, as long as nobody takes it; a, done, never


def test_without_a_record_the_watcher_remembers_in_memory(dirs: dict[str, Path]) -> None:
    _write(dirs["inbox"] / "a.jsonl")
    watcher = InboxArrivalTrigger(settle_seconds=0, inbox=str(dirs["inbox"]), ledger_dir="s3://bucket/ledger")
    memory: dict[str, tuple[int, int, int]] = {}
    assert len(watcher.look(memory)) == 1
    assert watcher.look(memory) == []


def test_the_watcher_serializes_and_lists_100_files_per_look(dirs: dict[str, Path]) -> None:
    path, kwargs = _watcher(dirs).serialize()
    assert path == "openai_batch.watcher.InboxArrivalTrigger"
    again = InboxArrivalTrigger(**kwargs)
    for i in range(100):
        _write(dirs["inbox"] / f"f{i:03d}.jsonl")
    assert len(again.look({})) == 100


async def test_run_yields_events_of_at_most_500_files(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = _watcher(dirs)
    files = [{"source": f"/in/{i}", "key": str(i), "root": "", "size": 1, "mtime": 0.0} for i in range(1200)]
    looks = iter([files, []])
    monkeypatch.setattr(watcher, "look", lambda memory: next(looks))
    stream = watcher.run()
    sizes = [len((await anext(stream)).payload["files"]) for _ in range(3)]
    await stream.aclose()
    assert sizes == [500, 500, 200]


def _event(files: list[dict[str, Any]], name: str = INBOX_ASSET_NAME) -> Any:
    return SimpleNamespace(
        asset=SimpleNamespace(name=name), extra={"from_trigger": True, "payload": {"files": files}}
    )


def _sensor(dirs: dict[str, Path], **kwargs: Any) -> OpenAIBatchInputSensor:
    return OpenAIBatchInputSensor(
        task_id="wait_for_input",
        inbox=str(dirs["inbox"]),
        ledger_dir=str(dirs["ledger"]),
        settle_seconds=30,
        **kwargs,
    )


def _arrival_context(events: list[Any]) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(run_type="asset_triggered", run_after=None),
        "logical_date": None,
        "run_id": "asset_run_1",
        "triggering_asset_events": {"inbox": events},
    }


def test_a_run_started_by_the_watcher_takes_exactly_the_announced_files(dirs: dict[str, Path]) -> None:
    _write(dirs["inbox"] / "a.jsonl")
    _write(dirs["inbox"] / "b.jsonl")
    _write(dirs["inbox"] / "not-announced.jsonl")
    announced = _watcher(dirs).look({})
    announced = [f for f in announced if f["key"] != "not-announced.jsonl"]
    # An event that names a path outside the inbox is not trusted either.
    forged = {"source": str(_write(dirs["outside"] / "x.jsonl")), "key": "x.jsonl"}
    taken = _sensor(dirs).execute(_arrival_context([_event(announced), _event([forged]), _event(announced)]))  # type: ignore[arg-type]
    assert [f["key"] for f in taken] == ["a.jsonl", "b.jsonl"]
    rows = ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").snapshot()
    assert {rows[f["source"]].state for f in taken} == {"taken"}
    assert {rows[f["source"]].run_id for f in taken} == {"asset_run_1"}


def test_a_run_takes_at_most_max_files_and_leaves_the_rest_announced(dirs: dict[str, Path]) -> None:
    for i in range(5):
        _write(dirs["inbox"] / f"f{i}.jsonl")
    announced = _watcher(dirs).look({})
    taken = _sensor(dirs, max_files=3).execute(_arrival_context([_event(announced)]))  # type: ignore[arg-type]
    assert [f["key"] for f in taken] == ["f0.jsonl", "f1.jsonl", "f2.jsonl"]
    rows = ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").snapshot()
    assert sorted(r.state for r in rows.values()) == ["announced", "announced", "taken", "taken", "taken"]
    # The two left are announced again at the watcher's next listing: the next run takes them.
    assert sorted(f["key"] for f in _watcher(dirs).look({})) == ["f3.jsonl", "f4.jsonl"]


def test_files_left_by_a_run_are_due_at_once_unless_another_run_took_them(dirs: dict[str, Path]) -> None:
    record = ArrivalRecord(dirs["ledger"] / "arrivals.sqlite")
    stats = []
    for i in range(4):
        st = _write(dirs["inbox"] / f"f{i}.jsonl").stat()
        stats.append(FileStat(str(dirs["inbox"] / f"f{i}.jsonl"), st.st_size, st.st_mtime_ns, st.st_ino))
    now = time.time()
    record.mark(stats[:1], "announced", now)
    record.mark(stats[1:2], "taken", now, "other_run")
    record.mark(stats[2:3], "done", now, "other_run")
    record.due_now(stats)  # f3 was never announced: it is due too
    rows = record.snapshot()
    assert [(rows[s.source].state, rows[s.source].at) for s in stats] == [
        ("announced", 0),
        ("taken", now),
        ("done", now),
        ("announced", 0),
    ]
    assert [is_due(s, rows[s.source], now) for s in stats] == [True, False, False, True]


def test_a_run_for_files_already_done_is_skipped(dirs: dict[str, Path]) -> None:
    path = _write(dirs["inbox"] / "a.jsonl")
    announced = _watcher(dirs).look({})
    st = path.stat()
    ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").mark(
        [FileStat(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)], "done", time.time(), "r0"
    )
    with pytest.raises(AirflowSkipException, match="done already"):
        _sensor(dirs).execute(_arrival_context([_event(announced)]))  # type: ignore[arg-type]


def test_events_of_other_assets_do_not_make_a_run_an_arrival_run(dirs: dict[str, Path]) -> None:
    from openai_batch.sensors import arrived_files

    assert arrived_files({"triggering_asset_events": {}}) is None  # type: ignore[arg-type]
    other = _arrival_context([_event([{"source": "/x"}], name="someone_elses_asset")])
    assert arrived_files(other) is None  # type: ignore[arg-type]


def test_the_variable_turns_the_watcher_off_and_on(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(dirs["inbox"] / "a.jsonl")
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_WATCH_INBOX", "false")
    assert _watcher(dirs).look({}) == []  # nothing announced, nothing recorded
    assert not (dirs["ledger"] / "arrivals.sqlite").exists()
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_WATCH_INBOX", "true")
    assert [f["key"] for f in _watcher(dirs).look({})] == ["a.jsonl"]


def test_a_file_a_manual_run_took_is_not_announced_again(dirs: dict[str, Path]) -> None:
    """A person's (or the schedule's) run records what it takes: the watcher starts no second run."""
    _write(dirs["inbox"] / "mine.jsonl")
    _write(dirs["inbox"] / "other.jsonl")
    sensor = _sensor(dirs)
    found = {"source": str((dirs["inbox"] / "mine.jsonl").resolve()), "key": "mine.jsonl", "root": ""}
    taken = sensor.execute_complete({"run_id": "manual_1"}, {"status": "found", "files": [found]})  # type: ignore[arg-type]
    assert [f["key"] for f in taken] == ["mine.jsonl"]
    assert [f["key"] for f in _watcher(dirs).look({})] == ["other.jsonl"]
    rows = ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").snapshot()
    assert rows[found["source"]].state == "taken"
    assert rows[found["source"]].run_id == "manual_1"


def test_one_listing_announces_at_most_max_per_look(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_batch.watcher

    monkeypatch.setattr(openai_batch.watcher, "MAX_PER_LOOK", 3)
    for i in range(7):
        _write(dirs["inbox"] / f"f{i}.jsonl")
    watcher = _watcher(dirs)
    sizes = [len(watcher.look({})) for _ in range(4)]
    assert sizes == [3, 3, 1, 0]  # every file once, over three listings


def test_a_postponed_file_is_announced_again_at_the_next_listing(dirs: dict[str, Path]) -> None:
    """A file whose shards did not all fit in its run (max_map_length) goes back to the watcher at once."""
    from openai_batch.operators import OpenAIBatchWriteResultsOperator

    path = _write(dirs["inbox"] / "big.jsonl")
    watcher = _watcher(dirs)
    now = time.time()
    (taken,) = watcher.look({}, now)
    st = path.stat()
    stat = FileStat(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    ArrivalRecord(dirs["ledger"] / "arrivals.sqlite").mark([stat], "taken", now, "r1")  # its run took it
    assert watcher.look({}, now + 1) == []
    plan = {
        "key": taken["key"],
        "source": stat.source,
        "input_stat": {"size": stat.size, "mtime_ns": stat.mtime_ns, "ino": stat.ino},
        "postponed": 3,
        "shards": [],
    }
    write = OpenAIBatchWriteResultsOperator(
        task_id="write_results", plan=plan, ledger_dir=str(dirs["ledger"])
    )
    with pytest.raises(AirflowSkipException, match="3 shard\\(s\\) did not fit in this run"):
        write.execute({"run_id": "r1"})  # type: ignore[arg-type]
    assert [f["key"] for f in watcher.look({}, now + 2)] == ["big.jsonl"]  # not 26 h later: now
