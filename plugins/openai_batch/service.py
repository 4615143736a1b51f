"""The submission service: every round of every shard is submitted, and its state kept, here.

Round 0 (from the submit task), rounds waiting for capacity, follow-up rounds and token-limit
resubmissions (from the wait task) all go through :func:`submit_round`, which re-attaches to what
an earlier try left behind before it uploads or creates anything. No Airflow operator code here:
the tasks in :mod:`openai_batch.operators` and :mod:`openai_batch.sensors` call it. The API is
reached only through the provider seam (:class:`openai_batch.provider.BatchProvider`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from openai_batch.budget import NoCapacityError, limit_for, round_enqueued_tokens
from openai_batch.provider import intent_floor
from openai_batch.state_store import load_state, save_state
from openai_batch.storage import local_dir, url_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from airflow.sdk import ObjectStoragePath

    from openai_batch.budget import Ledger
    from openai_batch.provider import BatchProvider
    from openai_batch.state import Round, ShardState

__all__ = [
    "capacity_key",
    "load_state",
    "reconcile_capacity",
    "record_sent",
    "save_state",
    "stat_of",
    "submit_round",
    "taken_batches",
]

_LOG = logging.getLogger(__name__)


def stat_of(path: ObjectStoragePath) -> tuple[int, float | None]:
    """Return ``(size, mtime)`` of a file, local or in object storage (mtime None where unknown)."""
    from openai_batch.storage import mtime_of

    local = local_dir(path)
    if local is not None:
        st = local.stat()
        return st.st_size, st.st_mtime
    info = path.stat()
    info = info if isinstance(info, dict) else {"size": info.st_size, "mtime": info.st_mtime}
    return int(info.get("size") or 0), mtime_of(info)


def submit_round(
    hook: BatchProvider,
    state_dir: ObjectStoragePath,
    state: ShardState,
    source: str,
    output_expires_after: dict[str, Any] | None = None,
    ledger: Ledger | None = None,
    token_limits: dict[str, int] | None = None,
    capacity_poll: float = 30.0,
    shard: Mapping[str, Any] | None = None,
) -> str:
    """
    Make sure the latest round of ``state`` has a batch, creating one only if none exists.

    The batch is looked up by its identity first (a crash between create and record, or another
    run on the same content), then the request file is uploaded once and the batch created once.
    The state record is written before each step (the intent, with its time) and after it, so that
    a retry resumes where this one stopped and looks up what a crashed step may have left behind,
    back to the intent's time less ``CLOCK_SKEW_MARGIN``, however many objects came since.

    With a ``ledger``, nothing is uploaded before the round's estimated enqueued tokens fit under
    its model's limit in ``token_limits`` together with every batch of that model in flight;
    :class:`~openai_batch.budget.NoCapacityError` is raised otherwise (the caller waits, deferred,
    and checks again every ``capacity_poll`` seconds; the ledger lists the round as waiting meanwhile).
    ``shard`` is the planned shard (its ``enqueued_tokens`` spare reading its own file again).
    """
    from openai_batch.state import batch_metadata

    rnd = state.current
    if rnd.batch_id:
        hook.log.info("Shard %s round %s already has batch %s", state.identity, rnd.round, rnd.batch_id)
        return rnd.batch_id
    metadata = batch_metadata(state.identity, rnd.round, rnd.attempt, source)
    request_file = state_dir / rnd.file

    def open_requests() -> Any:
        return request_file.open("rb")

    taken = taken_batches(state_dir, state, ledger)
    existing = hook.find_batch(
        metadata,
        since=intent_floor(rnd.create_started_at),
        requests=rnd.requests,
        open_stream=open_requests,
        taken=taken,
    )
    if existing is not None:
        hook.log.info("Re-attaching to batch %s created earlier for %s", existing.id, state.identity)
        rnd.batch_id, rnd.input_file_id, rnd.status = existing.id, existing.input_file_id, existing.status
        save_state(state_dir, state)
        record_sent(ledger, state_dir, rnd)
        return existing.id
    if ledger is not None:
        limit = limit_for(token_limits or {}, state.model)
        tokens = round_enqueued_tokens(shard or {}, state_dir / rnd.file, state.endpoint)
        label = f"shard {state.index + 1} of {source.rsplit('/', 1)[-1]} (round {rnd.round})"
        key = capacity_key(state)
        try:
            line = ledger.admit(key, state.model, tokens, limit, label, capacity_poll)
        except NoCapacityError as err:
            # A batch whose wait never released it (its run failed or was deleted) may hold the room.
            if not err.ever_fits or not reconcile_capacity(hook, ledger, state.model):
                raise
            line = ledger.admit(key, state.model, tokens, limit, label, capacity_poll)
        hook.log.info("Capacity: %s admitted (%s tokens); %s", label, f"{tokens:,}", line)
    if not rnd.input_file_id:
        # An upload intent without a file id: an earlier try may have stored the file, then died.
        maybe_stored = rnd.upload_started_at is not None
        filename = f"{state.identity}-r{rnd.round}a{rnd.attempt}.jsonl"
        if rnd.upload_started_at is None:
            # Durable before the upload, so a crash after it still leads the retry to the file.
            rnd.upload_started_at, rnd.upload_filename = time.time(), filename
            save_state(state_dir, state)
        uploaded = hook.upload_batch_file_once(
            open_requests,
            filename=filename,
            size=stat_of(request_file)[0],
            since=intent_floor(rnd.upload_started_at),
            maybe_stored=maybe_stored,
        )
        rnd.input_file_id = uploaded.id
        save_state(state_dir, state)
        hook.log.info("Uploaded %s (%s requests) as %s", rnd.file, rnd.requests, uploaded.id)
    if rnd.create_started_at is None:
        # Durable before the create; the earliest intent is kept, as a batch may date from it.
        rnd.create_started_at = time.time()
        save_state(state_dir, state)
    batch = hook.create_batch_once(
        rnd.input_file_id,
        state.endpoint,
        metadata,
        output_expires_after=output_expires_after,
        since=intent_floor(rnd.create_started_at),
        requests=rnd.requests,
        open_stream=open_requests,
        taken=taken,
    )
    rnd.batch_id, rnd.status = batch.id, batch.status
    save_state(state_dir, state)
    record_sent(ledger, state_dir, rnd)
    if ledger is not None:
        ledger.attach(capacity_key(state), batch.id)
    hook.log.info("Created batch %s for shard %s round %s", batch.id, state.identity, rnd.round)
    return batch.id


def taken_batches(
    state_dir: ObjectStoragePath, state: ShardState, ledger: Ledger | None
) -> Callable[[str], bool]:
    """
    Return ``taken(batch_id)``: True when the batch is recorded as another round's.

    Another shard of the same content (its state record), an earlier round of this shard, or
    another owner's requests in the request record. A provider whose batches carry no metadata
    (Anthropic) leaves those out when it looks for the batch a lost create answer made.
    """
    from openai_batch.claims import record_of

    others: set[str] = set()
    read = False
    record = record_of(ledger)
    owner = url_of(state_dir)

    def taken(batch_id: str) -> bool:
        nonlocal read
        if not read:  # read once, on the first question: the OpenAI hook never asks
            others.update(_recorded_batches(state_dir, state))
            read = True
        if batch_id in others:
            return True
        found = record.batch_owner(batch_id) if record is not None else None
        return found is not None and found != owner

    return taken


def _recorded_batches(state_dir: ObjectStoragePath, state: ShardState) -> set[str]:
    """Return the batch ids of this shard's earlier rounds and of the other shards' state records."""
    from openai_batch.storage import read_json

    found = {str(r.batch_id) for r in state.rounds if r.batch_id and r is not state.current}
    for path in state_dir.glob("shard-*.state.json"):
        try:
            record = read_json(path)
        except (OSError, ValueError):
            continue  # a torn record: its shard re-attaches through its own lookup
        if isinstance(record, dict) and record.get("identity") != state.identity:
            found.update(str(r["batch_id"]) for r in record.get("rounds") or [] if r.get("batch_id"))
    return found


def record_sent(ledger: Ledger | None, state_dir: ObjectStoragePath, rnd: Round) -> None:
    """Record in the request record (next to the ledger) that the round's requests are in its batch."""
    from openai_batch.claims import digests_of, record_of

    record = record_of(ledger)
    if record is not None and rnd.batch_id:
        record.mark_sent(url_of(state_dir), list(digests_of(state_dir / rnd.file).values()), rnd.batch_id)


def reconcile_capacity(hook: BatchProvider, ledger: Ledger, model: str) -> bool:
    """
    Release ``model``'s in-flight entries whose batch has ended at the API; return whether any was.

    Throttled per entry (see :func:`openai_batch.budget.reconcile`); a failed lookup is logged and
    the entry kept, so reconciliation never fails the task.
    """
    from openai_batch.budget import reconcile

    lines = reconcile(ledger, model, hook.batch_status)
    for line in lines:
        hook.log.info("Capacity: %s", line)
    return bool(lines)


def capacity_key(state: ShardState) -> str:
    """Return the ledger key of the state's current round: one per batch the shard may create."""
    from openai_batch.capacity import round_key

    return round_key(state.identity, state.current.round, state.current.attempt)
