"""Fixtures for the deployment tests: a fresh Postgres database and a claimed Redis database.

Unreachable services skip the tests, unless OPENAI_BATCH_REQUIRE_SERVICES=1 (as in CI): then they fail.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

PG_HOST = os.environ.get("OPENAI_BATCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OPENAI_BATCH_PG_PORT", "5432"))
PG_USER = os.environ.get("OPENAI_BATCH_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("OPENAI_BATCH_PG_ADMIN_DB", "test")
REDIS_HOST = os.environ.get("OPENAI_BATCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("OPENAI_BATCH_REDIS_PORT", "6379"))
REDIS_DBS = (5, *range(6, 16), *range(1, 5))
REDIS_CLAIM_KEY = "openai_batch_deploy_test_claim"


def _unavailable(reason: str) -> None:
    if os.environ.get("OPENAI_BATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (OPENAI_BATCH_REQUIRE_SERVICES=1, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Create a fresh metadata database, yield its libpq URL, drop it afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, connect_timeout=5
        )
    except psycopg2.OperationalError as exc:
        _unavailable(f"Postgres is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DB}: {exc}")
    admin.autocommit = True
    name = f"openai_batch_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Claim an empty Redis database as the Celery broker, yield its URL, flush it afterwards."""
    import redis

    token = uuid.uuid4().hex
    for db in REDIS_DBS:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=5)
        try:
            if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600):
                break
        except redis.ConnectionError as exc:
            _unavailable(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
        client.close()
    else:
        pytest.fail(f"No empty Redis database among {REDIS_DBS} on {REDIS_HOST}:{REDIS_PORT}")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """When a test on the shared standalone stack fails, report what the stack did and keep its folder."""
    report: pytest.TestReport = yield
    if report.failed and "standalone" in getattr(item, "fixturenames", ()):
        from tests.deploy.standalone import running_stack

        stack = running_stack()
        if stack is not None:
            stack.failed = True
            report.sections.append(("standalone stack", stack.diagnose()))
    return report
