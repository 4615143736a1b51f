"""State survives kill -9: files and batches stay, and an unfinished batch resumes without double counting."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import openai
from emulator_support import chat_file, create_batch, read_lines, wait_for

from openai_emulator.testing import EmulatorProcess

if TYPE_CHECKING:
    from pathlib import Path

ARGS = ["--validating-seconds", "0.05", "--finalizing-seconds", "0.05", "--requests-per-second", "300"]


def test_kill9_mid_batch_then_restart(tmp_path: Path) -> None:
    emulator = EmulatorProcess(tmp_path / "data", extra_args=ARGS).start()
    try:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        n = 900
        finished = wait_for(client, create_batch(client, chat_file(5)).id)
        batch = create_batch(client, chat_file(n), metadata={"k": "v"})
        deadline = time.monotonic() + 15
        while (current := client.batches.retrieve(batch.id)).request_counts.completed < 150:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        emulator.kill9()
        assert current.status == "in_progress"
        before_kill = current.request_counts.completed  # type: ignore[union-attr]

        emulator.start()
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=2)
        resumed = client.batches.retrieve(batch.id)
        assert resumed.request_counts is not None
        assert resumed.request_counts.completed >= before_kill
        assert client.batches.retrieve(finished.id) == finished
        assert client.files.retrieve(finished.input_file_id).bytes == len(chat_file(5))

        done = wait_for(client, batch.id, timeout=30)
        assert done.status == "completed"
        assert done.metadata == {"k": "v"}
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            n,
            n,
            0,
        )
        lines = read_lines(client, done.output_file_id)
        assert len(lines) == n
        assert {line["custom_id"] for line in lines} == {f"req-{i}" for i in range(n)}
        assert done.usage is not None
        assert done.usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in lines)
        assert [b.id for b in client.batches.list()] == [batch.id, finished.id]
    finally:
        emulator.stop()


def test_sigterm_restart_keeps_state(tmp_path: Path) -> None:
    with EmulatorProcess(tmp_path / "data", extra_args=ARGS) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        done = wait_for(client, create_batch(client, chat_file(10)).id)
        pid = emulator.pid
        emulator.restart()
        assert emulator.pid != pid
        assert client.batches.retrieve(done.id) == done
        assert len(read_lines(client, done.output_file_id)) == 10
