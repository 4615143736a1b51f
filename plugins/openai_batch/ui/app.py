"""The results view's FastAPI app, mounted by the Airflow API server under ``/openai-batch``.

Every route requires what the Airflow UI requires to see a DAG's runs: a signed-in user (the UI's
session cookie or a bearer token) whom the configured auth manager allows to read that DAG's runs.
One route is the exception: ``POST /webhooks/openai``, OpenAI's webhook deliveries, whose signature
is their authentication and which can only record that a batch ended.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep  # noqa: TC002 - FastAPI reads it at runtime
from airflow.api_fastapi.core_api.security import (  # noqa: TC002 - FastAPI reads GetUserDep at runtime
    GetUserDep,
    requires_access_dag,
)
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from openai_batch import settings
from openai_batch.layout import SERVED_FILES
from openai_batch.ui.view import (
    CONTENT_SECURITY_POLICY,
    CapacityView,
    capacity_view,
    file_view,
    local_folder,
    open_served,
    render_capacity,
    render_file,
    render_page,
)
from openai_batch.webhooks import MAX_BODY_BYTES, EventStore, receive, webhooks_folder

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PREFIX = "/openai-batch"
PREPARE_TASK = "prepare"
WRITE_TASK = "write_results"
REFRESH_SECONDS = 10

READ_RUNS = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))]

#: The DAG whose readers may see the deployment's capacity section (its shards' names and sizes).
CAPACITY_DAG = "openai_batch"
CHUNK_BYTES = 1 << 20

app = FastAPI(title="OpenAI Batch results", docs_url=None, redoc_url=None, openapi_url=None)


@app.middleware("http")
async def nosniff(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Send ``X-Content-Type-Options: nosniff`` with every response, errors included."""
    response = await call_next(request)
    # Results and rejects hold text the API or the input wrote: never let a browser guess HTML.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def html_page(page: str) -> HTMLResponse:
    """Return an HTML page with the strict Content-Security-Policy of :mod:`openai_batch.ui.view`."""
    return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


def may_see_capacity(user: BaseUser, auth_manager: BaseAuthManager[Any] | None = None) -> bool:
    """
    Return whether ``user`` may read the ``openai_batch`` DAG, and so see the deployment's capacity.

    The capacity section lists every waiting shard of every run (file names, sizes), so readers
    of other DAGs, who may open these pages for their own DAG ids, do not get it.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    manager = auth_manager or get_auth_manager()
    team_name = DagModel.get_team_name(CAPACITY_DAG) if auth_manager is None else None
    return bool(
        manager.is_authorized_dag(
            method="GET", details=DagDetails(id=CAPACITY_DAG, team_name=team_name), user=user
        )
    )


def capacity_section(user: BaseUser, view: CapacityView | None = None) -> str:
    """Return the capacity section (``view``, else read now) for a user who may see it, else nothing."""
    return render_capacity(view or capacity()) if may_see_capacity(user) else ""


def _variable(key: str) -> str | None:
    """Return an Airflow Variable's value, or None when it is not set."""
    from airflow.models.variable import Variable

    found = Variable.get(key, default_var=None)
    return None if found is None else str(found)


def results_root() -> Path:
    """Return the results root the pipeline writes to (the same Variable the DAG reads)."""
    return Path(settings.value(settings.RESULTS, _variable))


def capacity() -> CapacityView:
    """Return the deployment's capacity from the ledger the DAG uses (same Variables, same default)."""
    import time

    from openai_batch.budget import ledger_for, parse_limits, read_ledger

    folder = settings.ledger_folder(_variable)
    try:
        limits = parse_limits(_variable(settings.TOKEN_LIMITS.variable))
        note = None
    except ValueError as err:
        limits, note = {}, f"The Variable {settings.TOKEN_LIMITS.variable} cannot be read: {err}"
    ledger = ledger_for(folder)
    if ledger is None:
        return CapacityView(note=f"No local ledger folder ({folder}): no admission control.")
    view = capacity_view(read_ledger(ledger.folder), limits, time.time())
    view.note = note
    return view


#: Seconds a webhook secret read from the connection is reused before it is read again.
SECRET_CACHE_SECONDS = 30.0
_secret_cache: tuple[float, str | None] = (0.0, None)


def webhook_secret() -> str | None:
    """
    Return the secret that verifies OpenAI's webhooks, or None when none is configured.

    From the extra ``webhook_secret`` of the connection the Variable ``openai_batch_webhook_conn_id``
    names (``openai_default``), else the ``OPENAI_WEBHOOK_SECRET`` environment variable (the SDK's
    own name), else the file ``OPENAI_WEBHOOK_SECRET_FILE`` names; surrounding whitespace (a pasted
    newline) is dropped. Read at most every 30 s.
    """
    import time

    global _secret_cache
    read_at, secret = _secret_cache
    if time.monotonic() - read_at < SECRET_CACHE_SECONDS and read_at:
        return secret
    secret = None
    conn_id = settings.value(settings.WEBHOOK_CONN, _variable)
    try:
        from airflow.models.connection import Connection

        extra = Connection.get_connection_from_secrets(conn_id).extra_dejson
        found = extra.get("webhook_secret") if isinstance(extra, dict) else None
        secret = str(found).strip() if found else None
    except Exception:  # noqa: BLE001 - no such connection: the environment may still have one
        secret = None
    secret = secret or os.environ.get("OPENAI_WEBHOOK_SECRET", "").strip() or _secret_file() or None
    _secret_cache = (time.monotonic(), secret)
    return secret


def _secret_file() -> str | None:
    """Return the secret in the file ``OPENAI_WEBHOOK_SECRET_FILE`` names (compose generates one), or None."""
    path = os.environ.get("OPENAI_WEBHOOK_SECRET_FILE", "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as err:
        log.warning("Cannot read the webhook secret file %s: %s", path, err)
        return None


def event_store() -> EventStore | None:
    """Return where batch ends are recorded (the ledger folder the DAG uses), or None if it is not local."""
    folder = webhooks_folder(settings.ledger_folder(_variable))
    return None if folder is None else EventStore(folder)


_store_cache: tuple[float, EventStore | None] = (0.0, None)


def _receiver_config() -> tuple[str | None, EventStore | None]:
    """
    Return the secret and the event store, each read at most every ``SECRET_CACHE_SECONDS``.

    The route needs no login: a flood of unsigned requests must not cost a database read each.
    """
    import time

    global _store_cache
    read_at, store = _store_cache
    if not read_at or time.monotonic() - read_at >= SECRET_CACHE_SECONDS:
        store = event_store()
        _store_cache = (time.monotonic(), store)
    return webhook_secret(), store


async def _body_up_to(request: Request, limit: int) -> bytes:
    """Return the request body, or its first ``limit + 1`` bytes when it is longer (never more)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"\0" * (limit + 1)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


@app.post("/webhooks/openai", include_in_schema=False)
async def openai_webhook(request: Request) -> JSONResponse:
    """
    Receive one of OpenAI's batch webhooks: no Airflow login, the signature is the authentication.

    Verified by the SDK (:func:`openai_batch.webhooks.receive`); a batch's end is recorded for the
    waiting triggers and answered 200 at once. Anything else is refused, counted and logged
    without its content. This route reads nothing and changes nothing else.
    """
    from starlette.concurrency import run_in_threadpool

    body = await _body_up_to(request, MAX_BODY_BYTES)
    headers = {k.lower(): v for k, v in request.headers.items()}
    secret, store = await run_in_threadpool(_receiver_config)
    verdict = await run_in_threadpool(receive, store, body, headers, secret)
    if store is not None:
        try:
            await run_in_threadpool(store.count, verdict.outcome)
        except OSError as err:
            log.warning("Could not count a webhook delivery (%s): %s", verdict.outcome, err)
    if verdict.status >= 300:
        log.warning("Refused a webhook delivery: %s (HTTP %s)", verdict.outcome, verdict.status)
    else:
        log.info("Webhook delivery %s: %s", verdict.outcome, verdict.batch_id or "not a batch's end")
    return JSONResponse(verdict.body, status_code=verdict.status)


@app.get("/webhooks/openai/counts")
def webhook_counts(user: GetUserDep) -> JSONResponse:
    """Return the deliveries counted by outcome (signed-in readers of the pipeline's runs only)."""
    if not may_see_capacity(user):
        raise HTTPException(status_code=403, detail="Not allowed to read the openai_batch DAG's runs")
    store = event_store()
    counts = store.counts() if store is not None else {}
    return JSONResponse({"counts": counts, "configured": store is not None})


def run_plans(session: Session, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """
    Return the plans of the run's files, in map index order: a pack's task gives each of its files.

    A packed file shows its pack content's shards: its requests are in those batches.
    """
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.scalars(
        select(XComModel)
        .where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == PREPARE_TASK,
            XComModel.key == "return_value",
        )
        .order_by(XComModel.map_index)
    ).all()
    out: list[dict[str, Any]] = []
    for value in (XComModel.deserialize_value(row) for row in rows):
        if not isinstance(value, dict):
            continue
        members = value.get("members")
        if not isinstance(members, list):
            out.append(value)
            continue
        units = {u.get("state_dir"): u for u in value.get("units") or [] if isinstance(u, dict)}
        for member in members:
            if isinstance(member, dict):
                unit = units.get(member.get("packed_in"))
                out.append({**member, "shards": unit.get("shards") or []} if unit else member)
    return out


def run_state(session: Session, dag_id: str, run_id: str) -> str | None:
    """Return the run's state, or None when there is no such run."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    return None if state is None else str(state)


@app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=READ_RUNS)
def run_page(dag_id: str, run_id: str, session: SessionDep, user: GetUserDep) -> HTMLResponse:
    """Show every file of one run: counts, tokens, cost, batches with live progress, rejects, links."""
    state = run_state(session, dag_id, run_id)
    if state is None:
        raise HTTPException(404, "no such run")
    root = results_root()
    plans = run_plans(session, dag_id, run_id)
    held = capacity()  # which shard rounds wait for capacity: each file's rows say so
    waiting = frozenset(w.key for w in held.waiting)
    sections = [
        render_file(file_view(i, plan, root, waiting), f"{quote(run_id, safe='')}/files/{i}")
        for i, plan in enumerate(plans)
    ]
    what = f"{len(plans)} file(s)." if plans else "No file prepared yet."
    body = (
        f"<p>Run <b>{_esc(run_id)}</b>: {_esc(state)}. {what}</p>"
        + "".join(sections)
        + capacity_section(user, held)
    )
    running = state in ("queued", "running")
    return html_page(render_page(f"{dag_id} results", body, refresh=REFRESH_SECONDS if running else None))


def _esc(value: str) -> str:
    import html

    return html.escape(value)


@app.get("/runs/{dag_id}/{run_id}/files/{index}/{name}", dependencies=READ_RUNS)
def run_file(dag_id: str, run_id: str, index: int, name: str, session: SessionDep) -> StreamingResponse:
    """
    Send one of a file's results, rejects or manifest, read only, only from under the results root.

    Sent as a download (``Content-Disposition: attachment``); a symbolic or hard link planted under
    the results root is not followed or sent (see :func:`openai_batch.ui.view.open_served`).
    """
    if name not in SERVED_FILES:
        raise HTTPException(404, "not a results file")
    plans = run_plans(session, dag_id, run_id)
    if not 0 <= index < len(plans):
        raise HTTPException(404, "no such file in this run")
    folder = local_folder(str(plans[index].get("out_dir") or ""))
    opened = None if folder is None else open_served(results_root(), folder, name)
    if opened is None:
        raise HTTPException(404, "not written yet, or not a regular file under the results root")
    fd, info = opened
    media = "application/json" if name.endswith(".json") else "text/plain; charset=utf-8"
    return StreamingResponse(
        _chunks(fd),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Content-Length": str(info.st_size),
        },
    )


def _chunks(fd: int) -> Iterator[bytes]:
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


@app.get("/dags/{dag_id}", response_class=HTMLResponse, dependencies=READ_RUNS)
def dag_page(dag_id: str, session: SessionDep, user: GetUserDep) -> HTMLResponse:
    """List the DAG's recent runs (files, outcomes, cost) and chart cost and tokens per day and model."""
    import datetime as dt

    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    from openai_batch.ui.history import DAYS, daily_by_model, render_charts, render_runs, summarize_run

    runs = session.execute(
        select(DagRun.run_id, DagRun.state, DagRun.run_type, DagRun.run_after)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.run_after.desc())
        .limit(25)
    ).all()
    today = dt.datetime.now(dt.UTC).date()
    since = dt.datetime.combine(today - dt.timedelta(days=DAYS - 1), dt.time(), tzinfo=dt.UTC)
    written = _task_returns(session, dag_id, WRITE_TASK, since, [r.run_id for r in runs])
    planned = _task_returns(session, dag_id, PREPARE_TASK, None, [r.run_id for r in runs])
    summaries = [
        summarize_run(
            r.run_id,
            str(r.state),
            str(getattr(r.run_type, "value", r.run_type)),
            str(r.run_after)[:19],
            len(planned.get(r.run_id, [])),
            [v for _, v in written.get(r.run_id, [])],
        )
        for r in runs
    ]
    rows = [(day, value) for returns in written.values() for day, value in returns if day]
    body = render_runs(dag_id, summaries) + render_charts(daily_by_model(rows, today))
    return html_page(render_page(f"{dag_id}: recent runs", body + capacity_section(user)))


def _task_returns(
    session: Session, dag_id: str, task_id: str, since: Any, run_ids: list[str]
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """
    Return ``{run_id: [(day, value)]}``: what ``task_id`` returned (dicts), with the day of its run.

    Of the runs ``run_ids`` and, with ``since``, of every run after it too. A pack's task returns
    the values of its files (a prepare's ``members``, a write's ``files``): each counts as a file's.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from sqlalchemy import or_, select

    wanted = XComModel.run_id.in_(run_ids)
    rows = session.execute(
        select(XComModel, DagRun.run_after)
        .join(DagRun, (DagRun.dag_id == XComModel.dag_id) & (DagRun.run_id == XComModel.run_id))
        .where(
            XComModel.dag_id == dag_id,
            XComModel.task_id == task_id,
            XComModel.key == "return_value",
            wanted if since is None else or_(wanted, DagRun.run_after >= since),
        )
        .order_by(XComModel.run_id, XComModel.map_index)
    ).all()
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for xcom, run_after in rows:
        value = XComModel.deserialize_value(xcom)
        if not isinstance(value, dict):
            continue
        day = run_after.date().isoformat() if run_after else ""
        files = value.get("members", value.get("files"))
        values = [v for v in files if isinstance(v, dict)] if isinstance(files, list) else [value]
        out.setdefault(xcom.run_id, []).extend((day, v) for v in values)
    return out
