"""Operators: prepare request files, submit batches idempotently, and write joined results."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from openai_batch.storage import (
    copy_file,
    local_dir,
    read_json,
    safe_name,
    to_path,
    url_of,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from openai_batch.hooks import OpenAIBatchHook
    from openai_batch.state import ShardState

#: Names inside each input file's result folder (contract: results, rejects, manifest).
RESULTS_FILE = "results.jsonl"
REJECTS_FILE = "rejects.jsonl"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
STATE_DIR = "_state"


def run_partition(context: Context) -> str:
    """Return the run's partition key: the logical date, or the run's date when it has none."""
    logical_date = context.get("logical_date")
    if logical_date is not None:
        return str(logical_date.strftime("%Y-%m-%d"))
    return str(context["dag_run"].run_after.strftime("%Y-%m-%d"))


def output_dir(results_root: str, partition: str, source: str) -> ObjectStoragePath:
    """Return ``<results>/<partition>/<stem>`` for an input file; the stem is made path-safe."""
    stem = safe_name(Path(source.rstrip("/").rsplit("/", 1)[-1]).stem)
    return to_path(results_root) / safe_name(partition) / stem


def sha256_of(path: ObjectStoragePath, chunk_size: int = 1 << 20) -> str:
    """Return the SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fin:
        while chunk := fin.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def load_state(state_dir: ObjectStoragePath, shard_ref: dict[str, Any]) -> ShardState:
    """Return the shard's state record, or a new one when none was written yet."""
    from openai_batch.state import Round, ShardState

    path = state_dir / f"shard-{shard_ref['index']:05d}.state.json"
    if path.exists():
        state = ShardState.from_dict(read_json(path))
        # A record of other content (the file changed) or of a forced re-run is history, not ours.
        if state.identity == shard_ref["identity"]:
            return state
    return ShardState(
        identity=shard_ref["identity"],
        index=shard_ref["index"],
        endpoint=shard_ref["endpoint"],
        model=shard_ref["model"],
        rounds=[Round(round=0, file=shard_ref["file"], requests=shard_ref["requests"])],
    )


def save_state(state_dir: ObjectStoragePath, state: ShardState) -> None:
    """Write the shard's state record."""
    write_json(state_dir / f"shard-{state.index:05d}.state.json", state.to_dict())


def submit_round(
    hook: OpenAIBatchHook,
    state_dir: ObjectStoragePath,
    state: ShardState,
    source: str,
    output_expires_after: dict[str, Any] | None = None,
) -> str:
    """
    Make sure the latest round of ``state`` has a batch, creating one only if none exists.

    The batch is looked up by its identity first (a crash between create and record, or another
    run on the same content), then the request file is uploaded once and the batch created once.
    The state record is written after each step so that a retry resumes where this one stopped.
    """
    from openai_batch.state import batch_metadata

    rnd = state.current
    if rnd.batch_id:
        hook.log.info("Shard %s round %s already has batch %s", state.identity, rnd.round, rnd.batch_id)
        return rnd.batch_id
    metadata = batch_metadata(state.identity, rnd.round, rnd.attempt, source)
    existing = hook.find_batch(metadata)
    if existing is not None:
        hook.log.info("Re-attaching to batch %s created earlier for %s", existing.id, state.identity)
        rnd.batch_id, rnd.input_file_id, rnd.status = existing.id, existing.input_file_id, existing.status
        save_state(state_dir, state)
        return existing.id
    if not rnd.input_file_id:
        with (state_dir / rnd.file).open("rb") as fin:
            uploaded = hook.upload_batch_file(
                fin, filename=f"{state.identity}-r{rnd.round}a{rnd.attempt}.jsonl"
            )
        rnd.input_file_id = uploaded.id
        save_state(state_dir, state)
        hook.log.info("Uploaded %s (%s requests) as %s", rnd.file, rnd.requests, uploaded.id)
    batch = hook.create_batch_once(
        rnd.input_file_id, state.endpoint, metadata, output_expires_after=output_expires_after
    )
    rnd.batch_id, rnd.status = batch.id, batch.status
    save_state(state_dir, state)
    hook.log.info("Created batch %s for shard %s round %s", batch.id, state.identity, rnd.round)
    return batch.id


class OpenAIBatchPrepareOperator(BaseOperator):
    """
    Validate, normalize and split one JSONL request file into shards ready to upload.

    Returns a plan (XCom) with one entry per shard. Nothing is uploaded here. A file whose results
    already exist for the same content hash is skipped unless ``force`` is set.

    :param source: The input file, a path or object-storage URL. (templated)
    :param results_root: The results root; this file's folder is ``<root>/<partition>/<stem>``. (templated)
    :param endpoint: Endpoint for short lines and lines without a url. (templated)
    :param model: When set, overrides the model of every request. (templated)
    :param max_requests_per_batch: At most this many requests per batch (ceiling 50,000). (templated)
    :param plan_only: Write the plan and the rejects only; upload nothing (the ``dry_run`` param). (templated)
    :param force: Process the file again even if its results exist for the same content. (templated)
    :param partition: The partition key; defaults to the run's logical date or run date. (templated)
    """

    template_fields = (
        "source",
        "results_root",
        "endpoint",
        "model",
        "max_requests_per_batch",
        "plan_only",
        "force",
        "partition",
    )

    def __init__(
        self,
        *,
        source: str,
        results_root: str,
        endpoint: str = "/v1/chat/completions",
        model: str | None = None,
        max_requests_per_batch: int = 50_000,
        plan_only: bool = False,
        force: bool = False,
        partition: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.results_root = results_root
        self.endpoint = endpoint
        self.model = model
        self.max_requests_per_batch = max_requests_per_batch
        self.plan_only = plan_only
        self.force = force
        self.partition = partition

    def execute(self, context: Context) -> dict[str, Any]:
        """Prepare the file and return its plan."""
        from openai_batch.limits import DEFAULT_LIMITS, BatchLimits
        from openai_batch.prepare import NoValidRequestsError, default_id_prefix, prepare_requests
        from openai_batch.state import shard_identity

        partition = self.partition or run_partition(context)
        src = to_path(self.source)
        out = output_dir(self.results_root, partition, self.source)
        state_dir = out / STATE_DIR
        base = {
            "source": self.source,
            "partition": partition,
            "out_dir": url_of(out),
            "state_dir": url_of(state_dir),
        }
        manifest = out / MANIFEST_FILE
        if not self.force and manifest.exists():
            digest = sha256_of(src)
            if read_json(manifest).get("input_sha256") == digest:
                self.log.info(
                    "Results for %s (sha256 %s) exist in %s; skipping (set force to redo)",
                    self.source,
                    digest,
                    out,
                )
                return {**base, "input_sha256": digest, "skipped": True, "dry_run": False, "shards": []}
        limits = BatchLimits(
            max_requests=max(1, min(int(self.max_requests_per_batch), DEFAULT_LIMITS.max_requests)),
            max_bytes=DEFAULT_LIMITS.max_bytes,
            max_embedding_inputs=DEFAULT_LIMITS.max_embedding_inputs,
            max_request_bytes=DEFAULT_LIMITS.max_request_bytes,
        )
        local = local_dir(state_dir)
        with tempfile.TemporaryDirectory(prefix="openai-batch-") as tmp:
            work = local if local is not None else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            try:
                with src.open("rb") as fin:
                    result = prepare_requests(
                        fin,
                        source_name=self.source,
                        work_dir=work,
                        endpoint=self.endpoint,
                        model=self.model or None,
                        limits=limits,
                        # Ids from the file name, not its folder: the same file re-attaches anywhere.
                        id_prefix=default_id_prefix(self.source.rstrip("/").rsplit("/", 1)[-1]),
                    )
            except NoValidRequestsError as err:
                copy_file(work / REJECTS_FILE, out / REJECTS_FILE)
                raise AirflowFailException(str(err)) from err
            if local is None:
                for name in [Path(s.path).name for s in result.shards] + ["order.txt", REJECTS_FILE]:
                    copy_file(work / name, state_dir / name)
        self.log.info(
            "%s: %s lines, %s valid, %s rejected, %s shard(s), ~%s input tokens, estimated cost %s USD",
            self.source,
            result.lines,
            result.valid,
            result.rejected,
            len(result.shards),
            result.estimated_input_tokens,
            result.estimated_cost_usd,
        )
        salt = f"-f{hashlib.sha256(context['run_id'].encode()).hexdigest()[:8]}" if self.force else ""
        shards = [
            {
                **base,
                "index": s.index,
                "identity": shard_identity(result.input_sha256, s.sha256, s.index, salt),
                "file": Path(s.path).name,
                "endpoint": s.endpoint,
                "model": s.model,
                "requests": s.requests,
            }
            for s in result.shards
        ]
        plan = {
            **base,
            "input_sha256": result.input_sha256,
            "lines": result.lines,
            "valid": result.valid,
            "rejected": result.rejected,
            "estimated_input_tokens": result.estimated_input_tokens,
            "estimated_cost_usd": result.estimated_cost_usd,
            "shards": shards,
            "skipped": False,
            "dry_run": bool(self.plan_only),
        }
        write_json(state_dir / PLAN_FILE, plan)
        if self.plan_only:
            write_json(out / PLAN_FILE, plan)
            copy_file(state_dir / REJECTS_FILE, out / REJECTS_FILE)
            self.log.info("Dry run: plan written to %s; nothing uploaded", out / PLAN_FILE)
            return {**plan, "shards": []}
        return plan


class OpenAIBatchSubmitOperator(BaseOperator):
    """
    Upload one shard and create its batch, or re-attach to the batch already created for it.

    Safe to retry, clear or run twice: the shard's identity (input content hash + shard index) is
    in the state record next to the results and in the batch metadata, and both are checked first.

    :param shard: One shard entry of a plan from ``OpenAIBatchPrepareOperator``. (templated)
    :param conn_id: The OpenAI connection id.
    :param output_expires_after: When set, ``{"anchor": "created_at", "seconds": N}`` (N from 3600
        to 2592000): the batch's output and error files expire N seconds after they are created.
        Passed on with the shard, so follow-up rounds use it too. (templated)
    """

    template_fields = ("shard", "output_expires_after")

    def __init__(
        self,
        *,
        shard: dict[str, Any],
        conn_id: str = "openai_default",
        output_expires_after: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.conn_id = conn_id
        self.output_expires_after = output_expires_after

    def execute(self, context: Context) -> dict[str, Any]:
        """Submit the shard and return it with its batch id."""
        from openai_batch.hooks import OpenAIBatchHook
        from openai_batch.limits import check_output_expires_after

        try:
            expiry = check_output_expires_after(self.output_expires_after)
        except ValueError as err:
            raise AirflowFailException(str(err)) from err
        state_dir = to_path(self.shard["state_dir"])
        state = load_state(state_dir, self.shard)
        hook = OpenAIBatchHook(conn_id=self.conn_id)
        batch_id = submit_round(hook, state_dir, state, self.shard["source"], expiry)
        shard = {**self.shard, "batch_id": batch_id}
        if expiry is not None:
            shard["output_expires_after"] = expiry
        return shard


class OpenAIBatchWriteResultsOperator(BaseOperator):
    """
    Join every shard's outcomes back to the input order and write results, rejects and manifest.

    Writes ``results.jsonl`` (one line per valid request, input order), ``rejects.jsonl`` and
    ``manifest.json`` into the file's result folder, and returns the manifest summary.

    :param plan: The plan from ``OpenAIBatchPrepareOperator`` for one input file. (templated)
    """

    template_fields = ("plan",)

    def __init__(self, *, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def execute(self, context: Context) -> dict[str, Any]:
        """Write the three output files and return the manifest."""
        from openai_batch.results_io import build_manifest, merge_shards

        plan = self.plan
        if plan.get("skipped") or plan.get("dry_run"):
            self.log.info(
                "%s: nothing to write (%s)", plan["source"], "skipped" if plan.get("skipped") else "dry run"
            )
            return {
                "input": plan["source"],
                "skipped": bool(plan.get("skipped")),
                "dry_run": bool(plan.get("dry_run")),
            }
        out = to_path(plan["out_dir"])
        state_dir = to_path(plan["state_dir"])
        states = [load_state(state_dir, shard) for shard in plan["shards"]]
        counts = merge_shards(state_dir, states, out / RESULTS_FILE)
        copy_file(state_dir / REJECTS_FILE, out / REJECTS_FILE)
        manifest = build_manifest(plan, states, counts)
        write_json(out / MANIFEST_FILE, manifest)
        self.log.info(
            "%s: %s requests: %s succeeded, %s failed, %s expired, %s cancelled, %s rejected; "
            "%s input / %s output tokens; estimated cost %s USD; results in %s",
            plan["source"],
            manifest["counts"]["total"],
            manifest["counts"]["succeeded"],
            manifest["counts"]["failed"],
            manifest["counts"]["expired"],
            manifest["counts"]["cancelled"],
            manifest["counts"]["rejected"],
            manifest["usage"]["input_tokens"],
            manifest["usage"]["output_tokens"],
            manifest["estimated_cost_usd"],
            out,
        )
        summary = {k: manifest[k] for k in ("input", "input_sha256", "counts", "usage", "estimated_cost_usd")}
        summary["results"] = url_of(out / RESULTS_FILE)
        self._emit_asset_event(context, summary)
        return summary

    def _emit_asset_event(self, context: Context, summary: dict[str, Any]) -> None:
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = json.loads(json.dumps(summary))
