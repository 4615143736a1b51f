"""Helpers that run the emulator for tests: in a thread (fast) or as a real subprocess (for kill -9)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from openai_emulator.server import create_app
from openai_emulator.settings import EmulatorSettings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = ["EmulatorProcess", "EmulatorServer", "free_port"]


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _call(url: str, method: str = "GET", payload: Any = None, timeout: float = 10.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - local URL
        return json.loads(response.read() or b"null")


class _ControlPlane:
    url: str

    def set_faults(self, **faults: Any) -> None:
        """Change fault fields (``PUT /_emulator/faults``); fields not given keep their values."""
        _call(f"{self.url}/_emulator/faults", "PUT", faults)

    def reset_faults(self) -> None:
        """Switch every fault off (``DELETE /_emulator/faults``)."""
        _call(f"{self.url}/_emulator/faults", "DELETE")

    def faults(self) -> dict[str, Any]:
        """Return the fault configuration."""
        result: dict[str, Any] = _call(f"{self.url}/_emulator/faults")
        return result

    def reset(self) -> dict[str, Any]:
        """Restore the start-up faults and zero the counters (``POST /_emulator/reset``)."""
        result: dict[str, Any] = _call(f"{self.url}/_emulator/reset", "POST")
        return result

    def stats(self) -> dict[str, Any]:
        """Return the counters of ``GET /_emulator/stats``."""
        result: dict[str, Any] = _call(f"{self.url}/_emulator/stats")
        return result

    def webhooks(self) -> dict[str, Any]:
        """Return the webhook URLs and delivery counts (``GET /_emulator/webhooks``)."""
        result: dict[str, Any] = _call(f"{self.url}/_emulator/webhooks")
        return result

    def set_webhooks(self, urls: list[str] | None = None, secret: str | None = None) -> dict[str, Any]:
        """Change the webhook URLs and/or secret (``PUT /_emulator/webhooks``); None keeps one."""
        payload: dict[str, Any] = {}
        if urls is not None:
            payload["urls"] = urls
        if secret is not None:
            payload["secret"] = secret
        result: dict[str, Any] = _call(f"{self.url}/_emulator/webhooks", "PUT", payload)
        return result

    def set_azure_deployments(self, deployments: dict[str, str] | None) -> dict[str, Any]:
        """Set the Azure deployments (``PUT /_emulator/azure/deployments``); None restores the default."""
        result: dict[str, Any] = _call(
            f"{self.url}/_emulator/azure/deployments", "PUT", {"deployments": deployments}
        )
        return result

    @property
    def base_url(self) -> str:
        """Base URL for the ``openai`` client, ending in ``/v1``."""
        return f"{self.url}/v1"

    @property
    def azure_base_url(self) -> str:
        """Base URL of Azure's v1 API for the ``openai`` client, ending in ``/openai/v1/``."""
        return f"{self.url}/openai/v1/"


class EmulatorServer(_ControlPlane):
    """Run the emulator with uvicorn in a background thread on a free port of 127.0.0.1.

    :param data_dir: directory for the emulator's state.
    :param tls: ``(certificate file, key file)`` to serve HTTPS on ``https://localhost:<port>``.
    :param settings: any setting or fault field by its Python name, e.g. ``validating_seconds=0.1``.
    """

    def __init__(self, data_dir: str | Path, *, tls: tuple[str, str] | None = None, **settings: Any) -> None:
        self.tls = tls
        settings.setdefault("log_level", "warning")
        self.settings = EmulatorSettings.from_kwargs(
            data_dir=Path(data_dir), host="127.0.0.1", port=0, **settings
        )
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def configure(self, **changes: Any) -> dict[str, Any]:
        """
        Change start-up settings of this in-process server while it runs; return their old values.

        The batch worker reads its settings at each step, so e.g. ``validating_seconds`` and
        ``requests_per_second`` apply to batches from the next step on. Fault fields go through
        :meth:`set_faults` instead.
        """
        old: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "faults" or not hasattr(self.settings, name):
                raise ValueError(f"not a setting: {name}")
            old[name] = getattr(self.settings, name)
            setattr(self.settings, name, value)
        return old

    def start(self) -> EmulatorServer:
        """Start serving and wait until the server accepts requests."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        certfile, keyfile = self.tls or (None, None)
        config = uvicorn.Config(
            create_app(self.settings),
            log_level=self.settings.log_level,
            access_log=False,
            lifespan="on",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="openai-emulator", daemon=True
        )
        self._thread.start()
        self.url = f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("The emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmulatorProcess(_ControlPlane):
    """Run ``python -m openai_emulator`` as a real subprocess, so tests can kill it with SIGKILL.

    :param data_dir: directory for the emulator's state; the log goes to ``emulator.log`` inside it.
    :param port: port to bind; a free one when None (kept across restarts).
    :param extra_args: more command-line flags, e.g. ``["--requests-per-second", "50"]``.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id of the running emulator."""
        if self._process is None:
            raise RuntimeError("The emulator is not running")
        return self._process.pid

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        """Start the process and wait until ``/_emulator/health`` answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "openai_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        with (self.data_dir / "emulator.log").open("ab") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"The emulator exited with code {self._process.returncode}; see emulator.log"
                )
            try:
                _call(f"{self.url}/_emulator/health", timeout=1.0)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("The emulator did not become healthy") from None
                time.sleep(0.05)

    def kill9(self) -> None:
        """Kill the process with SIGKILL, as a crash would."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        """Stop the process with SIGTERM and wait for it."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def restart(self) -> EmulatorProcess:
        """Stop the process if it runs, then start it again on the same port and data dir."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
