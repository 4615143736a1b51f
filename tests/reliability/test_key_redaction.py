"""
A canary API key never reaches a log line, an error text or a file, however a ``dag.test()`` run ends.

The connection's password is the canary as a copy-paste or a mounted secret leaves it (with a
trailing newline). Each case ends the run differently: success (the key is stripped and sent), a key
with a tab inside (refused before any call), a 401, a closed port, a status poll answered 401 by the
trigger's poller, and a refused upload. Every output the run leaves is read: the captured stdout and
stderr (where ``dag.test()`` writes the task and trigger logs), the log records, every file under the
Airflow home's log folder, the results and state folders, and the metadata db.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.conftest import get_dag
from tests.reliability.support import chat_line, metadata_db_bytes, task_states, write_input

if TYPE_CHECKING:
    from collections.abc import Callable

CANARY = "sk-canary-Q7ZfW3kd-middle-9Xb2-tail"
MIDDLE = "Q7ZfW3kd-middle-9Xb2"
CONN_ID = "openai_default"


def _connection(monkeypatch: pytest.MonkeyPatch, base_url: str, password: str) -> None:
    # No SDK retries: a closed port would otherwise take six backed-off attempts per try.
    extra = {"openai_client_kwargs": {"max_retries": 0}}
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENAI_DEFAULT",
        json.dumps({"conn_type": "openai", "password": password, "host": base_url, "extra": extra}),
    )


def _run_without_task_retries() -> Any:
    dag = get_dag()
    for task in dag.tasks:  # each failure is final: one try per task keeps the run short
        if hasattr(task, "partial_kwargs"):
            task.partial_kwargs["retries"] = 0
        else:
            task.retries = 0
    return dag.test(run_conf={"input": "*.jsonl", "poll_interval": 1, "settle_seconds": 0})


def _read_everything(
    paths: dict[str, Any], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> dict[str, str]:
    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "log records": caplog.text}
    home = Path(os.environ["AIRFLOW_HOME"])
    roots = [home / "logs", paths["results"], paths["inbox"]]
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for name, data in metadata_db_bytes(home).items():
        texts[name] = data.decode("latin-1")
    with capfd.disabled():
        print(f"\nread {len(texts)} outputs:", *texts, sep="\n  ")
    return texts


def _leaks(texts: dict[str, str], *secrets: str) -> list[str]:
    return [where for where, text in texts.items() if any(s in text for s in secrets)]


def _task_log(texts: dict[str, str], task_id: str) -> str:
    """Return the run's output (task and trigger logs), checking that it holds the task's failure."""
    out = texts["stdout"] + texts["stderr"]
    # ``dag.test()`` sends its own lines to stdout or to the log records, depending on set-up order.
    assert f"starting task_id={task_id} " in out + texts["log records"], f"no log of task {task_id} was read"
    assert "Task failed with exception" in out, "no task failure was read"
    return out


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: None) -> dict[str, Any]:
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    write_input(inbox / "canary.jsonl", [chat_line(f"c-{i}", f"hello {i}") for i in range(3)])
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_INBOX", str(inbox))
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_RESULTS", str(results))
    return {"inbox": inbox, "results": results}


def test_a_key_stored_with_a_trailing_newline_is_stripped_and_never_logged(
    inputs: dict[str, Any],
    emulator_with: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = emulator_with(api_key=CANARY)  # only the stripped canary is accepted
    _connection(monkeypatch, server.base_url, CANARY + "\n")

    dag_run = _run_without_task_retries()

    texts = _read_everything(inputs, capfd, caplog)
    assert _leaks(texts, CANARY, MIDDLE) == []
    assert dag_run.state == "success", task_states(dag_run)
    assert "unauthorized" not in server.stats()
    assert any(p.endswith("results.jsonl") for p in texts)


def test_a_key_with_a_tab_inside_fails_naming_the_connection(
    inputs: dict[str, Any],
    emulator_with: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = emulator_with()
    _connection(monkeypatch, server.base_url, CANARY + "\tsk-second-paste-4242\n")

    dag_run = _run_without_task_retries()

    texts = _read_everything(inputs, capfd, caplog)
    assert dag_run.state == "failed"
    assert task_states(dag_run)["submit[0]"] == "failed"
    submit_log = _task_log(texts, "submit")
    assert f"The API key of connection '{CONN_ID}' contains a tab inside it" in submit_log
    assert server.stats().get("requests_total", 0) == 0  # refused before any call
    assert _leaks(texts, CANARY, MIDDLE, "sk-second-paste-4242") == []


@pytest.mark.parametrize("case", ["unauthorized", "connection_refused", "upload_fails"])
def test_failed_submits_report_the_status_and_connection_without_the_key(
    case: str,
    inputs: dict[str, Any],
    emulator_with: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from openai_emulator.testing import free_port

    if case == "unauthorized":
        server = emulator_with(api_key="sk-the-only-accepted-key")
        base_url, expected = server.base_url, "answered HTTP 401, code invalid_api_key"
    elif case == "connection_refused":
        base_url, expected = f"http://127.0.0.1:{free_port()}/v1", "Could not reach the API"
    else:
        server = emulator_with(api_key=CANARY)
        server.set_faults(error_rate=1.0, error_codes=[400], error_routes=["POST /v1/files"])
        base_url, expected = server.base_url, "answered HTTP 400"
    _connection(monkeypatch, base_url, CANARY + "\n")

    dag_run = _run_without_task_retries()

    texts = _read_everything(inputs, capfd, caplog)
    assert dag_run.state == "failed"
    assert task_states(dag_run)["submit[0]"] == "failed"
    submit_log = _task_log(texts, "submit")
    assert f"OpenAIBatch{'Auth' if case == 'unauthorized' else 'API'}Error" in submit_log
    assert f"{expected}" in submit_log
    assert f"connection '{CONN_ID}'" in submit_log
    assert "The above exception was the direct cause" not in submit_log  # no SDK or httpx chain
    assert _leaks(texts, CANARY, MIDDLE) == []


def test_a_poll_refused_by_the_api_ends_the_wait_without_the_key(
    inputs: dict[str, Any],
    emulator_with: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from openai_batch.triggers import OpenAIBatchTrigger

    server = emulator_with(api_key=CANARY, requests_per_second=1)  # slow: the batch outlives the polls
    _connection(monkeypatch, server.base_url, CANARY + "\n")
    poll = OpenAIBatchTrigger._poll

    def refused_from_now_on(self: Any, fetch: Any) -> Any:
        # Between the submit and the first poll: every status poll is answered 401 from here on.
        server.set_faults(error_rate=1.0, error_codes=[401], error_routes=["GET /v1/batches/*"])
        return poll(self, fetch)

    monkeypatch.setattr(OpenAIBatchTrigger, "_poll", refused_from_now_on)

    dag_run = _run_without_task_retries()

    texts = _read_everything(inputs, capfd, caplog)
    assert dag_run.state == "failed"
    assert task_states(dag_run)["submit[0]"] == "success"
    assert task_states(dag_run)["wait_for_batch[0]"] == "failed"
    wait_log = _task_log(texts, "wait_for_batch")
    assert "HTTP 401 (code" in wait_log
    assert "polling failed" in wait_log
    assert server.stats()["injected_errors"] >= 2
    assert _leaks(texts, CANARY, MIDDLE) == []
