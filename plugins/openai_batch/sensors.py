"""Deferrable sensors: wait for input files, and wait for a shard's batches to end."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from openai_batch.apierrors import maps_api_errors
from openai_batch.budget import NoCapacityError, ledger_for, limit_for, parse_limits, round_enqueued_tokens
from openai_batch.deferral import wait_for_capacity
from openai_batch.layout import BORROWED, round_file, utc_day
from openai_batch.retry import DEFAULT_RETRY_ROUNDS
from openai_batch.rounds import after_collect, hit_token_limit, on_wait_end, token_limit_delay
from openai_batch.runinfo import run_date
from openai_batch.service import capacity_key, load_state, save_state, submit_round
from openai_batch.storage import allowed_roots, join_pattern, to_path
from openai_batch.ui.links import OpenAIBatchResultsLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from openai_batch.arrivals import FileStat
    from openai_batch.provider import BatchProvider
    from openai_batch.records import RequestRecord
    from openai_batch.state import ShardState

DEFAULT_TOKEN_LIMIT_WAIT = 600.0


#: Seconds at most between two listings of the input: ``poll_interval`` is the batch status net,
#: and can be an hour when webhooks are on, while a listing is one cheap call per waiting run.
MAX_INPUT_LISTING = 10.0


def token_limit_wait(value: float | None) -> float:
    """
    Return the base wait (seconds) before resubmitting after ``token_limit_exceeded``.

    An explicit ``value`` wins; else ``[openai_batch] token_limit_wait`` from the Airflow config of the
    process that runs the task (so a deployment, or a test, can shorten it without editing the DAG);
    else 600.
    """
    if value is not None:
        return float(value)
    from airflow.sdk.configuration import conf

    return float(conf.getfloat("openai_batch", "token_limit_wait", fallback=DEFAULT_TOKEN_LIMIT_WAIT))


def claim_stale_after() -> float:
    """
    Return the seconds after which a request claimed and never sent may be taken over by another run.

    ``[openai_batch] claim_stale_after`` from the Airflow config (env
    ``AIRFLOW__OPENAI_BATCH__CLAIM_STALE_AFTER``), else :data:`openai_batch.records.STALE_AFTER` (1 h).
    """
    from airflow.sdk.configuration import conf

    from openai_batch.records import STALE_AFTER

    return float(conf.getfloat("openai_batch", "claim_stale_after", fallback=STALE_AFTER))


def pack_from_files(value: int | None) -> int:
    """Return how many small files a run takes before it packs them (0: never; see ``packs``)."""
    if value is not None:
        return int(value)
    from airflow.sdk.configuration import conf

    from openai_batch.packs import PACK_FROM_FILES

    return int(conf.getint("openai_batch", "pack_from_files", fallback=PACK_FROM_FILES))


def input_pattern(input_param: str | None, inbox: str, context: Context) -> str:
    """
    Return the path or glob a run takes.

    The ``input`` param wins (relative to the inbox unless absolute or a URL). Otherwise a scheduled
    or backfill run for date D takes ``<inbox>/D/*``, and any other run (triggered by a person from
    the UI, REST or CLI, whatever logical date the form pre-filled) takes ``<inbox>/*``. Only
    ``*.jsonl`` and ``*.jsonl.gz`` files among the matches are taken.
    """
    root = str(to_path(inbox)) if "://" not in inbox else inbox
    if input_param:
        return join_pattern(root, input_param)
    date = run_date(context)
    return join_pattern(root, f"{date}/*" if date else "*")


def arrived_files(context: Context) -> list[dict[str, Any]] | None:
    """Return the files named by the inbox watcher's events that started this run, or None if none did."""
    from openai_batch.assets import INBOX_ASSET_NAME

    events = context.get("triggering_asset_events") or {}
    found: list[dict[str, Any]] | None = None
    for asset_events in events.values():
        for event in asset_events:
            if getattr(getattr(event, "asset", None), "name", None) != INBOX_ASSET_NAME:
                continue
            payload = (getattr(event, "extra", None) or {}).get("payload") or {}
            files = payload.get("files") if isinstance(payload, dict) else None
            found = found or []
            found.extend(f for f in files or [] if isinstance(f, dict) and isinstance(f.get("source"), str))
    return found


def _stat_of(found: dict[str, Any]) -> FileStat | None:
    """Return the stat identity of a taken local file, or None (object storage, or gone)."""
    import os

    from openai_batch.arrivals import FileStat

    if "://" in str(found["source"]):
        return None
    try:
        st = os.stat(found["source"])
    except OSError:
        return None
    return FileStat(str(found["source"]), st.st_size, st.st_mtime_ns, st.st_ino)


def is_past(date: str, now: float | None = None) -> bool:
    """Return True when ``date`` (``YYYY-MM-DD``) is before today (UTC)."""
    return date < utc_day(now)


class OpenAIBatchInputSensor(BaseSensorOperator):
    """
    Wait, deferred, until the run's input files exist and stop changing; return them.

    A file is taken when it is named ``*.jsonl`` or ``*.jsonl.gz``, lies (symlinks resolved) under
    the inbox or an allowed root, and has not changed for ``settle_seconds``. Everything else that
    matches is listed in the log with the reason it is not taken. A scheduled or backfill run for a
    past date whose partition holds no input is skipped at once; otherwise, when nothing arrives
    before ``input_timeout``, the task is skipped (``soft_fail``), so a day without input is not a
    failure.

    :param inbox: The input root (path or URL). (templated)
    :param input: A path or glob relative to the inbox, absolute, or a URL; None for the default. (templated)
    :param allowed_roots: Other roots inputs may be read from, comma-separated (the Variable
        ``openai_batch_allowed_roots``). (templated)
    :param poll_interval: Seconds between two listings. (templated)
    :param input_timeout: Seconds to wait for input before the task is skipped. (templated)
    :param settle_seconds: A file is taken only once unchanged (size, mtime) for this long. (templated)
    :param soft_fail: Skip (instead of fail) when no input arrives in time.
    :param ledger_dir: The ledger folder, where the arrival record is kept. (templated)
    :param max_files: Most files one run takes (below ``[core] max_map_length``); a run started
        by the inbox watcher leaves the others announced, and they start the next run.
    :param pack_from_files: A run taking at least this many small files hands them to prepare in
        packs (see :mod:`openai_batch.packs`); 0: never. None: ``[openai_batch] pack_from_files``
        from the Airflow config, else :data:`openai_batch.packs.PACK_FROM_FILES`.

    A run started by the inbox watcher (an event of the asset :func:`openai_batch.assets.inbox_asset`) takes
    exactly the files its events name, checked again here (inside the roots, settled, not done for
    this content), and records them as taken; nothing is waited for.
    """

    template_fields = (
        "inbox",
        "input",
        "allowed_roots",
        "poll_interval",
        "input_timeout",
        "settle_seconds",
        "ledger_dir",
    )

    def __init__(
        self,
        *,
        inbox: str,
        input: str | None = None,
        allowed_roots: str | None = None,
        poll_interval: float = 30.0,
        input_timeout: float = 6 * 3600,
        settle_seconds: float = 30.0,
        soft_fail: bool = True,
        ledger_dir: str | None = None,
        max_files: int = 1000,
        pack_from_files: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(soft_fail=soft_fail, **kwargs)
        self.ledger_dir = ledger_dir
        self.max_files = max_files
        self.pack_from_files = pack_from_files
        self.inbox = inbox
        self.input = input
        self.allowed_roots = allowed_roots
        self.poll_interval = poll_interval
        self.input_timeout = input_timeout
        self.settle_seconds = settle_seconds

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Return the input files if they are there and settled, else defer to the input trigger."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from openai_batch.identity import OutsideRootsError, check_pattern
        from openai_batch.storage import scan_inputs
        from openai_batch.triggers import InputFilesTrigger

        pattern = input_pattern(self.input, self.inbox, context)
        inbox = str(to_path(self.inbox)) if "://" not in self.inbox else self.inbox
        roots = allowed_roots(self.allowed_roots)
        try:
            check_pattern(pattern, inbox, roots)
        except OutsideRootsError as err:
            raise AirflowFailException(str(err)) from err
        arrived = arrived_files(context)
        if arrived is not None and not self.input:
            return self._take_arrived(context, arrived, inbox, roots)
        # Check once before deferring: files already in place need no trigger, and a trigger that
        # fires within a second of the deferral can lose a race in the scheduler (apache/airflow#72716).
        scan = scan_inputs(pattern, inbox, roots, float(self.settle_seconds))
        for path, reason in scan.ignored:
            self.log.warning("Not taking %s: %s", path, reason)
        if not scan.base_exists:
            self.log.warning("The folder of %s does not exist (yet)", pattern)
        if scan.ready():
            return self.execute_complete(context, {"status": "found", "files": scan.taken})
        date = run_date(context)
        if date and not self.input and is_past(date) and not scan.taken and not scan.waiting:
            raise AirflowSkipException(f"No input for the past date {date} in {pattern}")
        if scan.waiting:
            self.log.info("Waiting for %s to stop changing: %s", len(scan.waiting), scan.waiting)
        self.log.info("Waiting for input files matching %s", pattern)
        self.defer(
            trigger=InputFilesTrigger(
                pattern=pattern,
                poll_interval=min(float(self.poll_interval), MAX_INPUT_LISTING),
                inbox=inbox,
                allowed_roots=roots,
                settle_seconds=float(self.settle_seconds),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.input_timeout)),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the files the trigger found."""
        files = list(event["files"])
        if len(files) > int(self.max_files):
            files = self._not_done_first(files)
            self.log.warning(
                "%s files match; this run takes %s (max_files), those without results first. Run "
                "again, or let the inbox watcher announce the rest, for the others.",
                len(files),
                self.max_files,
            )
            self._left_for_next_run(files[int(self.max_files) :])
            files = files[: int(self.max_files)]
        self._mark_taken(context, files)
        self.log.info("Taking %s file(s): %s", len(files), [f["key"] for f in files])
        return self._grouped(files)

    def _grouped(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return the files as prepare takes them: many small ones in packs (see ``openai_batch.packs``)."""
        from openai_batch.packs import group_files

        sources = group_files(files, pack_from=pack_from_files(self.pack_from_files))
        packs = [s for s in sources if "members" in s]
        if packs:
            self.log.info(
                "%s small file(s) go in %s pack(s), each sent together and written file by file: %s",
                sum(len(p["members"]) for p in packs),
                len(packs),
                [p["key"] for p in packs],
            )
        return sources

    def _not_done_first(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        Return the files, those the arrival record knows as done (as they are now) last.

        So a run given more files than it takes goes on with the files not done yet, and the next
        run with the next ones, instead of taking the same first ``max_files`` again and again.
        """
        from openai_batch.arrivals import arrivals_for

        record = arrivals_for(self.ledger_dir)
        if record is None:
            return files
        done = record.done_keys(str(f["source"]) for f in files)
        if not done:
            return files

        def is_done(found: dict[str, Any]) -> bool:
            stat = _stat_of(found) if found["source"] in done else None
            return stat is not None and done[stat.source] == stat.key()

        return sorted(files, key=is_done)  # stable: each group keeps the listing's order

    def _left_for_next_run(self, files: list[dict[str, Any]]) -> None:
        """Let the inbox watcher announce the files this run leaves (max_files) at its next listing."""
        from openai_batch.arrivals import arrivals_for

        record = arrivals_for(self.ledger_dir)
        stats = [s for s in (_stat_of(f) for f in files) if s is not None]
        if record is not None and stats:
            record.due_now(stats)

    def _mark_taken(self, context: Context, files: list[dict[str, Any]]) -> None:
        """Record the files this run takes, so the inbox watcher does not start a second run for them."""
        from openai_batch.arrivals import arrivals_for

        record = arrivals_for(self.ledger_dir)
        stats = [s for s in (_stat_of(f) for f in files) if s is not None]
        if record is not None and stats:
            record.mark(stats, "taken", time.time(), str(context.get("run_id")))

    def _take_arrived(
        self, context: Context, arrived: list[dict[str, Any]], inbox: str, roots: list[str]
    ) -> list[dict[str, Any]]:
        """Take the files the inbox watcher announced that are still there, settled and not done."""
        import glob

        from airflow.sdk.exceptions import AirflowSkipException

        from openai_batch.arrivals import arrivals_for
        from openai_batch.storage import scan_inputs

        record = arrivals_for(self.ledger_dir)
        done = record.done_keys(f["source"] for f in arrived) if record is not None else {}
        taken: list[dict[str, Any]] = []
        for source in sorted({str(f["source"]) for f in arrived}):
            pattern = source if "://" in source else glob.escape(source)
            scan = scan_inputs(pattern, inbox, roots, float(self.settle_seconds))  # the checks, again
            for path, reason in scan.ignored:
                self.log.warning("Not taking %s: %s", path, reason)
            for found in scan.taken:
                stat = _stat_of(found)
                if stat is not None and done.get(stat.source) == stat.key():
                    self.log.info("%s has its results already; not taken again", found["key"])
                    continue
                taken.append(found)
        left = taken[int(self.max_files) :]
        taken = taken[: int(self.max_files)]
        if left:
            self._left_for_next_run(left)
            self.log.warning(
                "%s more announced file(s) wait for the next run (max_files %s)", len(left), self.max_files
            )
        if not taken:
            raise AirflowSkipException("Every file announced for this run is gone, changing or done already")
        self._mark_taken(context, taken)
        self.log.info("Taking %s announced file(s): %s", len(taken), [f["key"] for f in taken])
        return self._grouped(taken)


class OpenAIBatchSensor(BaseSensorOperator):
    """
    Wait, deferred, until every request of a shard has a final outcome; resubmit what did not.

    Waiting holds no worker slot: the trigger polls with the async client. When a batch ends, its
    output and error files are downloaded next to the results. Requests that expired, were
    cancelled, failed with a retryable error (429, 5xx) or have no result are sent again in a
    follow-up batch, for up to ``max_retry_rounds`` rounds. A batch that fails with
    ``token_limit_exceeded`` waits ``token_limit_wait`` seconds (deferred) and is resubmitted, up to
    ``max_token_limit_retries`` times (without that cap when capacity accounting is on and the
    shard fits under its model's limit: it will fit once other batches end). Other validation
    failures are logged with their line numbers and end as failed requests in the results.

    :param shard: One shard entry returned by ``OpenAIBatchSubmitOperator``. (templated)
    :param conn_id: The OpenAI connection id. (templated)
    :param poll_interval: Seconds between two polls. (templated)
    :param max_retry_rounds: Follow-up rounds for retryable requests. (templated)
    :param max_token_limit_retries: Resubmissions after ``token_limit_exceeded``.
    :param token_limit_wait: Seconds to wait before such a resubmission (doubling, tripling, ... per
        attempt). None (the default) takes ``[openai_batch] token_limit_wait`` from the Airflow
        config (env ``AIRFLOW__OPENAI_BATCH__TOKEN_LIMIT_WAIT``), else 600.
    :param wait_timeout: Seconds to wait for one batch before cancelling it and failing.
    :param cancel_on_kill: Cancel the batch when the deferred task is killed, failed or cleared.
    :param ledger_dir: The deployment's ledger folder: the batch's enqueued tokens are given back
        when it ends, and follow-up rounds and resubmissions wait for capacity there. With a ledger
        and a limit for the model that the shard fits under, ``token_limit_exceeded`` is retried
        without the ``max_token_limit_retries`` cap. (templated)
    :param token_limits: Enqueued-token limit per model (JSON object). (templated)
    :param capacity_poll: Seconds between two capacity checks of a waiting round. (templated)
    :param reuse_identical: Store each successful answer in the answer cache of the ledger folder,
        for identical requests of later runs (the Variable ``openai_batch_reuse_identical``; see
        :mod:`openai_batch.answers`). (templated)
    """

    template_fields = (
        "shard",
        "conn_id",
        "poll_interval",
        "max_retry_rounds",
        "ledger_dir",
        "token_limits",
        "capacity_poll",
        "reuse_identical",
    )
    operator_extra_links = (OpenAIBatchResultsLink(),)

    def __init__(
        self,
        *,
        shard: dict[str, Any],
        conn_id: str = "openai_default",
        poll_interval: float = 60.0,
        max_retry_rounds: int = DEFAULT_RETRY_ROUNDS,
        max_token_limit_retries: int = 3,
        token_limit_wait: float | None = None,
        wait_timeout: float = 26 * 3600,
        cancel_on_kill: bool = True,
        ledger_dir: str | None = None,
        token_limits: str | dict[str, Any] | None = None,
        capacity_poll: float = 30.0,
        reuse_identical: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reuse_identical = reuse_identical
        self.ledger_dir = ledger_dir
        self.token_limits = token_limits
        self.capacity_poll = capacity_poll
        self.shard = shard
        self.conn_id = conn_id
        self._provider: str | None = None
        self.poll_interval = poll_interval
        self.max_retry_rounds = max_retry_rounds
        self.max_token_limit_retries = max_token_limit_retries
        self.token_limit_wait = token_limit_wait
        self.wait_timeout = wait_timeout
        self.cancel_on_kill = cancel_on_kill

    @property
    def hook(self) -> BatchProvider:
        """Return a hook for the connection's API (see :mod:`openai_batch.providers`)."""
        from openai_batch.providers import batch_hook

        return batch_hook(str(self.conn_id), self.provider)

    @property
    def provider(self) -> str:
        """Return the connection's provider, looked up once."""
        from openai_batch.providers import provider_of

        if self._provider is None:
            self._provider = provider_of(str(self.conn_id))
        return self._provider

    @maps_api_errors
    def execute(self, context: Context) -> dict[str, Any]:
        """Resume from the shard's state record: wait for its current batch, or finish."""
        state_dir = to_path(self.shard["state_dir"])
        state = load_state(state_dir, self.shard)
        rnd = state.current
        if self.shard.get("kind") == BORROWED and not rnd.batch_id:
            return self._borrow(state_dir, state)
        if not rnd.batch_id:
            self._submit(state_dir, state)
        if rnd.collected:
            return self._next_round_or_finish(state)
        # Check once before deferring: a batch that already ended needs no trigger (and a trigger
        # firing right after the deferral can lose a race in the scheduler, apache/airflow#72716).
        from openai_batch.status import is_terminal
        from openai_batch.triggers import batch_summary

        assert rnd.batch_id is not None
        batch: Any = self.hook.get_batch(rnd.batch_id)
        if is_terminal(batch.status):
            return self.execute_complete(context, batch_summary(batch.model_dump(mode="json")))
        self._defer(state)
        raise AssertionError("unreachable")  # defer() raises

    def _defer(self, state: ShardState) -> None:
        from openai_batch.progress import OpenAIBatchProgressTrigger, progress_file

        assert state.current.batch_id is not None
        self.defer(
            trigger=OpenAIBatchProgressTrigger(
                progress_file=progress_file(self.shard["state_dir"], state.index),
                conn_id=self.conn_id,
                provider=self.provider,
                batch_id=state.current.batch_id,
                poll_interval=float(self.poll_interval),
                end_time=time.time() + float(self.wait_timeout),
                cancel_on_kill=self.cancel_on_kill,
                events_dir=self._events_dir(),
            ),
            method_name="execute_complete",
        )

    def _events_dir(self) -> str | None:
        """Where the webhook receiver records batch ends (in the local ledger folder), or None."""
        from openai_batch.webhooks import webhooks_folder

        folder = webhooks_folder(self.ledger_dir)
        return None if folder is None else str(folder)

    @maps_api_errors
    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Record how the batch ended, download its files, then resubmit or finish."""
        from openai_batch.results_io import download_round

        state_dir = to_path(self.shard["state_dir"])
        state = load_state(state_dir, self.shard)
        rnd = state.current
        if event.get("batch_id") != rnd.batch_id:
            raise AirflowException(f"event for batch {event.get('batch_id')}, expected {rnd.batch_id}")
        decision = on_wait_end(
            event,
            attempt=rnd.attempt,
            max_token_limit_retries=int(self.max_token_limit_retries),
            fits_alone=event.get("status") == "failed"
            and hit_token_limit(event.get("errors"))
            and self._fits_eventually(state),
        )
        if decision.release:
            self._release(state)
        if decision.action == "fail":
            raise AirflowException(decision.reason)
        rnd.status = event["status"]
        rnd.output_file_id = event.get("output_file_id")
        rnd.error_file_id = event.get("error_file_id")
        rnd.errors = list(event.get("errors") or [])
        rnd.request_counts = event.get("request_counts")
        rnd.usage = event.get("usage")
        rnd.ended_at = rnd.ended_at or time.time()
        self.log.info("Batch %s ended %s: %s", rnd.batch_id, rnd.status, rnd.request_counts)
        for err in rnd.errors if rnd.status == "failed" else []:
            line, message, code = err.get("line"), err.get("message"), err.get("code")
            self.log.error("Batch %s: line %s: %s (%s)", rnd.batch_id, line, message, code)
        if decision.action == "wait_for_tokens":
            save_state(state_dir, state)
            return self._wait_for_token_budget(rnd.attempt)
        if decision.action == "give_up" and hit_token_limit(rnd.errors):
            self.log.error("Batch %s: %s; giving up", rnd.batch_id, decision.reason)
        if decision.action == "collect":
            download_round(self.hook, state_dir, rnd)
        rnd.collected = True
        save_state(state_dir, state)
        return self._next_round_or_finish(state)

    def _wait_for_token_budget(self, attempt: int) -> dict[str, Any]:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        delay = token_limit_delay(token_limit_wait(self.token_limit_wait), attempt)
        self.log.warning("Enqueued-token limit reached; resubmitting in %.0f s (deferred)", delay)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=delay)), method_name="resubmit")
        raise AssertionError("unreachable")

    @maps_api_errors
    def resubmit(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resubmit the current round after a ``token_limit_exceeded`` failure, then wait again."""
        from openai_batch.state import Round

        state_dir = to_path(self.shard["state_dir"])
        state = load_state(state_dir, self.shard)
        old = state.current
        if old.status == "failed" and not old.collected:
            state.rounds.append(
                Round(round=old.round, file=old.file, requests=old.requests, attempt=old.attempt + 1)
            )
            save_state(state_dir, state)
        self._submit(state_dir, state)
        self._defer(state)
        raise AssertionError("unreachable")

    def _submit(self, state_dir: Any, state: ShardState) -> None:
        """Submit the current round once capacity allows; until then wait deferred, then ``resubmit``."""
        try:
            submit_round(
                self.hook,
                state_dir,
                state,
                self.shard["source"],
                self.shard.get("output_expires_after"),
                ledger_for(self.ledger_dir),
                parse_limits(self.token_limits),
                float(self.capacity_poll),
                shard=self.shard,
            )
        except NoCapacityError as err:
            self._keep_claims(state_dir, state)
            wait_for_capacity(self, err, float(self.capacity_poll), "resubmit", str(self.ledger_dir))

    def _release(self, state: ShardState) -> None:
        ledger = ledger_for(self.ledger_dir)
        if ledger is not None:
            line = ledger.release(capacity_key(state))
            if line:
                self.log.info("Capacity: %s", line)

    def _fits_eventually(self, state: ShardState) -> bool:
        """Return True when capacity accounting is on and the round fits under its model's limit alone."""
        if ledger_for(self.ledger_dir) is None:
            return False
        limit = limit_for(parse_limits(self.token_limits), state.model)
        if limit is None:
            return False
        state_dir = to_path(self.shard["state_dir"])
        return round_enqueued_tokens(self.shard, state_dir / state.current.file, state.endpoint) <= limit

    def _next_round_or_finish(self, state: ShardState) -> dict[str, Any]:
        from openai_batch.results_io import nothing_to_retry, write_retry_file
        from openai_batch.state import Round

        state_dir = to_path(self.shard["state_dir"])
        rnd = state.current
        self._record_answers(state_dir, state)
        if (
            after_collect(
                rnd.status,
                round_no=rnd.round,
                max_retry_rounds=int(self.max_retry_rounds),
                retryable_left=rnd.status != "failed" and not nothing_to_retry(state_dir, rnd),
            )
            == "resubmit"
        ):
            name = round_file(state.index, rnd.round + 1)
            count = write_retry_file(state_dir, rnd, name)
            if count:
                self.log.info(
                    "Resubmitting %s unfinished request(s) of batch %s as round %s",
                    count,
                    rnd.batch_id,
                    rnd.round + 1,
                )
                state.rounds.append(Round(round=rnd.round + 1, file=name, requests=count))
                save_state(state_dir, state)
                self._submit(state_dir, state)
                self._defer(state)
        self._give_up_unanswered(state_dir, state)
        if self.shard.get("kind") == BORROWED:
            return self._borrow(state_dir, state)
        return self._finished(state)

    def _finished(self, state: ShardState) -> dict[str, Any]:
        if not state.finished:
            state.finished = True  # a later run of the same content maps this shard no more
            save_state(to_path(self.shard["state_dir"]), state)
        return {
            **self.shard,
            "rounds": [
                {"round": r.round, "batch_id": r.batch_id, "status": r.status, "requests": r.requests}
                for r in state.rounds
            ],
        }

    # --- the request record: answers of this shard, and requests borrowed from another run ----

    def _record(self) -> RequestRecord | None:
        from openai_batch.records import record_for

        return record_for(self.ledger_dir)

    def _record_answers(self, state_dir: Any, state: ShardState) -> None:
        """Record the final answers of the collected round, for every run that borrowed them."""
        from openai_batch.claims import record_collected_round

        owner = self.shard["state_dir"]
        record_collected_round(
            self.ledger_dir, self.reuse_identical, owner, state_dir, state.current, self.log
        )

    def _keep_claims(self, state_dir: Any, state: ShardState) -> None:
        """Refresh the claims of a round waiting for capacity, so no borrower takes them as stale."""
        from openai_batch.claims import keep_round_claims

        keep_round_claims(self.ledger_dir, self.shard["state_dir"], state_dir, state.current)

    def _give_up_unanswered(self, state_dir: Any, state: ShardState) -> None:
        """Give up the shard's requests left without a final answer: a borrower sends them itself."""
        from openai_batch.claims import give_up_rounds

        give_up_rounds(self.ledger_dir, self.shard["state_dir"], state_dir, state.rounds, self.log)

    def _borrow(self, state_dir: Any, state: ShardState) -> dict[str, Any]:
        """
        Wait for the owner's answers to borrowed requests; send those it gave up, then finish.

        Requests still in the owner's hands are waited for, deferred; requests it gave up are taken
        over and sent here as a round of this entry (see :func:`openai_batch.claims.next_borrow_step`).
        """
        from openai_batch.claims import digests_of, next_borrow_step, write_taken_round
        from openai_batch.triggers import OpenAIBatchBorrowTrigger

        if state.current.file != self.shard["file"] and not state.current.batch_id:
            self._submit(state_dir, state)  # taken over before, not sent yet
            self._defer(state)
        record = self._record()
        if record is None:
            return self._finished(state)
        me, stale = self.shard["state_dir"], claim_stale_after()
        digests = list(digests_of(state_dir / self.shard["file"]).values())
        step = next_borrow_step(record, me, state.index, digests, time.time(), stale)
        if step.action == "wait":
            owners = list(step.owners)
            self.log.info(
                "%s borrowed request(s) are in flight in %s; waiting (deferred)", step.waiting, owners
            )
            self.defer(
                trigger=OpenAIBatchBorrowTrigger(
                    ledger_dir=str(self.ledger_dir),
                    state_dir=me,
                    file=self.shard["file"],
                    poll_interval=float(self.poll_interval),
                    stale_after=stale,
                ),
                method_name="borrow_complete",
            )
        if step.action == "send":
            count = write_taken_round(self.shard["file"], state_dir, state, step.taken)
            save_state(state_dir, state)
            self.log.info("Taking over %s borrowed request(s) their owner gave up; sending them", count)
            self._submit(state_dir, state)
            self._defer(state)
        self.log.info("Every borrowed request has its answer in another run's batch")
        return self._finished(state)

    def borrow_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume after the borrowed requests left the owner's hands."""
        state_dir = to_path(self.shard["state_dir"])
        return self._borrow(state_dir, load_state(state_dir, self.shard))
