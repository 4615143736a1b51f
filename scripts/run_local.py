"""`make run`: the emulator (or the real API), `airflow standalone`, sample inputs, one triggered run.

Everything binds to 127.0.0.1, Airflow's log servers included (see ``scripts/airflow_local.py``);
their ports follow ``OPENAI_BATCH_UI_PORT``. Ctrl-C (or SIGTERM) stops every process this started.
With ``--once`` it waits for the run's manifest, prints it, and shuts down (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_until(check: Any, what: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> Any:
    started = time.monotonic()
    deadline, said = started + timeout, started
    while time.monotonic() < deadline:
        if time.monotonic() - said >= 15:  # a word now and then: a cold start takes a minute or two
            said = time.monotonic()
            log(f"still waiting for {what} ({said - started:.0f}s)")
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{what}: a process exited early with code {proc.returncode}: {proc.args}")
        try:
            result = check()
            if result:
                return result
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def group_alive(pgid: int) -> bool:
    """Return True while a process group has a live member (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_is_live_member(pid, pgid) for pid in _pids())


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _is_live_member(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[2]) == pgid and fields[0] != "Z"


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 30.0) -> list[int]:
    """
    Stop every process group started here; return the groups still alive (none, normally).

    SIGTERM to each group, a wait for every process of the group (not just its leader) to exit,
    then SIGKILL to what is left. A second Ctrl-C or SIGTERM while stopping is ignored: the stop
    goes on, quietly.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    groups = [proc.pid for proc in procs]  # each was started as the leader of its own session
    for pgid in reversed(groups):
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap the leaders so their group can disappear
        time.sleep(0.2)
    for pgid in groups:
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()
    deadline = time.monotonic() + 10
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [g for g in groups if group_alive(g)]


def airflow_env(
    base: dict[str, str],
    *,
    home: Path,
    ui_port: int,
    inbox: Path,
    results: Path,
    root: Path = ROOT,
    variables_in_env: bool = True,
) -> dict[str, str]:
    """
    Return the environment of a local ``airflow standalone`` for this project.

    SQLite in ``home``, this project's dags and plugins, everything on 127.0.0.1 with the login
    turned off (every user is admin), the inbox and results roots as Variables. ``base`` is the
    environment to start from; its PATH gets ``home/bin`` (the ``airflow`` of
    :func:`write_airflow_command`) and this interpreter's bin folder first, because ``airflow
    standalone`` starts its parts as ``airflow ...`` looked up on PATH. The log servers' ports
    follow the UI port (:func:`log_server_ports`) unless set in ``base``. With ``variables_in_env``
    false, the inbox and results roots are left to real Variables (see :func:`ensure_settings`),
    which the UI shows and edits; an ``AIRFLOW_VAR_*`` would silently win over them.
    """
    env = dict(base)
    env["PATH"] = f"{home / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    worker_logs, trigger_logs = log_server_ports(ui_port)
    env.setdefault("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(worker_logs))
    env.setdefault("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(trigger_logs))
    # LocalExecutor runs this many task processes (Airflow's default, 32, is about 1.7 GiB of idle
    # workers): waits are deferred and hold none, so four per core keeps a laptop responsive.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(local_parallelism()))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(ui_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ui_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ui_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # A file of more than 1,024 shards (Airflow's default) is mapped in one run.
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "10000",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW_CONN_FS_DEFAULT": '{"conn_type": "fs", "extra": {"path": "/"}}',
        }
    )
    if variables_in_env:
        env["AIRFLOW_VAR_OPENAI_BATCH_INBOX"] = str(inbox)
        env["AIRFLOW_VAR_OPENAI_BATCH_RESULTS"] = str(results)
    return env


def local_parallelism(cpus: int | None = None) -> int:
    """Return how many task processes a local stack runs at once: four per core, 4 to 32."""
    return max(4, min(32, 4 * (cpus or os.cpu_count() or 1)))


def log_server_ports(ui_port: int) -> tuple[int, int]:
    """
    Return the worker and triggerer log servers' ports: the two after the UI port.

    Airflow's fixed defaults (8793, 8794) would clash with another Airflow on the machine; set
    ``OPENAI_BATCH_UI_PORT`` and all three move together.
    """
    return ui_port + 1, ui_port + 2


def write_airflow_command(home: Path, root: Path = ROOT) -> Path:
    """
    Write ``home/bin/airflow``: Airflow's CLI through ``scripts/airflow_local.py`` (servers on 127.0.0.1).

    Airflow's log servers have no host setting and listen on every interface; run through this
    command, they bind to 127.0.0.1 like the rest of the stack.
    """
    command = home / "bin" / "airflow"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{root / "scripts" / "airflow_local.py"}" "$@"\n')
    command.chmod(0o755)
    return command


#: Where the emulator delivers its webhooks: the receiver of the plugin's app on the API server.
WEBHOOK_ROUTE = "/openai-batch/webhooks/openai"


def emulator_command(port: int, data_dir: Path, webhook_url: str | None = None) -> list[str]:
    """
    Return the command line of ``make run``'s emulator, on 127.0.0.1.

    ``--strict-models`` fails a batch whose model the service does not know (a misspelt
    ``gpt-4o-mnii``) with ``model_not_found``, as the real API does, instead of echoing answers.
    With ``webhook_url`` it posts a signed event there when a batch ends, signed with the
    ``OPENAI_WEBHOOK_SECRET`` of its environment (see :func:`webhook_secret`).
    """
    command = [
        sys.executable,
        "-m",
        "openai_emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--strict-models",
    ]
    return command + (["--webhook-urls", webhook_url] if webhook_url else [])


def webhook_secret(path: Path) -> str:
    """
    Return the local stack's webhook signing secret, made once (``whsec_`` and 32 random bytes).

    Kept in ``path`` (readable by its owner only) so a restarted stack and a running emulator agree;
    it signs the emulator's deliveries only and is never a key of the real service.
    """
    import base64
    import secrets

    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found.startswith("whsec_"):
        return found
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def emulator_connection(base_url: str) -> str:
    """Return the ``openai_default`` connection (JSON form) for an emulator at ``base_url``."""
    return json.dumps({"conn_type": "openai", "password": "local-emulator-key", "host": f"{base_url}/v1"})


def wait_for_dag(api: str, dag_id: str, check: Any) -> None:
    """Wait (through ``check``, a ``wait_until`` bound to its processes) for the API and a parsed DAG."""
    check(
        lambda: http("GET", f"{api}/monitor/health")["metadatabase"]["status"] == "healthy", "the Airflow API"
    )
    check(lambda: http("GET", f"{api}/dags/{dag_id}"), f"the {dag_id} DAG to be parsed")


def place_samples(inbox: Path, root: Path = ROOT) -> None:
    """Copy ``samples/*.jsonl`` into the inbox (skipping names already there), each in one rename."""
    for sample in sorted((root / "samples").glob("*.jsonl")):
        target = inbox / sample.name
        if not target.exists():
            partial = target.with_name(f".{target.name}.part")
            shutil.copyfile(sample, partial)
            partial.replace(target)
            log(f"placed sample input {target.relative_to(root)}")


#: The description of the connection ``make run`` creates: one with it is ``make run``'s to update.
MANAGED = "Created by make run; edit or delete it to use your own settings."


def ensure_settings(api: str, inbox: Path, results: Path, connection: dict[str, Any]) -> list[str]:
    """
    Create the Variables and the ``openai_default`` connection ``make run`` uses, unless set already.

    They are real Variables and a real Connection, shown and edited in the UI (Admin); a value a
    person set there is kept and used. The connection ``make run`` created itself (its description
    says so) follows the API chosen for this start. Return one line per setting, for the banner.
    """
    lines = []
    for key, value in (("openai_batch_inbox", str(inbox)), ("openai_batch_results", str(results))):
        try:
            found = http("GET", f"{api}/variables/{key}")["value"]
            lines.append(f"Variable {key} = {found} (kept)")
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
            http("POST", f"{api}/variables", {"key": key, "value": value})
            lines.append(f"Variable {key} = {value}")
    wanted = {"connection_id": "openai_default", "description": MANAGED, **connection}
    try:
        found = http("GET", f"{api}/connections/openai_default")
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        http("POST", f"{api}/connections", wanted)
        lines.append(f"Connection openai_default -> {connection.get('host') or 'https://api.openai.com/v1'}")
    else:
        if found.get("description") == MANAGED:
            http("PATCH", f"{api}/connections/openai_default", wanted)
            lines.append(
                f"Connection openai_default -> {connection.get('host') or 'https://api.openai.com/v1'}"
            )
        else:
            host = found.get("host") or "https://api.openai.com/v1"
            lines.append(f"Connection openai_default -> {host} (yours, kept)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the first run's results are written")
    parser.add_argument("--timeout", type=float, default=600, help="with --once: seconds to wait for results")
    parser.add_argument(
        "--api",
        choices=("emulator", "openai"),
        default=os.environ.get("API") or "emulator",
        help="the Batch API: the local emulator (default) or the real, paid OpenAI API",
    )
    args = parser.parse_args()

    ui_port = int(os.environ.get("OPENAI_BATCH_UI_PORT", "8080"))
    emu_port = int(os.environ.get("OPENAI_BATCH_EMULATOR_PORT", "8800"))
    data = ROOT / "data"
    inbox, results = data / "inbox", data / "results"
    home = ROOT / ".airflow"
    for folder in (inbox, results, home):
        folder.mkdir(parents=True, exist_ok=True)

    base = dict(os.environ)
    if args.api == "openai":
        if not base.get("OPENAI_API_KEY", "").strip():
            log("make run API=openai needs OPENAI_API_KEY set (or a key in the openai_default connection)")
        log("API=openai: requests go to the real OpenAI Batch API, and they cost money")
    elif base.pop("OPENAI_API_KEY", None):
        log(
            "OPENAI_API_KEY is set but not used: this stack talks to the emulator "
            "(make run API=openai for the real API)"
        )
    base.pop("OPENAI_BASE_URL", None)
    if args.api != "openai":
        # Webhooks first: the emulator signs each batch's end with this secret and posts it to the
        # stack's receiver, which verifies it with the same secret (OPENAI_WEBHOOK_SECRET, the SDK's
        # own variable, read when the connection's extra has no webhook_secret).
        base["OPENAI_WEBHOOK_SECRET"] = webhook_secret(data / "webhook-secret")
    env = airflow_env(base, home=home, ui_port=ui_port, inbox=inbox, results=results, variables_in_env=False)
    write_airflow_command(home)
    procs: list[subprocess.Popen[bytes]] = []
    logs = home / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        out = (logs / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.api == "openai":
            connection: dict[str, Any] = {"conn_type": "openai"}  # the key stays in the environment
        else:
            emulator_url = f"http://127.0.0.1:{emu_port}"
            log(f"starting the Batch API emulator on {emulator_url} (data in data/emulator)")
            receiver = f"http://127.0.0.1:{ui_port}{WEBHOOK_ROUTE}"
            spawn(emulator_command(emu_port, data / "emulator", receiver), "emulator")
            wait_until(lambda: http("GET", f"{emulator_url}/_emulator/health"), "the emulator", 60, procs)
            connection = json.loads(emulator_connection(emulator_url))

        log(
            f"starting airflow standalone on http://127.0.0.1:{ui_port} "
            "(logs in .airflow/logs; about a minute)"
        )
        spawn(["airflow", "standalone"], "standalone")
        api = f"http://127.0.0.1:{ui_port}/api/v2"
        wait_for_dag(api, "openai_batch", lambda check, what: wait_until(check, what, 240, procs))
        settings = ensure_settings(api, inbox, results, connection)
        inbox = Path(http("GET", f"{api}/variables/openai_batch_inbox")["value"])
        results = Path(http("GET", f"{api}/variables/openai_batch_results")["value"])
        http("PATCH", f"{api}/dags/openai_batch", {"is_paused": False})
        # A batch's end reaches its wait by the emulator's webhook; polling, at the DAG's default
        # interval, is the net. The samples are placed with one rename each: no settle time needed.
        conf: dict[str, Any] = {"settle_seconds": 1}
        run = http("POST", f"{api}/dags/openai_batch/dagRuns", {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        log(f"triggered run {run_id}")
        # The samples go in once the input sensor is waiting (deferred), as files dropped into a
        # watched inbox would. Input that is already there when the sensor defers makes its trigger
        # fire at once, and Airflow 3.3.2's scheduler can then take the worker's late exit report
        # for the deferred try as a task killed externally and fail it. The run takes them (and
        # records them as taken), so the inbox watcher starts no second run for them.
        wait_until(
            lambda: (
                http("GET", f"{api}/dags/openai_batch/dagRuns/{run_id}/taskInstances/wait_for_input")["state"]
                in ("deferred", "success", "failed", "skipped")
            ),
            "the input sensor to wait",
            120,
            procs,
        )
        inbox.mkdir(parents=True, exist_ok=True)
        place_samples(inbox)
        backfill = "make backfill" if ui_port == 8080 else f"OPENAI_BATCH_UI_PORT={ui_port} make backfill"
        print(
            "\n"
            f"  Airflow UI : http://127.0.0.1:{ui_port}/dags/openai_batch\n"
            "  Login      : none needed (local only: every user is admin, bound to 127.0.0.1)\n"
            f"  Inputs     : {inbox} (drop a .jsonl here: it is picked up about 30 s after it settles)\n"
            f"  Results    : {results}/<file>/results.jsonl, rejects.jsonl, manifest.json\n"
            f"  Backfill   : {backfill} FROM=2024-01-01 TO=2024-01-03 (takes <inbox>/<date>/*.jsonl)\n"
            + "".join(f"  Setting    : {line}\n" for line in settings)
            + "  Stop       : Ctrl-C\n",
            flush=True,
        )

        def finished() -> Any:
            state = http("GET", f"{api}/dags/openai_batch/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        # A real batch may take up to 24 hours: without --once there is no time limit.
        state = wait_until(finished, f"run {run_id}", args.timeout if args.once else float("inf"), procs)
        log(f"run {run_id} ended: {state}")
        for manifest in sorted(results.rglob("manifest.json")):
            if "_history" in manifest.parts or "_state" in manifest.parts:
                continue
            summary = json.loads(manifest.read_text())
            log(f"{manifest.relative_to(results)}: {json.dumps(summary['counts'])}")
        if args.once:
            return 0 if state == "success" else 1
        log("still running; press Ctrl-C to stop")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        left = stop(procs)
        log(f"stopped (process groups still alive: {left})" if left else "stopped")


if __name__ == "__main__":
    sys.exit(main())
