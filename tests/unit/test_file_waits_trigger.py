"""The write's trigger: it reads the run's task states (one reading for every file) until its verdict."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openai_batch import triggers
from openai_batch.triggers import FileWaitsTrigger

W = "wait_for_batch"


@pytest.fixture
def states(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The run's task states as the task SDK would answer, and how often they were read."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    seen: dict[str, Any] = {"now": {f"{W}_0": "deferred", f"{W}_1": "deferred"}, "reads": 0}

    def get_task_states(**kwargs: Any) -> dict[str, Any]:
        assert kwargs["task_ids"] == [W]
        seen["reads"] += 1
        return {kwargs["run_ids"][0]: dict(seen["now"])}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    monkeypatch.setattr(triggers, "MIN_FIRE_AFTER_DEFERRAL", 0.0)
    triggers._STATE_READS.clear()
    return seen


async def _first_event(trigger: FileWaitsTrigger) -> dict[str, Any]:
    event = await anext(trigger.run())
    return dict(event.payload)


async def test_it_fires_once_the_files_own_shards_have_ended(states: dict[str, Any]) -> None:
    trigger = FileWaitsTrigger("openai_batch", "r1", W, start=1, count=1, poll_interval=0.05)
    task = asyncio.ensure_future(_first_event(trigger))
    await asyncio.sleep(0.2)
    assert not task.done()  # its shard (map index 1) still waits
    states["now"] = {f"{W}_0": "deferred", f"{W}_1": "success"}  # another file's shard still waits
    event = await asyncio.wait_for(task, 5)
    assert event["verdict"] == "write"


async def test_a_failed_wait_of_the_file_ends_it_with_the_reason(states: dict[str, Any]) -> None:
    states["now"] = {f"{W}_0": "failed", f"{W}_1": "deferred"}
    event = await _first_event(
        FileWaitsTrigger("openai_batch", "r1", W, start=0, count=1, poll_interval=0.05)
    )
    assert event == {"verdict": "fail", "reason": f"{W} of shard #1/1 (map index 0) ended failed"}


async def test_the_files_of_one_run_share_one_reading_per_interval(states: dict[str, Any]) -> None:
    waits = [FileWaitsTrigger("openai_batch", "r1", W, start=i, count=1, poll_interval=1.0) for i in (0, 1)]
    tasks = [asyncio.ensure_future(_first_event(t)) for t in waits * 5]  # ten triggers, two files
    await asyncio.sleep(0.3)
    assert states["reads"] == 1
    states["now"] = {f"{W}_0": "success", f"{W}_1": "success"}
    events = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {e["verdict"] for e in events} == {"write"}
    assert states["reads"] == 2  # one more reading for all ten, a poll interval later


def test_it_serializes_to_what_it_was_built_from() -> None:
    trigger = FileWaitsTrigger("d", "r", W, start=3, count=2, poll_interval=7.0)
    path, kwargs = trigger.serialize()
    assert path == "openai_batch.triggers.FileWaitsTrigger"
    assert FileWaitsTrigger(**kwargs).serialize() == (path, kwargs)


@pytest.mark.parametrize(("through_workers", "fires"), [(True, False), (False, True)])
async def test_a_wait_back_on_a_worker_keeps_the_write_deferred_with_a_triggerer(
    states: dict[str, Any], through_workers: bool, fires: bool
) -> None:
    """A wait resumed from its own deferral (queued) keeps a deployment's write waiting; dag.test's fires."""
    trigger = FileWaitsTrigger(
        "openai_batch", "r1", W, start=0, count=1, poll_interval=0.05, through_workers=through_workers
    )
    task = asyncio.ensure_future(_first_event(trigger))
    states["now"] = {f"{W}_0": "queued", f"{W}_1": "deferred"}
    await asyncio.sleep(0.3)
    assert task.done() is fires
    if fires:
        assert task.result()["verdict"] == "recheck"
        return
    states["now"] = {f"{W}_0": "success", f"{W}_1": "deferred"}
    assert (await asyncio.wait_for(task, 5))["verdict"] == "write"
