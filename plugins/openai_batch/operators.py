"""Operators: prepare request files, submit batches idempotently, and write joined results."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import shutil
import tempfile
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from openai_batch.apierrors import maps_api_errors
from openai_batch.budget import NoCapacityError
from openai_batch.deferral import too_big_message, wait_for_capacity
from openai_batch.layout import MANIFEST_FILE, ORDER_FILE, PLAN_FILE, REJECTS_FILE, RESULTS_FILE
from openai_batch.limits import MAX_REQUESTS_PER_BATCH
from openai_batch.packs import is_pack
from openai_batch.plans import error_plan, state_dir_name
from openai_batch.plans import variant as split_variant
from openai_batch.preparation import BadSettingError, ContentPreparer, results_complete
from openai_batch.pricing import format_usd
from openai_batch.runinfo import file_partition, run_type
from openai_batch.service import (
    capacity_key,
    load_state,
    reconcile_capacity,
    record_sent,
    save_state,
    stat_of,
    submit_round,
)
from openai_batch.storage import (
    InputTooLargeError,
    NotRegularFileError,
    copy_file,
    move,
    open_atomic,
    read_json_or_set_aside,
    to_path,
    url_of,
    write_json,
)
from openai_batch.ui.links import OpenAIBatchResultsLink

# Moved to openai_batch.layout, openai_batch.service and openai_batch.deferral; still importable here.
__all__ = [
    "MANIFEST_FILE",
    "ORDER_FILE",
    "PLAN_FILE",
    "REJECTS_FILE",
    "RESULTS_FILE",
    "OpenAIBatchPrepareOperator",
    "OpenAIBatchSubmitOperator",
    "OpenAIBatchWriteResultsOperator",
    "capacity_key",
    "load_state",
    "reconcile_capacity",
    "record_sent",
    "save_state",
    "stat_of",
    "submit_round",
    "too_big_message",
    "wait_for_capacity",
]

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from openai_batch.identity import InputRef
    from openai_batch.preparation import PackBuilder
    from openai_batch.results_io import ContentOutcomes
    from openai_batch.storage import InputFile


_LOG = logging.getLogger(__name__)
#: Seconds between two checks of a file's waits while they wait in the triggerer (at most).
MAX_WRITE_CHECK = 2.0
#: Seconds at most before a write looks again at waits that still need a worker (queued, retrying):
#: ``poll_interval`` is the batch status net, and can be an hour when webhooks are on.
MAX_WRITE_RECHECK = 30.0


#: The triggering user ``dag.test()`` records on the runs it makes (Airflow 3.3).
DAG_TEST_USER = "dag_test"


def _runs_triggers_inline(context: Context) -> bool:
    """
    Return whether this run is a ``dag.test()`` run, whose triggers run inline until they fire.

    Such a run has no triggerer: a write deferred while its waits still need the same process
    would never see them end, so it reschedules instead.
    """
    dag_run = context.get("dag_run")
    return getattr(dag_run, "triggering_user_name", None) == DAG_TEST_USER


class OpenAIBatchPrepareOperator(BaseOperator):
    """
    Validate, normalize and split one JSONL request file into shards ready to upload.

    Returns a plan (XCom) with one entry per shard. Nothing is uploaded here. The file must resolve
    inside the inbox or an allowed root. A file whose complete results already exist for the same
    content is skipped unless ``force`` is set. A file that cannot be used (empty, binary, no valid
    line) returns a plan with an ``error``: its rejects and manifest are written by the results task,
    which then fails for this file only, while the run's other files go on.

    :param source: The input: a file entry from the input sensor, or a path or URL. (templated)
    :param inbox: The inbox root; keys are paths relative to it. (templated)
    :param allowed_roots: Other roots inputs may be read from, comma-separated. (templated)
    :param results_root: The results root. (templated)
    :param endpoint: Endpoint for short lines and lines without a url; on an Anthropic connection the
        default means Anthropic's Messages API. (templated)
    :param conn_id: The connection whose type decides the provider (see :mod:`openai_batch.providers`):
        its lines, endpoint and limits. (templated)
    :param model: When set, overrides the model of every request. (templated)
    :param max_requests_per_batch: At most this many requests per batch (ceiling 50,000). (templated)
    :param plan_only: Write the plan and the rejects only; upload nothing (the ``dry_run`` param). (templated)
    :param force: Process the file again even if its results exist for the same content. (templated)
    :param partition: The day for the manifest; default: the date of a scheduled or backfill run,
        else the file's day folder (``<inbox>/D/``), else none. (templated)
    :param max_input_bytes: Cap on the decompressed size of a ``*.jsonl.gz`` input; one above it
        gets an error plan. Empty: 100 GiB. (templated)
    :param ledger_dir: The deployment's ledger folder: every request is claimed in its request record,
        and one another run already sends or answered is borrowed, not sent. None: no record. (templated)
    :param reuse_identical: Take the answer of an identical request (same endpoint and body) that
        succeeded before, from any file or run, out of the answer cache instead of sending it (the
        Variable ``openai_batch_reuse_identical``; see :mod:`openai_batch.answers`). (templated)
    """

    template_fields = (
        "ledger_dir",
        "reuse_identical",
        "source",
        "inbox",
        "allowed_roots",
        "results_root",
        "endpoint",
        "conn_id",
        "model",
        "max_requests_per_batch",
        "plan_only",
        "force",
        "partition",
        "max_input_bytes",
    )

    def __init__(
        self,
        *,
        source: dict[str, Any] | str,
        inbox: str,
        results_root: str,
        allowed_roots: str | None = None,
        endpoint: str = "/v1/chat/completions",
        conn_id: str = "openai_default",
        model: str | None = None,
        max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH,
        plan_only: bool = False,
        force: bool = False,
        partition: str | None = None,
        max_input_bytes: int | str | None = None,
        ledger_dir: str | None = None,
        reuse_identical: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_input_bytes = max_input_bytes
        self.ledger_dir = ledger_dir
        self.reuse_identical = reuse_identical
        self.source = source
        self.inbox = inbox
        self.allowed_roots = allowed_roots
        self.results_root = results_root
        self.endpoint = endpoint
        self.conn_id = conn_id
        self.provider = "openai"
        self.price_models: dict[str, str] = {}
        self.model = model
        self.max_requests_per_batch = max_requests_per_batch
        self.plan_only = plan_only
        self.force = force
        self.partition = partition

    def input_ref(self, source: dict[str, Any] | str) -> InputRef:
        """Return the reference of ``source``, checked again here: it must resolve inside the allowed roots.

        ``source`` is the task's, or one file of its pack.
        """
        from openai_batch.identity import OutsideRootsError, input_ref
        from openai_batch.storage import allowed_roots

        path = source["source"] if isinstance(source, dict) else str(source)
        inbox = str(to_path(self.inbox)) if "://" not in self.inbox else self.inbox
        if "://" not in path and not path.startswith("/"):
            path = f"{inbox.rstrip('/')}/{path}"
        try:
            return input_ref(path, inbox, allowed_roots(self.allowed_roots))
        except OutsideRootsError as err:
            raise AirflowFailException(str(err)) from err

    @staticmethod
    def listed_ref(source: dict[str, Any] | str) -> InputRef | None:
        """Return the reference the input sensor listed (nothing resolved again); None for a path source."""
        from openai_batch.identity import InputRef

        if not isinstance(source, dict) or not source.get("key"):
            return None
        root = str(source.get("root") or "")
        key = str(source["key"])  # shown form: <root>/<key> outside the inbox
        if root:
            key = key[len(root.rstrip("/")) + 1 :]
        return InputRef(source=str(source["source"]), key=key, root=root)

    def execute(self, context: Context) -> dict[str, Any]:
        """Prepare the file (or each file of a pack) and return its plan."""
        from openai_batch.providers import ProviderMismatchError, endpoint_for, price_models, provider_of

        # The connection decides the provider, and with it the lines taken, the endpoint and limits.
        self.provider = provider_of(str(self.conn_id))
        try:
            self.endpoint = endpoint_for(self.provider, self.endpoint)
            self.price_models = price_models(str(self.conn_id), self.provider)
        except ProviderMismatchError as err:
            raise AirflowFailException(f"connection {self.conn_id!r}: {err}") from err

        if is_pack(self.source):
            return self._execute_pack(context)
        plan = self._execute_source(context, self.source, None)
        if plan.get("packed_in"):
            # Sent in a pack by an earlier run: its results come from that pack's batches.
            return self._pack_plan(str(self.source_key()), [plan], [])
        return plan

    def source_key(self) -> str:
        """Return the key the task's source is shown as (its map index label)."""
        if isinstance(self.source, dict):
            return str(self.source.get("key") or self.source.get("source"))
        return str(self.source)

    def _execute_pack(self, context: Context) -> dict[str, Any]:
        """Prepare each file of a pack, then send the ones new to packing together; return the pack's plan."""
        from openai_batch.identity import PACKS_DIR
        from openai_batch.preparation import PackBuilder, PackError

        assert isinstance(self.source, dict)
        label = str(self.source["key"])
        members = list(self.source["members"])
        with tempfile.TemporaryDirectory(prefix="openai-batch-pack-") as tmp:
            builder = PackBuilder(self._preparer(), to_path(self.results_root) / PACKS_DIR, Path(tmp))
            plans = [self._execute_source(context, member, builder) for member in members]
            limit, variant, salt = self._split(context)
            try:
                units = builder.publish(label, limit, variant, salt)
            except (PackError, BadSettingError) as err:
                raise AirflowFailException(str(err)) from None
        for plan in plans:
            packed_in = builder.packed_in.get(str(plan.get("state_dir")))
            if packed_in:
                plan["packed_in"] = packed_in
        return self._pack_plan(label, plans, units)

    def _pack_plan(
        self, label: str, plans: list[dict[str, Any]], units: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """
        Return a pack's plan: its files' plans, and the contents that send their requests.

        A file sent in a pack (``packed_in``) is answered by that pack content; one with shards of
        its own (sent alone before) is its own content. Every content's shards are mapped once.
        """
        from openai_batch.storage import read_json

        contents: dict[str, dict[str, Any]] = {u["state_dir"]: u for u in units}
        for plan in plans:
            if plan.get("skipped") or plan.get("dry_run") or plan.get("error"):
                continue
            packed_in = plan.get("packed_in")
            if packed_in and packed_in not in contents:
                contents[packed_in] = read_json(to_path(packed_in) / PLAN_FILE)
            elif not packed_in:
                contents.setdefault(plan["state_dir"], plan)
        for unit in contents.values():  # the budget and the ledger name a content by its key
            unit.setdefault("key", next((s["key"] for s in unit.get("shards") or []), unit["state_dir"]))
        shards = [shard for unit in contents.values() for shard in unit.get("shards") or []]
        done = all(p.get("skipped") for p in plans)
        return {
            "key": label,
            "source": label,
            "members": plans,
            "units": list(contents.values()),
            "shards": shards,
            "skipped": done,
            "dry_run": bool(self.plan_only),
            "provider": self.provider,
        }

    def _execute_source(
        self, context: Context, source: dict[str, Any] | str, pack: PackBuilder | None
    ) -> dict[str, Any]:
        """Prepare one file (of the task, or of its pack) and return its plan."""
        from airflow.sdk import ObjectStoragePath

        from openai_batch.storage import InputFile, is_url

        try:
            ref = self.input_ref(source)
        except AirflowFailException as err:
            # A listed file that now resolves outside the roots (swapped for a link since the
            # listing) is refused for this file alone; a path given by hand still fails the task.
            listed = self.listed_ref(source)
            if listed is None:
                raise
            partition = self.partition or file_partition(context, listed.display)
            return self._unreadable(listed, partition, f"{listed.display}: refused: {err}")
        # The run's day (scheduled, backfill), else the file's day folder, else none.
        partition = self.partition or file_partition(context, ref.display)
        folder = to_path(self.results_root) / ref.folder
        # ref.source is the checked real path: to_path would resolve it again, following a swapped link.
        src = to_path(ref.source) if is_url(ref.source) else ObjectStoragePath(ref.source)
        try:
            opened = InputFile(src, self._max_input_bytes())
        except (FileNotFoundError, PermissionError, NotRegularFileError, NotADirectoryError) as err:
            return self._unreadable(ref, partition, f"{ref.display}: cannot be read: {_why(err)}")
        except OSError as err:
            if is_url(ref.source) or err.errno != errno.ELOOP:
                raise  # storage trouble is worth a task retry
            return self._unreadable(ref, partition, f"{ref.display}: cannot be read: {_why(err)}")
        with opened:
            return self._execute_opened(context, ref, folder, opened, partition, pack)

    def _execute_opened(
        self,
        context: Context,
        ref: InputRef,
        folder: ObjectStoragePath,
        src: InputFile,
        partition: str | None,
        pack: PackBuilder | None = None,
    ) -> dict[str, Any]:
        base: dict[str, Any] = {
            "source": ref.source,
            "key": ref.display,
            "partition": partition,
            "out_dir": url_of(folder),
            "size": src.size,
            "mtime": src.mtime,
            "input_stat": src.identity,
            "provider": self.provider,
            "skipped": False,
            "dry_run": bool(self.plan_only),
        }
        manifest = folder / MANIFEST_FILE
        done = None
        if not self.force and not self.plan_only:
            done = read_json_or_set_aside(
                manifest, "the results are written again from the state kept", self.log
            )
        if isinstance(done, dict):
            digest = self._done_digest(src, done)
            if digest is not None and done.get("input_sha256") == digest and results_complete(folder, done):
                if done.get("error"):
                    self.log.warning("%s was found unusable before: %s", ref.display, done["error"])
                self.log.info(
                    "Results for %s (sha256 %s) are complete in %s; skipping (set force to redo)",
                    ref.display,
                    digest,
                    folder,
                )
                return {
                    **base,
                    "input_sha256": digest,
                    "input_raw_sha256": done.get("input_raw_sha256"),
                    "skipped": True,
                    "shards": [],
                }
        limit, variant, salt = self._split(context)
        if pack is not None and not self.plan_only:
            try:
                plan = pack.add(ref, src, folder, limit, variant, salt)
            except BadSettingError as err:
                raise AirflowFailException(str(err)) from None
        else:
            with tempfile.TemporaryDirectory(prefix="openai-batch-") as tmp:
                plan = self._prepare(ref, src, folder, Path(tmp), limit, variant, salt)
        plan = {**base, **plan, "input_raw_sha256": src.raw_sha256(plan["input_sha256"])}
        if plan.get("error"):
            self.log.error("%s cannot be sent: %s", ref.display, plan["error"])
            return plan
        self.log.info(
            "%s: %s lines, %s valid, %s rejected, %s shard(s), ~%s input tokens, ~%s output tokens, "
            "estimated cost %s (input only %s)",
            ref.display,
            plan["lines"],
            plan["valid"],
            plan["rejected"],
            len(plan["shards"]),
            plan["estimated_input_tokens"],
            plan.get("estimated_output_tokens", "?"),
            format_usd(plan.get("estimated_total_cost_usd")),
            format_usd(plan["estimated_cost_usd"]),
        )
        if plan["unpriced_models"]:
            self.log.warning(
                "%s: no price is known for model(s) %s; the cost cannot be estimated (check the "
                "model names, or add them to openai_batch.pricing.PRICES)",
                ref.display,
                ", ".join(plan["unpriced_models"]),
            )
        if self.plan_only:
            state_dir = to_path(plan["state_dir"])
            write_json(folder / PLAN_FILE, plan)
            copy_file(state_dir / REJECTS_FILE, folder / REJECTS_FILE)
            self.log.info("Dry run: plan written to %s; nothing uploaded", folder / PLAN_FILE)
            return {**plan, "shards": []}
        return plan

    def _split(self, context: Context) -> tuple[int, str, str]:
        """Return the run's ``(requests per batch, split variant, force salt)``."""
        salt = f"-f{hashlib.sha256(context['run_id'].encode()).hexdigest()[:8]}" if self.force else ""
        limit = max(1, min(int(self.max_requests_per_batch), MAX_REQUESTS_PER_BATCH))
        return limit, split_variant(self.endpoint, self.model or None, limit, salt), salt

    def _max_input_bytes(self) -> int:
        from openai_batch.storage import DEFAULT_MAX_INPUT_BYTES

        value = self.max_input_bytes
        if value is None or str(value).strip() == "":
            return DEFAULT_MAX_INPUT_BYTES
        try:
            cap = int(str(value).strip())
        except ValueError as err:
            raise AirflowFailException(f"openai_batch_max_input_bytes: not a byte count: {value!r}") from err
        if cap < 1:
            raise AirflowFailException(f"openai_batch_max_input_bytes must be positive, got {cap}")
        return cap

    def _done_digest(self, src: InputFile, done: dict[str, Any]) -> str | None:
        """
        Return the content digest to compare with the manifest's ``input_sha256``, or None if unknown.

        When the opened file's stat identity (size, mtime_ns, inode, device) is the one the
        manifest recorded, the file is the one already processed and is not read at all; otherwise
        the digest of its content is taken (decompressed for ``*.gz``, as the manifest records it).
        """
        recorded = done.get("input_stat")
        if src.identity is not None and recorded == src.identity and done.get("input_sha256"):
            return str(done["input_sha256"])
        try:
            return src.content_sha256()
        except (EOFError, zlib.error, gzip.BadGzipFile, InputTooLargeError):
            return None  # a corrupt or too large archive: the prepare pass words the error

    def _unreadable(self, ref: InputRef, partition: str | None, error: str) -> dict[str, Any]:
        """Return the error plan of an input that cannot be opened (gone, not a file, a link, no access)."""
        folder = to_path(self.results_root) / ref.folder
        # Nothing was read: the plan is for "no content", so the file is taken again once readable.
        digest = hashlib.sha256(b"").hexdigest()
        state_dir = folder / state_dir_name(digest, "unreadable")
        for name in (ORDER_FILE, REJECTS_FILE):
            with open_atomic(state_dir / name):
                pass
        plan = {
            "source": ref.source,
            "key": ref.display,
            "partition": partition,
            "out_dir": url_of(folder),
            "size": None,
            "mtime": None,
            "input_stat": None,
            "input_raw_sha256": None,
            "skipped": False,
            "dry_run": bool(self.plan_only),
            **error_plan(url_of(state_dir), digest, error, lines=0, rejected=0),
        }
        self.log.error("%s cannot be sent: %s", ref.display, error)
        return plan

    def _prepare(
        self,
        ref: InputRef,
        src: InputFile,
        folder: ObjectStoragePath,
        work: Path,
        limit: int,
        variant: str,
        salt: str,
    ) -> dict[str, Any]:
        """Prepare into ``work``, then publish the files into the content's state folder."""
        try:
            return self._preparer().prepare(ref, src, folder, work, limit, variant, salt)
        except BadSettingError as err:
            raise AirflowFailException(str(err)) from None

    def _preparer(self) -> ContentPreparer:
        return ContentPreparer(
            endpoint=self.endpoint,
            provider=self.provider,
            price_models=self.price_models,
            model=self.model or None,
            plan_only=bool(self.plan_only),
            ledger_dir=self.ledger_dir,
            reuse_identical=self.reuse_identical,
            log=self.log,
        )


def _why(err: OSError) -> str:
    """Return what an error opening an input means to the person who put it there."""
    if isinstance(err, NotRegularFileError):
        return str(err).rsplit("/", 1)[-1]
    if isinstance(err, FileNotFoundError):
        return "it is gone (removed or renamed after it was listed)"
    if isinstance(err, PermissionError):
        return "permission denied"
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        return "it or a folder on its path was replaced by a link or a file after it was listed"
    return err.strerror or str(err)


class OpenAIBatchSubmitOperator(BaseOperator):
    """
    Upload one shard and create its batch, or re-attach to the batch already created for it.

    Safe to retry, clear or run twice: the shard's identity (input content hash + shard index) is
    in the state record next to the results and in the batch metadata, and both are checked first.

    :param shard: One shard entry of a plan from ``OpenAIBatchPrepareOperator``. (templated)
    :param conn_id: The OpenAI connection id. (templated)
    :param output_expires_after: When set, ``{"anchor": "created_at", "seconds": N}`` (N from 3600
        to 2592000): the batch's output and error files expire N seconds after they are created.
        Passed on with the shard, so follow-up rounds use it too. (templated)
    :param ledger_dir: The deployment's ledger folder (see :mod:`openai_batch.budget`); None: no
        admission control. (templated)
    :param token_limits: Enqueued-token limit per model, a JSON object (``*`` for any other model).
        A shard is uploaded only when it fits under its model's limit with the batches in flight.
        One that does not fit yet is returned without a batch (``batch_id`` None) and waits,
        deferred, in ``OpenAIBatchSensor``; one that alone is above the limit fails. (templated)
    :param capacity_poll: Seconds between two capacity checks of a waiting shard. (templated)
    """

    template_fields = (
        "shard",
        "conn_id",
        "output_expires_after",
        "ledger_dir",
        "token_limits",
        "capacity_poll",
    )

    def __init__(
        self,
        *,
        shard: dict[str, Any],
        conn_id: str = "openai_default",
        output_expires_after: dict[str, Any] | None = None,
        ledger_dir: str | None = None,
        token_limits: str | dict[str, Any] | None = None,
        capacity_poll: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.conn_id = conn_id
        self.output_expires_after = output_expires_after
        self.ledger_dir = ledger_dir
        self.token_limits = token_limits
        self.capacity_poll = capacity_poll

    @maps_api_errors
    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the shard and return it with its batch id."""
        from openai_batch.limits import check_output_expires_after
        from openai_batch.providers import batch_hook, provider_of

        provider = provider_of(str(self.conn_id))
        try:
            expiry = check_output_expires_after(self.output_expires_after, provider)
        except ValueError as err:
            raise AirflowFailException(f"connection {self.conn_id!r} ({provider}): {err}") from err
        from openai_batch.budget import ledger_for, parse_limits

        if self.shard.get("kind") == "borrowed":
            # Answered by another run's batch: nothing to upload; wait_for_batch waits for it.
            return {**self.shard, "batch_id": None}
        state_dir = to_path(self.shard["state_dir"])
        state = load_state(state_dir, self.shard)
        hook = batch_hook(str(self.conn_id), provider)
        try:
            limits = parse_limits(self.token_limits)
        except ValueError as err:
            raise AirflowFailException(str(err)) from err
        batch_id: str | None
        try:
            batch_id = submit_round(
                hook,
                state_dir,
                state,
                self.shard["source"],
                expiry,
                ledger_for(self.ledger_dir),
                limits,
                float(self.capacity_poll),
                shard=self.shard,
            )
        except NoCapacityError as err:
            if not err.ever_fits:
                raise AirflowFailException(too_big_message(err)) from err
            # Not waited for here: wait_for_batch is mapped over every submit's output, so a
            # submit waiting for capacity would hold back the waits that give capacity back.
            self.log.info("Capacity: %s; the shard waits for capacity in wait_for_batch (deferred)", err)
            batch_id = None
        shard = {**self.shard, "batch_id": batch_id}
        if expiry is not None:
            shard["output_expires_after"] = expiry
        return shard


class OpenAIBatchWriteResultsOperator(BaseOperator):
    """
    Join every shard's outcomes back to the input order and write results, rejects and manifest.

    Writes ``results.jsonl`` (one line per valid request, input order), ``rejects.jsonl`` and
    ``manifest.json`` into the file's result folder, each to a temporary name renamed into place,
    manifest last. Results of an earlier content of the same file are moved to
    ``_history/<sha16>/`` first. Returns the manifest summary, which is also the extra of the
    results asset's event. A skipped file or a dry run ends the task skipped, so no event is
    emitted for it. A file that
    could not be used gets its rejects and a manifest saying why, and then fails this task.

    Each file finishes on its own: with ``wait_task_id``, the task is not downstream of the waits
    but waits for its own shards' waits only (map indexes from ``shard_map_start``, see
    :func:`openai_batch.plans.numbered`), deferred while they wait in the triggerer, rescheduled
    while they still need a worker; a wait of this file that failed fails this task (clear both).

    :param plan: The plan from ``OpenAIBatchPrepareOperator`` for one input file. (templated)
    :param ledger_dir: The deployment's ledger folder: the file's actual cost is recorded there for
        the daily budget. None: not recorded. (templated)
    :param wait_task_id: The task mapped over the run's shards whose instances this file waits for.
        None: write at once (the caller ordered the tasks).
    :param poll_interval: Seconds between two checks of those waits (at most ``MAX_WRITE_CHECK`` while
        they wait in the triggerer, ``MAX_WRITE_RECHECK`` while they need a worker). (templated)
    """

    template_fields = ("plan", "ledger_dir", "poll_interval")
    operator_extra_links = (OpenAIBatchResultsLink(),)

    def __init__(
        self,
        *,
        plan: dict[str, Any],
        ledger_dir: str | None = None,
        wait_task_id: str | None = None,
        poll_interval: float | str = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.ledger_dir = ledger_dir
        self.wait_task_id = wait_task_id
        self.poll_interval = poll_interval

    def execute(self, context: Context) -> dict[str, Any]:
        """Write the three output files once the file's shards have ended; return the manifest summary."""
        from openai_batch.plans import RECHECK, WAIT, file_waits_verdict, mapped_count

        plan = self.plan
        if self.wait_task_id and mapped_count(plan) and "shard_map_start" in plan:  # type: ignore[arg-type]
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            dag_id, run_id = context["dag"].dag_id, str(context["run_id"])
            states = RuntimeTaskInstance.get_task_states(
                dag_id=dag_id, task_ids=[self.wait_task_id], run_ids=[run_id]
            )
            verdict, reason = file_waits_verdict(
                states.get(run_id) or {},
                self.wait_task_id,
                plan["shard_map_start"],
                mapped_count(plan),  # type: ignore[arg-type]
            )
            # With a triggerer, the write waits deferred while its waits run on workers too; under
            # dag.test(), which runs a trigger inline until it fires, only while they are deferred.
            inline = _runs_triggers_inline(context)
            if verdict == WAIT or (verdict == RECHECK and not inline):
                from openai_batch.triggers import FileWaitsTrigger

                self.log.info("%s: waiting, deferred, for its own shards (%s)", plan["key"], reason)
                self.defer(
                    trigger=FileWaitsTrigger(
                        dag_id=dag_id,
                        run_id=run_id,
                        task_id=self.wait_task_id,
                        start=int(plan["shard_map_start"]),
                        count=mapped_count(plan),  # type: ignore[arg-type]
                        poll_interval=min(float(self.poll_interval), MAX_WRITE_CHECK),
                        through_workers=not inline,
                    ),
                    method_name="execute_complete",
                )
            return self.execute_complete(context, {"verdict": verdict, "reason": reason})
        return self._write(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Act on the verdict of the file's waits: write, fail, or check again later."""
        from openai_batch.plans import FAIL, WRITE

        verdict, reason = event.get("verdict"), str(event.get("reason"))
        if verdict == WRITE:
            return self._write(context)
        if verdict == FAIL:
            raise AirflowFailException(
                f"{self.plan['key']}: {reason}; nothing written. Clear the failed tasks of this run "
                "(the wait and this write) to go on"
            )
        return self._recheck(reason)

    def _recheck(self, reason: str) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowRescheduleException

        delay = max(1.0, min(float(self.poll_interval), MAX_WRITE_RECHECK))
        self.log.info("%s: %s; checking again in %.0f s", self.plan["key"], reason, delay)
        raise AirflowRescheduleException(reschedule_date=datetime.now(UTC) + timedelta(seconds=delay))

    def _write(self, context: Context) -> dict[str, Any]:
        """Write the three output files and return the manifest summary (a pack: of each file)."""
        plan = self.plan
        if plan.get("postponed"):
            for member in plan.get("members") or [plan]:
                self._release(member)
            raise AirflowSkipException(
                f"{plan['key']}: {plan['postponed']} shard(s) did not fit in this run ([core] "
                "max_map_length); the shards it sent are kept, and the next run sends the rest and "
                "writes the results (the inbox watcher starts it; with the watcher off, trigger again)"
            )
        if plan.get("members") is not None:
            return self._write_pack(context)
        self._skip_unless_sent(context, plan)
        summary, error = self._write_file(context, plan)
        if error:
            raise AirflowFailException(error)
        self._emit_asset_event(context, summary)
        return summary

    def _skip_unless_sent(self, context: Context, plan: dict[str, Any]) -> None:
        """Raise AirflowSkipException for a file skipped (its results are complete) or in a dry run."""
        if plan.get("skipped") or plan.get("dry_run"):
            # Skipped, not succeeded: a task that ends skipped emits no asset event, so downstream
            # DAGs never run on a file that was not processed in this run.
            why = "its results are complete for this content" if plan.get("skipped") else "dry run"
            if plan.get("skipped"):
                self._mark_done(context, plan)
            raise AirflowSkipException(f"{plan['key']}: nothing to write ({why})")

    def _write_pack(self, context: Context) -> dict[str, Any]:
        """
        Write the results of every file of a pack from the outcomes of the contents that sent them.

        Each content's outcomes are gathered once; each file gets its own results (its ids, its
        order), rejects, manifest and summary. One asset event carries the summaries of the files
        written (``extra.files``). Files that could not be used are written too, then fail the task.
        """
        from contextlib import ExitStack

        from openai_batch.results_io import ContentOutcomes

        plan = self.plan
        units = {u["state_dir"]: u for u in plan.get("units") or []}
        summaries: list[dict[str, Any]] = []
        errors: list[str] = []
        actual: dict[str, float | None] = {}  # the cost of each pack content's files written here
        with ExitStack() as stack:
            opened: dict[str, ContentOutcomes] = {}
            for member in plan["members"]:
                try:
                    self._skip_unless_sent(context, member)
                except AirflowSkipException as skipped:
                    self.log.info("%s", skipped)
                    continue
                packed_in = member.get("packed_in")
                outcomes = None
                if packed_in:
                    outcomes = opened.get(packed_in)
                    if outcomes is None:
                        unit_dir = to_path(packed_in)
                        states = [load_state(unit_dir, shard) for shard in units[packed_in]["shards"]]
                        outcomes = opened[packed_in] = stack.enter_context(ContentOutcomes(unit_dir, states))
                summary, error = self._write_file(context, member, outcomes)
                if packed_in:
                    cost = summary["estimated_cost_usd"]
                    before = actual.get(packed_in, 0.0)
                    actual[packed_in] = None if before is None or cost is None else before + cost
                if error:
                    errors.append(error)
                else:
                    summaries.append(summary)
        for packed_in, cost in actual.items():
            unit = units[packed_in]
            self._record_spending(context, unit["key"], unit.get("estimated_total_cost_usd"), cost)
        if summaries:
            self._emit_asset_event(context, {"files": summaries})
        if errors:
            raise AirflowFailException("; ".join(errors))
        if not summaries:
            raise AirflowSkipException(f"{plan['key']}: nothing to write (every file is done or a dry run)")
        self.log.info("%s: results written for %s file(s)", plan["key"], len(summaries))
        return {"key": plan["key"], "files": summaries}

    def _write_file(
        self, context: Context, plan: dict[str, Any], pack: ContentOutcomes | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """Write one file's three output files; return its manifest summary and its error, if any.

        ``pack``: the outcomes of the pack content that sent the file's requests (``packed_in``).
        """
        from openai_batch.results_io import build_manifest, merge_shards

        out = to_path(plan["out_dir"])
        state_dir = to_path(plan["state_dir"])
        self._archive_earlier_content(out, plan["input_sha256"])
        with open_atomic(out / RESULTS_FILE) as raw:
            digest = _DigestWriter(raw)
            if pack is not None:
                counts, states = pack.write_file(state_dir, digest)
            else:
                states = [load_state(state_dir, shard) for shard in plan["shards"]]
                counts = merge_shards(state_dir, states, digest)
        with open_atomic(out / REJECTS_FILE) as raw:
            rejects = _DigestWriter(raw)
            with (state_dir / REJECTS_FILE).open("rb") as fin:
                shutil.copyfileobj(fin, rejects, 1 << 20)
        manifest = build_manifest(plan, states, counts)
        if pack is not None:
            manifest["packed_in"] = plan["packed_in"]  # its batches are shared with the pack's files
        manifest["results_sha256"], manifest["results_bytes"] = digest.hexdigest(), digest.size
        manifest["rejects_sha256"] = rejects.hexdigest()
        manifest["input_changed_after_taken"] = self._input_changed(plan)
        manifest["estimate"] = {
            "input_tokens": plan.get("estimated_input_tokens", 0),
            "output_tokens": plan.get("estimated_output_tokens"),
            "cost_usd": plan.get("estimated_total_cost_usd"),
        }
        manifest["actual"] = {
            "input_tokens": manifest["usage"]["input_tokens"],
            "output_tokens": manifest["usage"]["output_tokens"],
            "cost_usd": manifest["estimated_cost_usd"],
        }
        manifest["run_id"], manifest["run_type"] = str(context.get("run_id")), run_type(context)
        write_json(out / MANIFEST_FILE, manifest)
        self._mark_done(context, plan)
        from openai_batch.metrics import emit_file_metrics

        emit_file_metrics(manifest, states)
        if pack is None:  # a pack content's cost is recorded once, under its own key (_write_pack)
            self._record_spending(
                context, plan["key"], manifest["estimate"]["cost_usd"], manifest["actual"]["cost_usd"]
            )
        summary = {
            k: manifest[k]
            for k in ("input", "input_sha256", "counts", "usage", "estimated_cost_usd", "by_model")
        }
        summary["results"] = url_of(out / RESULTS_FILE)
        if plan.get("error"):
            return summary, f"{plan['key']}: {plan['error']} (rejects and manifest in {out})"
        self.log.info(
            "%s: %s requests: %s succeeded, %s failed, %s expired, %s cancelled, %s rejected; "
            "%s input / %s output tokens; estimated cost %s; results in %s",
            plan["key"],
            manifest["counts"]["total"],
            manifest["counts"]["succeeded"],
            manifest["counts"]["failed"],
            manifest["counts"]["expired"],
            manifest["counts"]["cancelled"],
            manifest["counts"]["rejected"],
            manifest["usage"]["input_tokens"],
            manifest["usage"]["output_tokens"],
            format_usd(manifest["estimated_cost_usd"]),
            out,
        )
        return summary, None

    def _mark_done(self, context: Context, plan: dict[str, Any]) -> None:
        """Record in the arrival record that this file (as it was taken) has its results."""
        self._mark_arrival(plan, "done", time.time(), run_id=str(context.get("run_id")))

    def _release(self, plan: dict[str, Any]) -> None:
        """Let the inbox watcher announce this file again at once: the next run sends the rest."""
        self._mark_arrival(plan, "announced", 0.0)

    def _mark_arrival(self, plan: dict[str, Any], state: str, at: float, run_id: str | None = None) -> None:
        from openai_batch.arrivals import FileStat, arrivals_for

        stat, record = plan.get("input_stat"), arrivals_for(self.ledger_dir)
        if record is None or not isinstance(stat, dict):
            return
        taken = FileStat(str(plan["source"]), int(stat["size"]), int(stat["mtime_ns"]), int(stat["ino"]))
        record.mark([taken], state, at, run_id=run_id)  # type: ignore[arg-type]

    def _record_spending(
        self, context: Context, name: str, estimated_usd: float | None, actual_usd: float | None
    ) -> None:
        """Record what the content ``name`` cost (None: a model without a price) for the daily budget."""
        from openai_batch.budget import ledger_for

        ledger = ledger_for(self.ledger_dir)
        if ledger is None:
            return
        ledger.record_actual(
            run_id=str(context["run_id"]), name=name, actual_usd=actual_usd, estimated_usd=estimated_usd
        )
        self.log.info(
            "%s: cost estimated %s, actual %s (recorded for the daily budget)",
            name,
            format_usd(estimated_usd),
            format_usd(actual_usd),
        )

    def _archive_earlier_content(self, out: ObjectStoragePath, input_sha256: str) -> None:
        """Move the results of another content of this file to ``_history/<sha16>/``; nothing is lost."""
        from openai_batch.identity import history_folder

        manifest = read_json_or_set_aside(out / MANIFEST_FILE, "it is written again", self.log)
        if not isinstance(manifest, dict):
            return
        earlier = manifest.get("input_sha256")
        if not earlier or earlier == input_sha256:
            return
        dest = out / history_folder(earlier)
        for name in (RESULTS_FILE, REJECTS_FILE, MANIFEST_FILE):  # the manifest last
            if (out / name).exists():
                move(out / name, dest / name)
        self.log.info("Results of the earlier content (sha256 %s) moved to %s", earlier, dest)

    def _input_changed(self, plan: dict[str, Any]) -> bool:
        src = to_path(plan["source"])
        now = stat_of(src) if src.exists() else None
        if now == (plan.get("size"), plan.get("mtime")):
            return False
        self.log.warning(
            "%s changed after it was taken (size/mtime %s -> %s): these results are for the content "
            "with sha256 %s; the next run takes the new content",
            plan["key"],
            (plan.get("size"), plan.get("mtime")),
            now,
            plan["input_sha256"],
        )
        return True

    def _emit_asset_event(self, context: Context, summary: dict[str, Any]) -> None:
        extra = json.loads(json.dumps(summary))
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra


class _DigestWriter:
    """A binary writer that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._out.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
