"""`make run`'s environment: every server on 127.0.0.1, the log servers on ports that follow the UI port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from scripts.run_local import ROOT, airflow_env, local_parallelism, log_server_ports, write_airflow_command
from tests.deploy.processes import free_port

if TYPE_CHECKING:
    from pathlib import Path


def _env(home: Path, ui_port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    return airflow_env(base or {}, home=home, ui_port=ui_port, inbox=home / "in", results=home / "out")


def test_log_server_ports_follow_the_ui_port(tmp_path: Path) -> None:
    env = _env(tmp_path, 9120)
    assert log_server_ports(9120) == (9121, 9122)
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "9121"
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "9122"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "9120"
    # The airflow command standalone finds first on PATH is the one that binds to 127.0.0.1.
    assert env["PATH"].split(":")[0] == str(tmp_path / "bin")


def test_a_local_stack_runs_a_few_task_processes_per_core_not_airflows_32(tmp_path: Path) -> None:
    assert [local_parallelism(n) for n in (1, 2, 4, 16)] == [4, 8, 16, 32]
    assert _env(tmp_path, 9120)["AIRFLOW__CORE__PARALLELISM"] == str(local_parallelism())
    chosen = _env(tmp_path, 9120, {"AIRFLOW__CORE__PARALLELISM": "3"})
    assert chosen["AIRFLOW__CORE__PARALLELISM"] == "3"  # a deployer's own setting wins


def test_ports_set_explicitly_win(tmp_path: Path) -> None:
    base = {
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "7001",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "7002",
    }
    env = _env(tmp_path, 9120, base)
    assert (
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"],
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"],
    ) == (
        "7001",
        "7002",
    )


def _listening(pid: int, port: int, timeout: float = 60) -> list[str]:
    """Return the addresses the process tree of ``pid`` listens on at ``port``, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        found = []
        for proc in procs:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.Error:
                continue
            found += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        if found:
            return sorted(found)
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {port} after {timeout:.0f} s")


@pytest.mark.timeout(120)
def test_the_log_server_started_through_the_airflow_command_listens_on_127_0_0_1_only(tmp_path: Path) -> None:
    """Airflow's own log server (no host setting of its own), started as the scheduler starts it."""
    home = tmp_path / "airflow"
    command = write_airflow_command(home)
    port = free_port()
    env = _env(home, free_port(), {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(port)
    text = command.read_text()
    assert str(ROOT / "scripts" / "airflow_local.py") in text
    # The command's own Python, with the log server in place of the CLI, as its forks run it.
    code = (
        "import runpy, sys; sys.argv = ['airflow_local']; "
        f"ns = runpy.run_path({str(ROOT / 'scripts' / 'airflow_local.py')!r}); ns['bind_local'](); "
        "from airflow.utils.serve_logs import serve_logs; serve_logs()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, start_new_session=True)
    try:
        assert _listening(proc.pid, port) == ["127.0.0.1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.timeout(120)
def test_the_airflow_command_runs_airflows_cli(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    command = write_airflow_command(home)
    env = _env(home, free_port(), {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    out = subprocess.run([str(command), "version"], env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3."), out.stdout
