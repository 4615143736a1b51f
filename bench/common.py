"""Shared helpers: paths, environment, subprocess runner, memory probes."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
WORK = BENCH_DIR / "work"
PLUGINS = ROOT / "plugins"
MB = 1024 * 1024


def round_ratios(
    numerators: list[dict[str, Any]], denominators: list[dict[str, Any]], key: str = "cpu_seconds"
) -> list[float]:
    """The ratio of each round: run i of one side over run i of the other (they ran side by side)."""
    return [n[key] / d[key] for n, d in zip(numerators, denominators, strict=True)]


def put_ratio(results: dict[str, Any], name: str, ratios: list[float]) -> None:
    """Record the median of the per-round ratios as ``name`` and its spread as ``name_min``/``name_max``."""
    results[name] = round(statistics.median(ratios), 3)
    results[f"{name}_min"] = round(min(ratios), 3)
    results[f"{name}_max"] = round(max(ratios), 3)


def setup_paths() -> None:
    """Make ``openai_batch`` and ``openai_emulator`` importable."""
    for path in (str(PLUGINS), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)


@contextmanager
def standalone_stack(prefix: str) -> Iterator[Any]:
    """Start the deployment tests' ``airflow standalone`` stack in a temporary folder; stop it after."""
    import shutil
    import tempfile

    setup_paths()
    from tests.deploy.standalone import StandaloneStack

    base = Path(tempfile.mkdtemp(prefix=prefix))
    stack = StandaloneStack(base).start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def profiled(name: str) -> Iterator[None]:
    """With ``BENCH_PROFILE_DIR`` set, write a cProfile of the block to ``<dir>/<name>.prof`` (dir made).

    A profiled run's seconds are the profiler's as much as the code's: compare them with nothing.
    """
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        os.makedirs(folder, exist_ok=True)
        profiler.dump_stats(os.path.join(folder, f"{name}.prof"))


def peak_rss_mb() -> float:
    """Return this process's peak resident set size (VmHWM) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_script(
    script: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run ``python -c script *args`` in the project folder; return it and the JSON line it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    return done, (json.loads(lines[-1]) if done.returncode == 0 and lines else None)


def airflow_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return an environment with an isolated Airflow home and this project's dags and plugins."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": f"{home}/logs",
            "AIRFLOW_CONN_FS_DEFAULT": '{"conn_type": "fs", "extra": {"path": "/"}}',
            "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
        }
    )
    env.pop("OPENAI_API_KEY", None)
    if extra:
        env.update(extra)
    return env


def openai_conn(base_url: str) -> str:
    """Return the ``AIRFLOW_CONN_OPENAI_DEFAULT`` value for an emulator."""
    return json.dumps({"conn_type": "openai", "password": "k", "host": base_url})


def run_worker(
    name: str,
    args: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    log: Path | None = None,
) -> dict[str, Any]:
    """Run ``python -m bench.worker NAME ARGS`` in a fresh process; return the JSON it prints last."""
    command = [sys.executable, "-m", "bench.worker", name, json.dumps(args)]
    base_env = env if env is not None else airflow_env(WORK / "airflow-home")
    started = time.perf_counter()
    stderr_target: Any = subprocess.PIPE
    log_file = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = log.open("ab")
        stderr_target = log_file
    try:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=base_env,
            stdout=subprocess.PIPE,
            stderr=stderr_target,
            timeout=timeout,
            check=False,
        )
    finally:
        if log_file is not None:
            log_file.close()
    elapsed = time.perf_counter() - started
    lines = [line for line in proc.stdout.decode("utf-8", "replace").splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.decode("utf-8", "replace")[-3000:] if proc.stderr else f"see {log}"
        raise RuntimeError(f"bench worker {name} failed (exit {proc.returncode}): {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    result.setdefault("process_seconds", round(elapsed, 3))
    return result
