"""
A canary API key appears in no file the ``airflow standalone`` stack writes, however its runs end.

Five runs of ``openai_batch`` go side by side on the shared stack (scheduler, LocalExecutor workers,
triggerer, api-server), each through a connection of its own whose password is the canary as a
copy-paste or a mounted secret leaves it: with a trailing newline (stripped: the run succeeds), with
a tab inside (refused, naming the connection), refused by the API (401), aimed at a closed port,
and refused at upload (a refused status poll is covered by the ``dag.test()`` tests). Then every
file under the Airflow home's log folder, the stack's stdout/stderr logs, and the results and state
folders is read.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.deploy.processes import http_json
from tests.deploy.standalone import DAG_ID, StandaloneStack, standalone  # noqa: F401 - fixture

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

CANARY = "sk-canary-Vx81Lq5m-middle-Z3cR-tail"
MIDDLE = "Vx81Lq5m-middle-Z3cR"
SECOND = "sk-second-paste-7Hk2Wq"


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Emulators that accept only the canary (one refusing uploads) and one that refuses it."""
    from openai_emulator.testing import EmulatorServer

    fast = {"validating_seconds": 0.1, "finalizing_seconds": 0.1}
    servers = {
        "ok": EmulatorServer(tmp_path / "ok", api_key=CANARY, **fast),
        "other": EmulatorServer(tmp_path / "other", api_key="sk-the-only-accepted-key", **fast),
        "upload": EmulatorServer(tmp_path / "upload", api_key=CANARY, **fast),
    }
    for server in servers.values():
        server.start()
    servers["upload"].set_faults(error_rate=1.0, error_codes=[400], error_routes=["POST /v1/files"])
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _lines(case: str, count: int = 3) -> str:
    return "".join(
        json.dumps(
            {
                "custom_id": f"{case}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{case} {i}"}]},
            }
        )
        + "\n"
        for i in range(count)
    )


def _ti_state(stack: StandaloneStack, run_id: str, task_id: str) -> str | None:
    tis = http_json(f"{stack.api}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    states = [t["state"] for t in tis if t["task_id"] == task_id]
    return states[0] if states else None


def _read_all(roots: list[Path]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return texts


def test_the_canary_key_is_in_no_log_result_or_state_file(
    standalone: StandaloneStack,  # noqa: F811
    emulators: dict[str, Any],
) -> None:
    from openai_emulator.testing import free_port

    stack = standalone
    tag = uuid.uuid4().hex[:6]
    cases: dict[str, tuple[str, str, str]] = {  # case -> (base URL, password, expected run state)
        "newline": (emulators["ok"].base_url, CANARY + "\n", "success"),
        "tab": (emulators["ok"].base_url, f"{CANARY}\t{SECOND}\n", "failed"),
        "unauthorized": (emulators["other"].base_url, CANARY + "\n", "failed"),
        "refused": (f"http://127.0.0.1:{free_port()}/v1", CANARY + "\n", "failed"),
        "upload": (emulators["upload"].base_url, CANARY + "\n", "failed"),
    }
    runs: dict[str, str] = {}
    conn_ids = {case: f"canary_{case}_{tag}" for case in cases}
    try:
        for case, (base_url, password, _) in cases.items():
            http_json(
                f"{stack.api}/connections",
                "POST",
                {
                    "connection_id": conn_ids[case],
                    "conn_type": "openai",
                    "host": base_url,
                    "password": password,
                    # No SDK retries: a closed port would take six backed-off attempts per try.
                    "extra": json.dumps({"openai_client_kwargs": {"max_retries": 0}}),
                },
            )
            folder = stack.inbox / f"canary-{tag}" / case
            folder.mkdir(parents=True)
            (folder / "requests.jsonl").write_text(_lines(case))
        for case in cases:
            run_id = f"canary_{case}_{tag}"
            conf = {
                "input": f"canary-{tag}/{case}/*.jsonl",
                "conn_id": conn_ids[case],
                "poll_interval": 1,
                "settle_seconds": 0,
            }
            http_json(
                f"{stack.api}/dags/{DAG_ID}/dagRuns",
                "POST",
                {"dag_run_id": run_id, "logical_date": None, "conf": conf},
            )
            runs[case] = run_id

        ended = {case: stack.wait_for_run(run_id, timeout=400) for case, run_id in runs.items()}
    finally:
        for conn_id in conn_ids.values():
            try:
                http_json(f"{stack.api}/connections/{conn_id}", "DELETE")
            except Exception as err:  # noqa: BLE001 - clean-up only
                print(f"could not delete connection {conn_id}: {err}")
    time.sleep(2)  # the last log lines of the ended tasks are flushed

    for case, (_, _, expected) in cases.items():
        assert ended[case]["state"] == expected, (case, stack.task_states(runs[case]))
    assert "unauthorized" not in emulators["ok"].stats()  # the stripped key was accepted
    assert emulators["other"].stats().get("unauthorized", 0) >= 1
    assert emulators["upload"].stats().get("injected_errors", 0) >= 1

    texts = _read_all([stack.home / "logs", stack.group.log_dir, stack.results, stack.inbox])
    print(f"\nread {len(texts)} files:", *texts, sep="\n  ")

    def task_logs(case: str, task_id: str) -> str:
        found = {p: t for p, t in texts.items() if f"run_id={runs[case]}" in p and f"task_id={task_id}" in p}
        assert found, f"no log of {task_id} in run {runs[case]} was read"
        return "\n".join(found.values())

    assert "Created batch" in task_logs("newline", "submit")
    tab = task_logs("tab", "submit")
    assert f"The API key of connection '{conn_ids['tab']}' contains a tab inside it" in tab
    assert "answered HTTP 401, code invalid_api_key" in task_logs("unauthorized", "submit")
    assert f"Could not reach the API of connection '{conn_ids['refused']}'" in task_logs("refused", "submit")
    assert "answered HTTP 400" in task_logs("upload", "submit")

    leaks = [path for path, text in texts.items() if CANARY in text or MIDDLE in text or SECOND in text]
    assert leaks == []
