"""The distributed topology of docker-compose.yaml as local processes: environment, commands, lifecycle.

`distributed_env` and `SERVICE_COMMANDS` are what tests/deploy/test_compose_sync.py compares with
docker-compose.yaml, so a change to one side without the other fails there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from scripts.run_local import group_alive as _group_alive

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JWT_SECRET = "openai-batch-deploy-test-shared-jwt-secret"
SIMPLE_AUTH_USERS = "airflow:admin"

# Compose service -> the command it runs. Airflow services run `airflow <command>`; the emulator runs
# `python -m openai_emulator`. Flags (from the first "--" on) are local choices and not compared.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
# The one-off before everything else: compose's airflow-init migrates through _AIRFLOW_DB_MIGRATE.
INIT_COMMAND = [str(BIN / "airflow"), "db", "migrate"]
EMULATOR_SERVICE = "openai-emulator"
EMULATOR_MODULE = "openai_emulator"

# AIRFLOW__* keys only the single-host run needs: every component binds its own free port here, and
# the REST API is used without a login. docker-compose.yaml must not need any other key the test lacks.
LOCAL_ONLY_KEYS = frozenset(
    {
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS",
    }
)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fernet_key_file(home: Path) -> Path:
    """Return the deployment's Fernet key file, made as compose's airflow-init makes it (once)."""
    import base64
    import secrets

    path = home / "fernet.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
        path.chmod(0o600)
    return path


def distributed_env(
    *,
    home: Path,
    database_url: str,
    broker_url: str,
    api_port: int,
    emulator_base_url: str,
    inbox: Path,
    results: Path,
) -> dict[str, str]:
    """Return the environment every component gets: the compose common env, pointed at local services.

    :param home: AIRFLOW_HOME of this deployment (logs and the passwords file live there).
    :param database_url: libpq URL of the metadata database, ``postgresql://user@host:port/db``.
    :param broker_url: Redis broker URL, ``redis://host:port/db``.
    :param api_port: Port of the api-server, which also serves the execution API.
    :param emulator_base_url: Base URL of the Batch API emulator, ending in ``/v1``.
    """
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "OPENAI_", "PYTEST_")) and key != "PYTHONPATH"
    }
    pg = database_url.removeprefix("postgresql://")
    airflow = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "10000",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": SIMPLE_AUTH_USERS,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CORE__FERNET_KEY_CMD": f"cat {fernet_key_file(home)}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps(
            {"conn_type": "openai", "password": "local-emulator-key", "host": emulator_base_url}
        ),
        "AIRFLOW_CONN_FS_DEFAULT": json.dumps({"conn_type": "fs", "extra": {"path": "/"}}),
        "AIRFLOW_VAR_OPENAI_BATCH_INBOX": str(inbox),
        "AIRFLOW_VAR_OPENAI_BATCH_RESULTS": str(results),
    }
    # As compose's common env: the webhook secret generated once into the deployment's data folder.
    webhooks = {"OPENAI_WEBHOOK_SECRET_FILE": str(webhook_secret_file(home))}
    return {
        **base,
        **airflow,
        **webhooks,
        "AIRFLOW_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def airflow_commands(api_port: int, worker_concurrency: int = 2) -> dict[str, list[str]]:
    """Return the full argv of every Airflow component, keyed by its compose service."""
    flags = {
        "airflow-apiserver": ["--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"],
        "airflow-worker": ["--concurrency", str(worker_concurrency)],
    }
    return {
        service: [str(BIN / "airflow"), *command, *flags.get(service, [])]
        for service, command in SERVICE_COMMANDS.items()
    }


def webhook_secret_file(home: Path) -> Path:
    """Return the deployment's webhook secret file, made as compose's airflow-init makes it (once)."""
    from scripts.run_local import webhook_secret

    path = home / "webhook-secret"
    webhook_secret(path)
    return path


def emulator_command(
    port: int, data_dir: Path, validating_seconds: float = 0.2, webhook_url: str | None = None
) -> list[str]:
    """Return the argv of the emulator, as the compose ``openai-emulator`` service runs it."""
    webhooks = ["--webhook-urls", webhook_url] if webhook_url else []
    return [
        str(BIN / "python"),
        "-m",
        EMULATOR_MODULE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--validating-seconds",
        str(validating_seconds),
        "--finalizing-seconds",
        "0.1",
        "--log-level",
        "info",
        *webhooks,
    ]


def command_name(argv: list[str]) -> list[str]:
    """Return a command without its program path and flags: ``["celery", "worker"]``."""
    words: list[str] = []
    for word in argv[1:]:
        if word.startswith("-") and words:
            break
        words.append(word)
    return words


class ProcessGroup:
    """Processes started in their own sessions, each logging to a file, stopped as whole process groups."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self._logs: list[IO[bytes]] = []

    def log_path(self, name: str) -> Path:
        """Return the log file of a process."""
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session with stdout and stderr going to ``<name>.log``."""
        log = self.log_path(name).open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        self.envs[name] = env
        return process

    def run(self, name: str, argv: list[str], env: dict[str, str], timeout: float) -> None:
        """Run a one-off command to completion, logging to ``<name>.log``; raise if it fails."""
        with self.log_path(name).open("ab") as log:
            result = subprocess.run(
                argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if result.returncode != 0:
            raise RuntimeError(f"{name} exited with {result.returncode}:\n{self.tail(name)}")

    def check_alive(self) -> None:
        """Raise if a started process has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 80) -> str:
        """Return the end of a process's log."""
        path = self.log_path(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def dump_logs(self, lines: int = 80) -> str:
        """Return the end of every log, for a failure report."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"===== {path.name} (last {lines} lines) =====\n{self.tail(path.stem, lines)}")
        return "\n".join(parts)

    def stop(self, timeout: float = 20.0) -> list[int]:
        """SIGTERM every process group, SIGKILL what is left after ``timeout``; return surviving pgids."""
        groups = [process.pid for process in self.processes.values()]
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in groups):
            for process in self.processes.values():
                process.poll()
            time.sleep(0.2)
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in groups):
            time.sleep(0.1)
        for log in self._logs:
            log.close()
        self._logs.clear()
        return [pgid for pgid in groups if _group_alive(pgid)]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def http_json(url: str, method: str = "GET", payload: Any = None, timeout: float = 10.0) -> Any:
    """Send a JSON request and return the decoded answer; HTTP errors raise ``urllib.error.HTTPError``."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - local URL
        return json.loads(response.read() or b"null")


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 1.0,
    alive: ProcessGroup | None = None,
) -> Any:
    """Call ``check`` until it returns something truthy; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if alive is not None:
            alive.check_alive()
        try:
            last = check()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
