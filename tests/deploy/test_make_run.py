"""`make run`'s core (`scripts/run_local.py --once`) from a fresh repo copy: results, exit 0, nothing left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.processes import ROOT, free_port

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


def copy_tracked_files(dest: Path) -> None:
    """Copy the files git tracks (as they are in the work tree) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src = ROOT / os.fsdecode(name)
        if not src.is_file():  # deleted in the work tree
            continue
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode)


def processes_mentioning(text: str) -> list[str]:
    """Return ``pid: cmdline`` of live processes whose command line, cwd or environment mention ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text) or text in environ:
            found.append(f"{entry.name}: {cmdline}")
    return found


def listening_addresses(text: str) -> list[tuple[str, int, str]]:
    """Return ``(ip, port, cmdline)`` of every listening TCP socket of the processes mentioning ``text``."""
    import psutil

    found = []
    for line in processes_mentioning(text):
        pid = int(line.split(":", 1)[0])
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(c.laddr.ip, c.laddr.port, line) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def port_is_free(port: int) -> bool:
    """Return True when nothing listens on ``port`` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def test_make_run_once_from_a_fresh_copy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_tracked_files(repo)
    assert (repo / "scripts" / "run_local.py").exists()
    assert not (repo / "data").exists()
    ui_port, emulator_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "OPENAI_", "PYTEST_")) and key != "PYTHONPATH"
    }
    env.update(
        {
            "OPENAI_BATCH_UI_PORT": str(ui_port),
            "OPENAI_BATCH_EMULATOR_PORT": str(emulator_port),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    output = tmp_path / "run_local.out"
    with output.open("wb") as out:
        # As a person runs it: no --once; it keeps running after the first run until stopped.
        proc = subprocess.Popen(
            [sys.executable, "scripts/run_local.py", "--timeout", "300"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        results = repo / "data" / "results"
        seen_while_running: list[Path] = []
        try:
            deadline = time.monotonic() + 480
            while proc.poll() is None and time.monotonic() < deadline:
                if not seen_while_running:
                    seen_while_running = sorted(results.glob("*/manifest.json"))
                if "still running; press Ctrl-C" in output.read_text(errors="replace"):
                    break
                time.sleep(1)
            listening = listening_addresses(str(repo))
            # Ctrl-C twice, as an impatient person would: the stop goes on, quietly.
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    log = output.read_text(errors="replace")
    airflow_logs = repo / ".airflow" / "logs" / "standalone.out"
    detail = log + (airflow_logs.read_text(errors="replace")[-5000:] if airflow_logs.exists() else "")
    assert code == 0, detail

    manifests = sorted(results.glob("*/manifest.json"))
    assert {m.parent.name for m in manifests} == {"mixed", "seed"}, detail
    assert seen_while_running, "no manifest appeared while make run was running"
    for manifest in manifests:
        summary = json.loads(manifest.read_text())
        assert summary["counts"]["succeeded"] > 0, summary
        assert (manifest.parent / "results.jsonl").exists()
    assert "Airflow UI : http://127.0.0.1:" in log
    # Every server of the stack on 127.0.0.1, the log servers on the two ports after the UI's.
    assert listening, "no listening socket found while make run was running"
    assert [x for x in listening if x[0] != "127.0.0.1"] == [], listening
    ports = {port for _ip, port, _cmd in listening}
    assert {ui_port, emulator_port, ui_port + 1, ui_port + 2} <= ports, listening
    assert "stopped" in log
    assert "ended: success" in log, detail
    assert "Traceback" not in log, log
    assert sorted(p.name for p in (repo / "data" / "inbox").glob("*.jsonl")) == ["mixed.jsonl", "seed.jsonl"]

    # Nothing left behind: no process tied to the copy, both ports free again.
    leftovers: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        leftovers = processes_mentioning(str(repo))
        if not leftovers:
            break
        time.sleep(0.5)
    assert leftovers == [], leftovers
    assert port_is_free(ui_port)
    assert port_is_free(emulator_port)
