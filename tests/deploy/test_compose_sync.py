"""docker-compose.yaml and the distributed test describe one deployment: a change to one alone fails here."""

from __future__ import annotations

import json
import re
import shlex
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from scripts.run_local import WEBHOOK_ROUTE
from tests.deploy.processes import (
    EMULATOR_MODULE,
    EMULATOR_SERVICE,
    INIT_COMMAND,
    LOCAL_ONLY_KEYS,
    ROOT,
    SERVICE_COMMANDS,
    airflow_commands,
    command_name,
    distributed_env,
    emulator_command,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.deploy

API_PORT = 18080
EMULATOR_URL = "http://127.0.0.1:18800/v1"
EXPECTED_SERVICES = {
    "postgres",
    "redis",
    EMULATOR_SERVICE,
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    return {key: resolve(value) for key, value in compose["x-airflow-common"]["environment"].items()}


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    return distributed_env(
        home=tmp_path / "airflow",
        database_url="postgresql://postgres@127.0.0.1:5432/openai_batch_x",
        broker_url="redis://127.0.0.1:6379/5",
        api_port=API_PORT,
        emulator_base_url=EMULATOR_URL,
        inbox=tmp_path / "inbox",
        results=tmp_path / "results",
    )


def resolve(value: Any) -> str:
    """Return a compose value as a container sees it without a .env: ``${VAR:-default}`` -> default."""
    return _DEFAULTED.sub(lambda m: m.group(2), str(value))


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def container_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    return int(str(mapping).rsplit(":", 1)[1])


def airflow_services(compose: dict[str, Any]) -> set[str]:
    """Services running a long-lived ``airflow <command>``: not the init job, the emulator or the stores."""
    return {
        name
        for name, service in compose["services"].items()
        if "command" in service and "entrypoint" not in service and name != "airflow-init"
    }


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_local_processes_match_compose_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert airflow_services(compose) == set(SERVICE_COMMANDS)
    started = airflow_commands(API_PORT)
    assert set(started) == set(SERVICE_COMMANDS)
    for name, argv in started.items():
        compose_command = command_name(["airflow", *words(services[name]["command"])])
        assert compose_command == command_name(argv) == SERVICE_COMMANDS[name], name
    # The init job migrates the database, as the local run does before starting anything.
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert "airflow version" in words(services["airflow-init"]["command"])[-1]
    assert INIT_COMMAND[1:] == ["db", "migrate"]


def test_emulator_runs_the_same_module(compose: dict[str, Any], tmp_path: Path) -> None:
    service = compose["services"][EMULATOR_SERVICE]
    compose_argv = [*words(service["entrypoint"]), *words(service["command"])]
    local_argv = emulator_command(18800, tmp_path, webhook_url=f"http://127.0.0.1:{API_PORT}{WEBHOOK_ROUTE}")
    # Both post their webhooks to the api-server's receiver, on its own port.
    compose_hook, local_hook = (
        urlsplit(flag(compose_argv, "--webhook-urls")),
        urlsplit(flag(local_argv, "--webhook-urls")),
    )
    assert compose_hook.path == local_hook.path == WEBHOOK_ROUTE
    assert (compose_hook.hostname, compose_hook.port) == ("airflow-apiserver", 8080)
    assert compose_argv[1:3] == local_argv[1:3] == ["-m", EMULATOR_MODULE]
    for name in ("--host", "--port", "--data-dir"):
        assert name in compose_argv, name
        assert name in local_argv, name
    assert int(flag(compose_argv, "--port")) == container_port(service)


def test_every_airflow_component_shares_the_common_env(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    for name, service in compose["services"].items():
        if name in {"postgres", "redis", EMULATOR_SERVICE}:
            continue
        env = {key: resolve(value) for key, value in service["environment"].items()}
        for key, value in common_env.items():
            assert env.get(key) == value, f"{name}: {key}"


def test_common_env_is_a_celery_deployment(compose: dict[str, Any], common_env: dict[str, str]) -> None:
    env = common_env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"]
    apiserver = compose["services"]["airflow-apiserver"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        f"http://airflow-apiserver:{container_port(apiserver)}/execution/"
    )
    openai = json.loads(env["AIRFLOW_CONN_OPENAI_DEFAULT"])
    emulator = compose["services"][EMULATOR_SERVICE]
    assert openai["conn_type"] == "openai"
    assert openai["password"]
    assert openai["host"] == f"http://{EMULATOR_SERVICE}:{container_port(emulator)}/v1"
    assert json.loads(env["AIRFLOW_CONN_FS_DEFAULT"]) == {"conn_type": "fs", "extra": {"path": "/"}}
    assert env["AIRFLOW_VAR_OPENAI_BATCH_INBOX"].startswith("/")
    assert env["AIRFLOW_VAR_OPENAI_BATCH_RESULTS"].startswith("/")


def _airflow_keys(env: dict[str, str]) -> set[str]:
    return {key for key in env if key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}


def test_local_env_sets_the_same_keys(common_env: dict[str, str], local_env: dict[str, str]) -> None:
    assert _airflow_keys(local_env) - LOCAL_ONLY_KEYS == _airflow_keys(common_env)
    assert not LOCAL_ONLY_KEYS & _airflow_keys(common_env)


# How a value may differ between the containers and the local processes: equal, or of the same kind.
_SAME = "same"
_KINDS: dict[str, str] = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "scheme",
    "AIRFLOW__CELERY__RESULT_BACKEND": "scheme",
    "AIRFLOW__CELERY__BROKER_URL": "scheme",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "url",
    "AIRFLOW__API_AUTH__JWT_SECRET": "secret",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "path",
    "AIRFLOW__CORE__DAGS_FOLDER": "path",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "path",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "path",
    "AIRFLOW_VAR_OPENAI_BATCH_INBOX": "path",
    "AIRFLOW_VAR_OPENAI_BATCH_RESULTS": "path",
    "AIRFLOW_CONN_OPENAI_DEFAULT": "connection",
    "AIRFLOW__CORE__FERNET_KEY_CMD": "command",
}


def _same_kind(kind: str, compose_value: str, local_value: str) -> bool:
    if kind == "scheme":
        return urlsplit(compose_value).scheme == urlsplit(local_value).scheme
    if kind == "url":
        ours, theirs = urlsplit(local_value), urlsplit(compose_value)
        return (ours.scheme, ours.path) == (theirs.scheme, theirs.path)
    if kind == "secret":
        return bool(compose_value) and bool(local_value)
    if kind == "path":
        return compose_value.startswith("/") and local_value.startswith("/")
    if kind == "command":  # the same program on a file of each deployment
        ours, theirs = shlex.split(local_value), shlex.split(compose_value)
        return ours[0] == theirs[0] and ours[-1].startswith("/") and theirs[-1].startswith("/")
    if kind == "connection":
        ours, theirs = json.loads(local_value), json.loads(compose_value)
        return set(ours) == set(theirs) and ours["conn_type"] == theirs["conn_type"]
    return compose_value.lower() == local_value.lower()


def test_local_env_values_match_compose(common_env: dict[str, str], local_env: dict[str, str]) -> None:
    for key in sorted(_airflow_keys(common_env)):
        kind = _KINDS.get(key, _SAME)
        assert _same_kind(kind, common_env[key], local_env[key]), (key, common_env[key], local_env[key])
    assert local_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{API_PORT}/execution/"
    assert json.loads(local_env["AIRFLOW_CONN_OPENAI_DEFAULT"])["host"] == EMULATOR_URL
    apiserver = airflow_commands(API_PORT)["airflow-apiserver"]
    assert int(flag(apiserver, "--port")) == API_PORT


@pytest.mark.parametrize(
    ("key", "url", "refused"),
    [("sk-real", "", True), ("sk-real", "https://api.openai.com/v1", False), ("", "", False)],
)
def test_init_refuses_a_real_key_aimed_at_the_emulator(
    compose: dict[str, Any], tmp_path: Path, key: str, url: str, refused: bool
) -> None:
    """airflow-init stops the stack when OPENAI_API_KEY is set without OPENAI_BASE_URL."""
    import subprocess

    init = compose["services"]["airflow-init"]
    script = words(init["command"])[-1].replace("$$", "$")
    check = script[: script.index("\nfi\n") + 4]  # the first block of the script: the key check
    env = dict(init["environment"])
    assert env["OPENAI_BATCH_KEY_GIVEN"] == "${OPENAI_API_KEY:-}"
    assert env["OPENAI_BATCH_URL_GIVEN"] == "${OPENAI_BASE_URL:-}"
    done = subprocess.run(
        ["bash", "-c", check],
        env={"PATH": "/usr/bin:/bin", "OPENAI_BATCH_KEY_GIVEN": key, "OPENAI_BATCH_URL_GIVEN": url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode != 0) == refused, done
    assert ("OPENAI_BASE_URL is not" in done.stderr) == refused
    assert "sk-real" not in done.stderr  # the message never shows the key


def test_the_fernet_key_is_generated_once_and_is_a_valid_key(compose: dict[str, Any], tmp_path: Path) -> None:
    import subprocess

    from cryptography.fernet import Fernet

    script = words(compose["services"]["airflow-init"]["command"])[-1].replace("$$", "$")
    (line,) = [x for x in script.splitlines() if "urandom" in x and "fernet" in x]
    assert "fernet=/opt/airflow/data/fernet.key" in script
    generate = f"fernet={tmp_path / 'fernet.key'}\n{line}"
    subprocess.run(["bash", "-c", generate], check=True)
    first = (tmp_path / "fernet.key").read_text().strip()
    Fernet(first.encode())  # raises when it is not a key
    assert (tmp_path / "fernet.key").stat().st_mode & 0o077 == 0  # readable by its owner only
    subprocess.run(["bash", "-c", generate], check=True)
    assert (tmp_path / "fernet.key").read_text().strip() == first  # kept: the database stays readable
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__FERNET_KEY_CMD"] == (
        "cat /opt/airflow/data/fernet.key"
    )


def test_the_webhook_secret_is_generated_once_and_signs_what_the_sdk_verifies(
    compose: dict[str, Any], tmp_path: Path, local_env: dict[str, str]
) -> None:
    import subprocess
    import time

    import openai

    from openai_emulator.webhooks import delivery_headers

    script = words(compose["services"]["airflow-init"]["command"])[-1].replace("$$", "$")
    (line,) = [x for x in script.splitlines() if "urandom" in x and "webhook" in x]
    assert "webhook=/opt/airflow/data/webhook-secret" in script
    generate = f"webhook={tmp_path / 'webhook-secret'}\n{line}"
    subprocess.run(["bash", "-c", generate], check=True)
    first = (tmp_path / "webhook-secret").read_text().strip()
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o077 == 0  # readable by its owner only
    subprocess.run(["bash", "-c", generate], check=True)
    assert (tmp_path / "webhook-secret").read_text().strip() == first  # kept across restarts
    body = '{"type": "batch.completed"}'
    headers = delivery_headers(first, "wh_1", int(time.time()), body)
    openai.OpenAI(api_key="x").webhooks.verify_signature(body, headers, secret=first)
    common = compose["x-airflow-common"]["environment"]
    assert common["OPENAI_WEBHOOK_SECRET_FILE"] == "/opt/airflow/data/webhook-secret"
    assert local_env["OPENAI_WEBHOOK_SECRET_FILE"].endswith("/webhook-secret")
