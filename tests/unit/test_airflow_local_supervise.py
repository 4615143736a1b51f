"""`make run`'s parts are supervised: one that exits on its own starts again; a stop reaches it once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from scripts.run_local import ROOT

if TYPE_CHECKING:
    from pathlib import Path

#: A stand-in for a long-running Airflow part. It counts its starts, records every stop signal it
#: gets, and ends (code 7) half a second after the first, or after the second when "stubborn".
PART = """
import os, signal, sys, time
from pathlib import Path

state, mode = Path(sys.argv[1]), sys.argv[2]
starts = int((state / "starts").read_text()) + 1 if (state / "starts").exists() else 1
got = []

def put(name, text):  # whole or not at all: the test reads these files while the part runs
    (state / f".{name}").write_text(text)
    os.replace(state / f".{name}", state / name)

def on_stop(signum, frame):
    got.append(signum)
    put("signals", " ".join(map(str, got)))

signal.signal(signal.SIGTERM, on_stop)
signal.signal(signal.SIGINT, on_stop)
put("starts", str(starts))
if mode == "crash-once" and starts == 1 or mode == "crash-always":
    sys.exit(3)
while len(got) < (2 if mode == "stubborn" else 1):
    time.sleep(0.02)
time.sleep(0.5)  # a second signal, if one were sent, would land here
sys.exit(7)
"""

DRIVER = """
import sys
from scripts import airflow_local

airflow_local.RESTART_DELAY = 0.1
airflow_local.STOP_GRACE = float(sys.argv[3])
sys.exit(airflow_local.supervise([sys.executable, sys.argv[1], sys.argv[2], sys.argv[4]], name="part"))
"""


def _supervise(tmp_path: Path, mode: str, grace: float = 30.0, **popen: object) -> subprocess.Popen[bytes]:
    part = tmp_path / "part.py"
    part.write_text(PART)
    state = tmp_path / "state"
    state.mkdir()
    argv = [sys.executable, "-c", DRIVER, str(part), str(state), str(grace), mode]
    return subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def _starts(tmp_path: Path) -> int:
    path = tmp_path / "state" / "starts"
    return int(path.read_text()) if path.exists() else 0


def _signals(tmp_path: Path) -> list[int]:
    path = tmp_path / "state" / "signals"
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _signal_group(pgid: int, name: str) -> None:
    """Signal a whole process group from another process (``make run``'s stop, a terminal): not the parent."""
    subprocess.run(["kill", "-s", name, "--", f"-{pgid}"], check=True)


def _wait(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_part_that_exits_on_its_own_starts_again_and_a_stop_from_standalone_reaches_it(
    tmp_path: Path,
) -> None:
    supervisor = _supervise(tmp_path, "crash-once")
    _wait(lambda: _starts(tmp_path) == 2)
    assert supervisor.poll() is None  # still supervising the second start
    supervisor.send_signal(signal.SIGTERM)  # as `airflow standalone` stops its parts: the parent, alone
    assert supervisor.wait(timeout=20) == 7
    assert _signals(tmp_path) == [signal.SIGTERM]
    assert _starts(tmp_path) == 2
    assert b"part exited with code 3; starting it again" in supervisor.stderr.read()  # type: ignore[union-attr]


def test_a_stop_sent_to_the_whole_group_reaches_the_part_once(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, "run", start_new_session=True)
    _wait(lambda: _starts(tmp_path) == 1)
    time.sleep(0.2)  # the part's handlers are in place once it has counted its start
    _signal_group(supervisor.pid, "TERM")  # as `make run` stops: the group, supervisor and part
    assert supervisor.wait(timeout=20) == 7
    assert _signals(tmp_path) == [signal.SIGTERM]  # not a second one passed on: Airflow's "do not wait"
    assert _starts(tmp_path) == 1


def test_a_part_still_running_after_a_group_stop_gets_a_sigterm_of_its_own(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, "stubborn", grace=2.0, start_new_session=True)
    _wait(lambda: _starts(tmp_path) == 1)
    time.sleep(0.2)
    _signal_group(supervisor.pid, "INT")
    assert supervisor.wait(timeout=20) == 7
    assert _signals(tmp_path) == [signal.SIGINT, signal.SIGTERM]
    assert _starts(tmp_path) == 1  # stopped, not started again


def test_a_part_that_keeps_exiting_is_left_stopped_with_its_code(tmp_path: Path) -> None:
    from scripts.airflow_local import MAX_RESTARTS

    supervisor = _supervise(tmp_path, "crash-always")
    assert supervisor.wait(timeout=60) == 3
    assert _starts(tmp_path) == MAX_RESTARTS + 1
    assert b"left stopped" in supervisor.stderr.read()  # type: ignore[union-attr]
