"""
The ``airflow`` command of `make run`: Airflow's own CLI, with every server bound to 127.0.0.1.

Airflow 3.3's log servers (``[logging] worker_log_server_port`` of the scheduler,
``trigger_log_server_port`` of the triggerer) listen on every interface and have no host
setting. `make run` promises 127.0.0.1 only, so this entry point wraps ``uvicorn.run`` before
Airflow starts: a server asked for every interface (``""``, ``0.0.0.0``, ``::``) gets
:data:`LOCAL_HOST` instead; an explicit host (the API server's ``127.0.0.1``) is left alone.
``scripts/run_local.py`` puts a small ``airflow`` script that runs this first on PATH, so
``airflow standalone`` starts its parts through it too.

``airflow standalone`` never looks at its parts again once started: a scheduler that stops on an
error (Airflow 3.3's does when the API server removes a backfill's half-created runs after SQLite
said "database is locked") leaves a stack that answers in the UI and runs nothing. So each
long-running part is started under :func:`supervise`, which starts it again when it exits
without having been asked to stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

LOCAL_HOST = "127.0.0.1"
#: What a server asks for when it means every interface.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
#: The parts ``airflow standalone`` starts, each meant to run until stopped.
SUPERVISED = frozenset({"scheduler", "dag-processor", "triggerer", "api-server"})
#: Set in a supervised part's environment, so it runs Airflow itself instead of supervising again.
_SUPERVISED_ENV = "OPENAI_BATCH_SUPERVISED_PART"
#: Seconds before a part that exited is started again.
RESTART_DELAY = 2.0
#: A part that exits this many times within :data:`RESTART_WINDOW` seconds is not started again.
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0
#: Seconds a part has to stop after a stop signal sent to its whole group, before it is sent one too.
STOP_GRACE = 30.0
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def bind_local() -> None:
    """Make ``uvicorn.run`` bind every-interface servers to :data:`LOCAL_HOST` (here and in forks)."""
    import uvicorn

    real = uvicorn.run
    if getattr(real, "binds_local", False):
        return

    def run(app: Any, **kwargs: Any) -> None:
        if str(kwargs.get("host", "")) in WILDCARD_HOSTS:
            kwargs["host"] = LOCAL_HOST
        real(app, **kwargs)

    run.binds_local = True  # type: ignore[attr-defined]
    uvicorn.run = run


def _say(message: str) -> None:
    print(f"[airflow_local] {message}", file=sys.stderr, flush=True)


def supervise(argv: list[str], env: dict[str, str] | None = None, name: str = "") -> int:
    """
    Run ``argv`` and start it again each time it exits on its own; return its code once it stops.

    A stop signal (SIGTERM, SIGINT) ends the supervision. One that comes from this process's parent
    (``airflow standalone`` stopping its parts, or Ctrl-C there) is passed on to the part at once.
    Any other was sent to the whole process group (``make run`` stopping, a terminal), which the part
    belongs to, so the part has it already: passing it on would be a second signal, which Airflow
    reads as "do not wait for running tasks". If the part still runs :data:`STOP_GRACE` seconds later,
    it gets a SIGTERM, then a SIGKILL. A part that exits more than :data:`MAX_RESTARTS` times within
    :data:`RESTART_WINDOW` seconds is left stopped, with its exit code returned.
    """
    return _Supervisor(argv, env, name or " ".join(argv[-1:])).run()


class _Supervisor:
    """The state of :func:`supervise`: the running part and how far a stop has gone."""

    _WATCHED = frozenset({*_STOP_SIGNALS, signal.SIGCHLD})

    def __init__(self, argv: list[str], env: dict[str, str] | None, name: str) -> None:
        self.argv, self.env, self.name = argv, env, name
        self.stop_at: float | None = None  # when a stop signal came (or was last passed on)
        self.forwarded = self.killed = False

    def start(self) -> subprocess.Popen[bytes]:
        mask = self.mask
        return subprocess.Popen(
            self.argv, env=self.env, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        )

    def run(self) -> int:
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._WATCHED)
        self.part = self.start()
        exits: list[float] = []
        try:
            while True:
                while (code := self.part.poll()) is None:
                    self.wait_signal(0.5)
                    self.escalate()
                if self.stop_at is not None:
                    return code
                now = time.monotonic()
                exits = [t for t in exits if now - t < RESTART_WINDOW] + [now]
                if len(exits) > MAX_RESTARTS:
                    _say(f"{self.name} exited with code {code}, {len(exits)} times: left stopped")
                    return code
                _say(f"{self.name} exited with code {code}; starting it again in {RESTART_DELAY:.0f} s")
                deadline = now + RESTART_DELAY
                while self.stop_at is None and (left := deadline - time.monotonic()) > 0:
                    self.wait_signal(left)
                if self.stop_at is not None:
                    return code
                self.part = self.start()
        finally:
            if self.part.poll() is None:
                self.part.kill()
                self.part.wait()
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)

    def wait_signal(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a signal; a stop signal starts the stop."""
        info = signal.sigtimedwait(self._WATCHED, max(0.01, timeout))
        if info is None or info.si_signo not in _STOP_SIGNALS:
            return
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        if info.si_pid == os.getppid() and not self.forwarded and self.part.poll() is None:
            self.part.send_signal(info.si_signo)
            self.forwarded = True

    def escalate(self) -> None:
        """Once stopping, a part still running after :data:`STOP_GRACE` gets a SIGTERM, then a SIGKILL."""
        if self.stop_at is None or self.killed or time.monotonic() - self.stop_at < STOP_GRACE:
            return
        if not self.forwarded:
            self.part.terminate()
            self.forwarded, self.stop_at = True, time.monotonic()
        else:
            self.part.kill()
            self.killed = True


def main() -> int:
    """Run Airflow's CLI with :func:`bind_local` in force; a long-running part under :func:`supervise`."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in SUPERVISED and not os.environ.get(_SUPERVISED_ENV):
        env = {**os.environ, _SUPERVISED_ENV: "1"}
        return supervise([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env, name=command)
    bind_local()
    from airflow.__main__ import main as airflow_main

    airflow_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
