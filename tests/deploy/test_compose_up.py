"""docker-compose.yaml brought up for real, used through its REST API, and broken on purpose.

The test starts a Docker engine if none runs (and stops it afterwards), uses the official images when they
are present or can be pulled and otherwise the stand-ins of docker/build-standins.sh, runs `docker-compose
up` (v1, or `docker compose` v2) on the project's own compose file, and waits for every healthcheck. Then it
triggers `openai_batch` through the api-server against the `openai-emulator` service and, during the run:

- kills the Celery worker container (SIGKILL) right after the first batch is created, while the submit
  tasks are still inside their calls to the emulator (listing batches is slowed down by the emulator's
  latency fault), and starts it again: the lost tasks time out, are retried and re-attach;
- restarts the triggerer container while every batch wait is deferred to it.

The run must succeed with exactly one batch per shard at the emulator and results in input order on the
shared data folder. Everything is torn down afterwards: containers, networks and volumes.

A small override file (written next to the data folder) shortens two timings for the test: the scheduler's
task heartbeat timeout (how long a task on a killed worker stays `running`) and the emulator's
`--validating-seconds` (so the batch waits are still deferred after the retries).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import _unavailable
from tests.deploy.processes import ROOT, free_port, http_json, wait_until

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

DAG_ID = "openai_batch"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
OFFICIAL_IMAGES = {
    "AIRFLOW_IMAGE_NAME": "apache/airflow:3.3.2-python3.11",
    "POSTGRES_IMAGE_NAME": "postgres:16",
    "REDIS_IMAGE_NAME": "redis:7.2-bookworm",
}
PROJECT_IMAGE = "openai-batch-airflow:compose-test"
EMULATOR_KEY = "local-emulator-key"
HEARTBEAT_TIMEOUT = 45
VALIDATING_SECONDS = 150
LIST_LATENCY_MS = 20_000
MAX_PER_BATCH = 2
HEALTHY_TIMEOUT = 600
RUN_TIMEOUT = 900
# Two models interleaved: shards are cut per model, the results must still come back in this order.
REQUESTS = [
    ("gpt-4o-mini", "Name a colour."),
    ("gpt-4o", "Count to three."),
    ("gpt-4o-mini", "Name a fruit."),
    ("gpt-4o", "Spell cat."),
    ("gpt-4o-mini", "Name a city."),
    ("gpt-4o", "Say hello."),
    ("gpt-4o-mini", "Name a river."),
]
INPUT = [
    {
        "custom_id": f"req-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}]},
    }
    for n, (model, prompt) in enumerate(REQUESTS, 1)
]
SHARDS = sum(
    math.ceil(sum(m == model for m, _ in REQUESTS) / MAX_PER_BATCH) for model in {m for m, _ in REQUESTS}
)


# ---- the engine ---------------------------------------------------------------------------------------


def _engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Yield once a Docker engine answers; start containerd and dockerd for the test if none runs."""
    if shutil.which("docker") is None:
        _unavailable("no docker client on PATH")
    if _engine_answers():
        yield
        return
    daemons = [shutil.which("containerd"), shutil.which("dockerd")]
    if os.geteuid() != 0 or None in daemons:
        _unavailable(
            "no Docker engine runs, and containerd/dockerd cannot be started here (root and binaries)"
        )
    logs = tmp_path_factory.mktemp("engine")
    started: list[subprocess.Popen[bytes]] = []
    socket = Path("/run/containerd/containerd.sock")
    if not socket.exists():
        started.append(_daemon([str(daemons[0])], logs / "containerd.log"))
        wait_until("containerd's socket", socket.exists, timeout=60)
    started.append(_daemon([str(daemons[1]), f"--containerd={socket}"], logs / "dockerd.log"))
    try:
        wait_until("the Docker engine", _engine_answers, timeout=120, interval=2)
    except TimeoutError:
        _stop_daemons(started)
        _unavailable(f"dockerd did not start: {(logs / 'dockerd.log').read_text()[-2000:]}")
    try:
        yield
    finally:
        survivors = _stop_daemons(started)
        assert not survivors, f"engine processes still alive: {survivors}"


def _daemon(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_daemons(started: list[subprocess.Popen[bytes]]) -> list[int]:
    """Stop dockerd, then containerd (reverse start order); return the pids that would not die."""
    survivors = []
    for proc in reversed(started):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                survivors.append(proc.pid)
    return survivors


# ---- images and the compose project --------------------------------------------------------------------


def _image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def _images() -> dict[str, str]:
    """Return the image variables: the official images if present or pullable, else offline stand-ins."""
    choice = os.environ.get("OPENAI_BATCH_COMPOSE_IMAGES", "auto")
    if choice != "standin" and all(
        _image_present(image)
        or subprocess.run(["docker", "pull", "-q", image], capture_output=True, timeout=1800).returncode == 0
        for image in OFFICIAL_IMAGES.values()
    ):
        return dict(OFFICIAL_IMAGES)
    if choice == "official":
        pytest.fail(f"OPENAI_BATCH_COMPOSE_IMAGES=official but {OFFICIAL_IMAGES} cannot be pulled")
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / "docker" / "build-standins.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    images = dict(line.split("=", 1) for line in built.stdout.split())
    assert set(images) == set(OFFICIAL_IMAGES), built.stdout
    print(f"\nstand-in images ({time.monotonic() - started:.0f}s): {images}")
    return images


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    _unavailable("neither docker-compose (v1) nor the docker compose plugin (v2) is installed")
    raise AssertionError("unreachable")


class Compose:
    """One compose project of docker-compose.yaml plus the test's override, with its own env."""

    def __init__(self, project: str, env: dict[str, str], override: Path) -> None:
        self.project = project
        self.env = env
        self.base = [*_compose_command(), "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        done = subprocess.run(
            [*self.base, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).strip()

    def states(self) -> dict[str, dict[str, Any]]:
        """Return each service's container state (``Status``, ``ExitCode``, ``Health``)."""
        ids = self.run("ps", "-a", "-q").split()
        if not ids:
            return {}
        inspected = json.loads(
            subprocess.run(["docker", "inspect", *ids], capture_output=True, check=True).stdout
        )
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c["State"] for c in inspected}

    def volumes(self) -> set[str]:
        """Return every volume the project's containers mount, named or anonymous (those carry no label)."""
        ids = self.run("ps", "-a", "-q", check=False).split()
        if not ids:
            return set()
        inspected = json.loads(
            subprocess.run(["docker", "inspect", *ids], capture_output=True).stdout or b"[]"
        )
        return {m["Name"] for c in inspected for m in c["Mounts"] if m["Type"] == "volume"}

    def leftovers(self, volumes: set[str]) -> dict[str, list[str]]:
        """Return what is left: containers and networks by project label, and ``volumes`` still there."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind in ("container", "network", "volume"):
            listing = ["docker", kind, "ls", "-q", "--filter", label]
            if kind == "container":
                listing.insert(3, "-a")
            found[kind] = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
        existing = subprocess.run(
            ["docker", "volume", "ls", "-q"], capture_output=True, text=True, check=True
        )
        found["volume"] = sorted(set(found["volume"]) | (volumes & set(existing.stdout.split())))
        return found


def _all_healthy(compose: Compose) -> dict[str, dict[str, Any]] | None:
    states = compose.states()
    services = set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    if set(states) != services:
        return None
    for name, state in states.items():
        if name == "airflow-init":
            if state["Status"] != "exited":
                return None
            assert state["ExitCode"] == 0, compose.run("logs", "--tail", "100", name)
        elif state["Status"] != "running" or state.get("Health", {}).get("Status") != "healthy":
            return None
    return states


# ---- the Airflow REST API and the emulator --------------------------------------------------------------


class Api:
    """The api-server's REST API with a SimpleAuthManager token."""

    def __init__(self, port: int) -> None:
        self.root = f"http://127.0.0.1:{port}"
        self.token = ""

    def login(self) -> bool:
        answer = http_json(f"{self.root}/auth/token", "POST", {"username": "airflow", "password": "airflow"})
        self.token = answer["access_token"]
        return True

    def __call__(self, path: str, method: str = "GET", payload: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.root}/api/v2{path}",
            data=json.dumps(payload).encode() if payload is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local URL
            return json.loads(response.read() or b"null")

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        tis: list[dict[str, Any]] = self(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")[
            "task_instances"
        ]
        return tis

    def states(self, run_id: str) -> dict[str, tuple[str, int]]:
        return {
            f"{ti['task_id']}[{ti['map_index']}]": (ti["state"], ti["try_number"])
            for ti in self.task_instances(run_id)
        }


def _override(path: Path) -> Path:
    emulator = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["openai-emulator"]
    override = {
        "services": {
            "airflow-scheduler": {
                "environment": {"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)}
            },
            "openai-emulator": {
                "command": [*emulator["command"], "--validating-seconds", str(VALIDATING_SECONDS)]
            },
        }
    }
    path.write_text(yaml.safe_dump(override))
    return path


# ---- the file, without an engine ---------------------------------------------------------------------


def test_every_image_is_official_by_default_and_overridable() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    defaulted = re.compile(r"^\$\{(\w+):-([^}]+)\}$")
    images = {name: defaulted.match(str(service["image"])) for name, service in services.items()}
    assert all(images.values()), images
    variables = {name: (m.group(1), m.group(2)) for name, m in images.items() if m}
    assert variables["postgres"] == ("POSTGRES_IMAGE_NAME", OFFICIAL_IMAGES["POSTGRES_IMAGE_NAME"])
    assert variables["redis"] == ("REDIS_IMAGE_NAME", OFFICIAL_IMAGES["REDIS_IMAGE_NAME"])
    assert variables["openai-emulator"][0] == "OPENAI_EMULATOR_IMAGE_NAME"
    for name in set(services) - {"postgres", "redis", "openai-emulator"}:
        assert variables[name][0] == "OPENAI_BATCH_IMAGE_NAME", name
    # The project image builds on AIRFLOW_IMAGE_NAME, whose default is the Dockerfile's own.
    arg = services["airflow-scheduler"]["build"]["args"]["AIRFLOW_IMAGE_NAME"]
    assert defaulted.match(arg).groups() == ("AIRFLOW_IMAGE_NAME", OFFICIAL_IMAGES["AIRFLOW_IMAGE_NAME"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_IMAGE_NAME={OFFICIAL_IMAGES['AIRFLOW_IMAGE_NAME']}" in dockerfile
    assert "FROM ${AIRFLOW_IMAGE_NAME}" in dockerfile


# ---- the test --------------------------------------------------------------------------------------------


@pytest.mark.timeout(3000)
def test_compose_up_survives_worker_kill_and_triggerer_restart(docker_engine: None, tmp_path: Path) -> None:
    started = time.monotonic()
    images = _images()
    # As the README has a user do it: the containers run as that user's uid (AIRFLOW_UID), who then
    # copies a file into the inbox and deletes results, without root. The folders' parent must be
    # reachable by that uid (pytest's tmp_path is not).
    base = Path(tempfile.mkdtemp(prefix="openai-batch-compose-"))
    base.chmod(0o755)
    data, logs = base / "data", base / "logs"
    data.mkdir()
    logs.mkdir()
    api_port, emulator_port = free_port(), free_port()
    env = {
        key: value for key, value in os.environ.items() if key not in {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
    }
    env.update(
        images,
        OPENAI_BATCH_IMAGE_NAME=PROJECT_IMAGE,
        OPENAI_EMULATOR_IMAGE_NAME=PROJECT_IMAGE,
        OPENAI_BATCH_DATA_DIR=str(data),
        OPENAI_BATCH_LOGS_DIR=str(logs),
        OPENAI_BATCH_UI_PORT=str(api_port),
        OPENAI_BATCH_EMULATOR_PORT=str(emulator_port),
        AIRFLOW_JWT_SECRET=uuid.uuid4().hex,
        AIRFLOW_UID=str(USER_UID),
    )
    compose = Compose(f"openaibatch{uuid.uuid4().hex[:8]}", env, _override(tmp_path / "compose.test.yaml"))
    emulator = f"http://127.0.0.1:{emulator_port}"
    try:
        compose.run("build", timeout=1800)
        built = time.monotonic()
        compose.run("up", "-d", timeout=900)
        wait_until(
            "every service healthy", lambda: _all_healthy(compose), timeout=HEALTHY_TIMEOUT, interval=5
        )
        healthy = time.monotonic()
        print(f"\ndocker-compose ps at the healthy point:\n{compose.run('ps')}")

        api = Api(api_port)
        wait_until("a login token", api.login, timeout=60)
        wait_until("the DAG to be parsed", lambda: api(f"/dags/{DAG_ID}"), timeout=180, interval=2)
        # This test triggers its own run and kills a worker and the triggerer at chosen points of it;
        # a second run started by the inbox watcher for the same file would blur those points.
        api("/variables", "POST", {"key": "openai_batch_watch_inbox", "value": "false"})
        assert api(f"/dags/{DAG_ID}", "PATCH", {"is_paused": False})["is_paused"] is False
        mine = base / "compose.jsonl"
        mine.write_text("".join(json.dumps(line) + "\n" for line in INPUT))
        mine.chmod(0o644)
        as_user(USER_UID, "cp", str(mine), str(data / "inbox" / "compose.jsonl"))  # cp as the README says
        # Listing batches (before and right after a create) takes 20 s: the submit tasks are mid-call then.
        http_json(
            f"{emulator}/_emulator/faults",
            "PUT",
            {"latency_ms": LIST_LATENCY_MS, "latency_routes": ["GET /v1/batches"]},
        )
        run = api(
            f"/dags/{DAG_ID}/dagRuns",
            "POST",
            {
                "logical_date": None,
                "conf": {
                    "input": "compose.jsonl",
                    "poll_interval": 1,
                    "settle_seconds": 0,
                    "max_requests_per_batch": MAX_PER_BATCH,
                },
            },
        )
        run_id = run["dag_run_id"]

        kill = _kill_worker_after_first_create(compose, api, run_id, emulator)
        restart = _restart_triggerer_while_deferred(compose, api, run_id)
        finished = wait_until(
            "the run to finish",
            lambda: (lambda r: r if r["state"] in {"success", "failed"} else None)(
                api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
            ),
            timeout=RUN_TIMEOUT,
            interval=3,
        )
        ran = time.monotonic()
        states = api.states(run_id)
        print(f"\ntask instances (state, try): {states}")
        assert finished["state"] == "success", states
        _assert_recovered(api, run_id, kill, restart)
        _assert_one_batch_per_shard(emulator, _assert_results(data / "results"))
        # The user owns what the stack wrote: the results can be deleted without root.
        as_user(USER_UID, "rm", "-r", str(data / "results" / "compose"))
        assert not (data / "results" / "compose").exists()
        print(
            f"\ntimings: images+build {built - started:.0f}s, up to healthy {healthy - built:.0f}s, "
            f"run {ran - healthy:.0f}s"
        )
    except BaseException:
        print(compose.run("ps", check=False))
        print(compose.run("logs", "--no-color", "--tail", "60", check=False, timeout=120)[-30000:])
        raise
    finally:
        volumes = compose.volumes()
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False, timeout=300)
        shutil.rmtree(base, ignore_errors=True)
    assert volumes, "no volume was mounted: the project did not run"
    leftovers = compose.leftovers(volumes)
    assert leftovers == {"container": [], "network": [], "volume": []}, leftovers
    print(f"total {time.monotonic() - started:.0f}s")


#: The uid the stack runs as and the user acts as: neither root nor the image's own 50000.
USER_UID = 4242


def as_user(uid: int, *argv: str) -> None:
    """Run ``argv`` as ``uid`` (and gid ``uid``, no other group), as a user without root would."""
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _kill_worker_after_first_create(compose: Compose, api: Api, run_id: str, emulator: str) -> dict[str, Any]:
    """SIGKILL the worker container once a batch exists and submits still run; start it again."""

    def first_create() -> dict[str, Any] | None:
        created = http_json(f"{emulator}/_emulator/stats").get("batches_created", 0)
        running = [
            k
            for k, (state, _) in api.states(run_id).items()
            if k.startswith("submit[") and state == "running"
        ]
        return {"batches_created": created, "running_submits": running} if created and running else None

    moment = wait_until("a batch to be created while submits run", first_create, timeout=600, interval=0.5)
    worker = compose.container("airflow-worker")
    compose.run("kill", "-s", "SIGKILL", "airflow-worker")
    killed = wait_until(
        "the worker container to be down",
        lambda: (lambda s: s if s["Status"] != "running" else None)(compose.states()["airflow-worker"]),
        timeout=60,
        interval=0.5,
    )
    print(f"\nworker killed at {moment} (state {killed['Status']}, exit {killed['ExitCode']})")
    # Nothing else is slowed down from here: the retries find the emulator at full speed.
    http_json(f"{emulator}/_emulator/faults", "DELETE")
    compose.run("start", "airflow-worker")
    assert compose.container("airflow-worker") == worker
    return moment


def _restart_triggerer_while_deferred(compose: Compose, api: Api, run_id: str) -> dict[str, Any]:
    """Restart the triggerer container while every batch wait is deferred to it."""

    def all_deferred() -> list[str] | None:
        waits = {k: s for k, (s, _) in api.states(run_id).items() if k.startswith("wait_for_batch[")}
        return sorted(waits) if len(waits) == SHARDS and set(waits.values()) == {"deferred"} else None

    deferred = wait_until(
        "every batch wait to be deferred", all_deferred, timeout=HEARTBEAT_TIMEOUT + 300, interval=1
    )
    jobs_before = {job["id"] for job in api("/jobs?job_type=TriggererJob")["jobs"]}
    compose.run("restart", "-t", "20", "airflow-triggerer")
    print(f"\ntriggerer restarted while {deferred} were deferred")
    return {"deferred": deferred, "jobs_before": jobs_before}


def _assert_recovered(api: Api, run_id: str, kill: dict[str, Any], restart: dict[str, Any]) -> None:
    tis = api.task_instances(run_id)
    assert all(ti["state"] == "success" for ti in tis), api.states(run_id)
    submits = {ti["map_index"]: ti["try_number"] for ti in tis if ti["task_id"] == "submit"}
    assert len(submits) == SHARDS
    # Every submit that ran on the killed worker was retried (and re-attached or created, once).
    for key in kill["running_submits"]:
        index = int(key.split("[")[1].rstrip("]"))
        assert submits[index] >= 2, (key, submits)
    waits = [ti for ti in tis if ti["task_id"] == "wait_for_batch"]
    assert len(waits) == SHARDS
    assert all(ti["try_number"] == 1 for ti in waits), api.states(run_id)
    # A new triggerer took over the deferred waits after the restart.
    jobs_after = {job["id"] for job in api("/jobs?job_type=TriggererJob")["jobs"]}
    assert jobs_after - restart["jobs_before"], (jobs_after, restart["jobs_before"])


def _assert_results(results: Path) -> set[str]:
    found = [p for p in results.rglob("results.jsonl") if "_state" not in p.parts]
    assert len(found) == 1, found
    out = found[0].parent
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["input"]).name == "compose.jsonl", manifest["input"]
    lines = [json.loads(line) for line in found[0].read_text().splitlines()]
    assert [r["custom_id"] for r in lines] == [line["custom_id"] for line in INPUT]
    for result, request in zip(lines, INPUT, strict=True):
        assert result["status"] == "succeeded", result
        prompt = request["body"]["messages"][-1]["content"]
        assert result["response"]["choices"][0]["message"]["content"] == f"Echo: {prompt}", result
    assert manifest["counts"]["total"] == len(INPUT)
    assert manifest["counts"]["succeeded"] == len(INPUT)
    ids = {b.get("batch_id") or b.get("id") for b in manifest["batches"]}
    assert len(ids) == SHARDS, manifest["batches"]
    return ids


def _assert_one_batch_per_shard(emulator: str, manifest_ids: set[str]) -> None:
    import openai

    stats = http_json(f"{emulator}/_emulator/stats")
    print(f"\nemulator stats: {json.dumps(stats, sort_keys=True)}")
    batches = list(openai.OpenAI(base_url=f"{emulator}/v1", api_key=EMULATOR_KEY).batches.list(limit=100))
    assert stats["batches_created"] == SHARDS, stats
    assert stats.get("batches_cancelled", 0) == 0, stats
    assert len(batches) == SHARDS
    assert {b.id for b in batches} == manifest_ids
    assert {b.status for b in batches} == {"completed"}
    identities = [json.dumps(b.metadata, sort_keys=True) for b in batches]
    assert len(set(identities)) == SHARDS, identities
