"""Move batch outcomes between the API, the state folder and the result files.

Glue between the pure ``results`` module and storage: downloads a round's output and error files,
picks the requests to resubmit, merges every round into input order, and builds the manifest.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from openai_batch.layout import ORDER_FILE, ORDER_LINES_FILE
from openai_batch.results import ResultCounts
from openai_batch.reuse import REUSED_FILE
from openai_batch.storage import check_batch_id, copy_file, iter_lines, local_dir, to_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from openai_batch.provider import BatchProvider
    from openai_batch.results import ResultStatus, ResultStore, RoundCheck
    from openai_batch.state import Round, ShardState

log = logging.getLogger(__name__)

#: How a request with no line in any file of its batch ended, by the batch's final status.
_MISSING_STATUS: dict[str, ResultStatus] = {"expired": "expired", "cancelled": "cancelled"}


def round_files(state_dir: ObjectStoragePath, rnd: Round) -> list[ObjectStoragePath]:
    """Return the downloaded output and error files of a round, in that order."""
    if not rnd.batch_id:
        return []
    folder = state_dir / "batches"
    return [
        folder / f"{check_batch_id(rnd.batch_id)}.{kind}.jsonl"
        for kind, file_id in (("output", rnd.output_file_id), ("error", rnd.error_file_id))
        if file_id
    ]


def download_round(hook: BatchProvider, state_dir: ObjectStoragePath, rnd: Round) -> None:
    """Stream a round's output and error files (either may be absent) into the state folder."""
    (state_dir / "batches").mkdir(parents=True, exist_ok=True)
    for path, file_id in zip(
        round_files(state_dir, rnd),
        [f for f in (rnd.output_file_id, rnd.error_file_id) if f],
        strict=True,
    ):
        with path.open("wb") as fout:
            size = hook.download_file(file_id, fout)
        hook.log.info("Downloaded %s (%s bytes) to %s", file_id, size, path)
    if rnd.usage is None and rnd.output_file_id:
        # The API reported no usage for the batch (Anthropic's never does): sum its answers'.
        from openai_batch.results import usage_of_lines

        rnd.usage = usage_of_lines(iter_lines(round_files(state_dir, rnd)[0]))


def nothing_to_retry(state_dir: ObjectStoragePath, rnd: Round) -> bool:
    """
    Return True when a round's batch answered every request with success: no retry file is needed.

    The service's counts are checked against the files themselves: no error file, and every
    custom_id sent in the round answered by a success line of the output file (ids compared, not
    lines counted: a repeated or foreign line cannot stand in for a missing one).
    """
    from openai_batch.results import request_ids

    counts = rnd.request_counts or {}
    if rnd.status != "completed" or rnd.error_file_id or not rnd.output_file_id:
        return False
    if counts.get("failed") or counts.get("completed") != rnd.requests:
        return False
    sent = set(request_ids(iter_lines(state_dir / rnd.file)))
    return sent <= _final_ids(round_files(state_dir, rnd))


def _final_ids(paths: list[ObjectStoragePath]) -> set[str]:
    """
    Return the custom_ids given a final outcome by any line of ``paths``.

    Lines without an id or not JSON are skipped here: :func:`merge_shards` counts them.
    """
    from openai_batch.results import is_final_line

    done: set[str] = set()
    for path in paths:
        for line in iter_lines(path):
            if line.strip():
                try:
                    custom_id, final = is_final_line(line)
                except ValueError:
                    continue
                if final:
                    done.add(custom_id)
    return done


def write_retry_file(state_dir: ObjectStoragePath, rnd: Round, name: str) -> int:
    """
    Write the requests of ``rnd`` that did not reach a final outcome to ``name``; return their count.

    Final outcomes are successes and non-retryable failures. Everything else is retried: expired,
    cancelled, 429/5xx failures, and requests that appear in neither file (lines of ids not sent
    in the round do not count for any request).
    """
    from openai_batch.results import request_id

    done = _final_ids(round_files(state_dir, rnd))
    count = 0
    with (state_dir / name).open("wb") as fout:
        for line in iter_lines(state_dir / rnd.file):
            if line.strip() and request_id(line) not in done:
                fout.write(line if line.endswith(b"\n") else line + b"\n")
                count += 1
    return count


def merge_shards(state_dir: ObjectStoragePath, states: list[ShardState], dest: BinaryIO | Any) -> MergeCounts:
    """
    Write ``results.jsonl`` in input order from every round of every shard; return the counts.

    Rounds are applied in order, so a later round's outcome replaces an earlier one. A request with
    no line in its round's files ends ``expired`` or ``cancelled`` when its batch did, else ``failed``.
    A batch that failed validation fails each of its requests with the batch's first error.
    Each round's files are checked against the ids sent in it (:class:`~openai_batch.results.RoundCheck`):
    what does not match is skipped, logged and returned in ``service_anomalies``, never fatal.
    """
    with ContentOutcomes(state_dir, states) as outcomes:
        return outcomes.write(state_dir, dest)


class ContentOutcomes:
    """
    Every outcome of one content's rounds (and its carried-over, cached and borrowed answers), in a
    scratch store, to write the results of the content, or of each file a pack content sends.

    Use as a context manager: the store is a temporary file, removed on exit.
    """

    def __init__(self, state_dir: ObjectStoragePath, states: list[ShardState]) -> None:
        self.state_dir = state_dir
        self.states = states
        self.anomalies: dict[str, dict[str, int]] = {}
        self._round_ids: dict[str, set[str]] = {}

    def __enter__(self) -> ContentOutcomes:
        from openai_batch.results import ResultStore

        self._tmp = tempfile.TemporaryDirectory(prefix="openai-batch-merge-")
        self.store = ResultStore(Path(self._tmp.name) / "results.sqlite")
        try:
            self._fill()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()
        self._tmp.cleanup()

    def _fill(self) -> None:
        state_dir, store = self.state_dir, self.store
        reused = state_dir / REUSED_FILE
        if reused.exists():
            store.add_final_lines(iter_lines(reused))
        self.cached_ids = _apply_cached(store, state_dir)
        borrowed, self.borrowed_ids = _apply_borrowed(store, state_dir)
        for state in self.states:
            # The store keeps the outcome of the highest sequence number: the position in the
            # shard's history, so a token-limit resubmission of a round also counts as later.
            # Rounds of a borrowed entry (requests its owner gave up) come after the owner's.
            offset = BORROWER_ROUNDS if state.identity in borrowed else 0
            for seq, rnd in enumerate(state.rounds):
                if rnd.batch_id and rnd.status:
                    check = _apply_round(store, state_dir, rnd, seq + offset)
                    if check is not None and check.total:
                        self.anomalies[rnd.batch_id] = _log_anomalies(state.index, rnd, check)

    def write(
        self, order_dir: ObjectStoragePath, dest: BinaryIO | Any, ids: set[str] | None = None
    ) -> MergeCounts:
        """
        Write the results of the requests in ``order_dir``'s order (the content's state folder, or a
        packed file's, whose ``ids`` are given) to ``dest``; return their counts.
        """
        from openai_batch.results import read_order, read_order_lines

        store = self.store
        tmp = Path(self._tmp.name)
        order = _local_copy(order_dir / ORDER_FILE, tmp)
        # Line numbers: absent from state folders written before they were kept.
        lines = (
            _local_copy(order_dir / ORDER_LINES_FILE, tmp)
            if (order_dir / ORDER_LINES_FILE).exists()
            else None
        )
        borrowed_ids, cached_ids = self.borrowed_ids, self.cached_ids
        if ids is not None:
            borrowed_ids, cached_ids = borrowed_ids & ids, cached_ids & ids
        answered = _still_borrowed(store, borrowed_ids)
        from_cache = sorted(_still_borrowed_ids(store, cached_ids))
        counts = store.write_results(
            read_order(order), dest, read_order_lines(lines) if lines is not None else None
        )
        counts.service_anomalies = self.anomalies
        # Borrowed and cached answers are stored like carried-over ones (not paid here, no usage).
        counts.reused -= answered + len(from_cache)
        return MergeCounts(
            **{f.name: getattr(counts, f.name) for f in fields(counts)},
            borrowed=answered,
            from_cache=from_cache,
        )

    def write_file(
        self, file_state_dir: ObjectStoragePath, dest: BinaryIO | Any
    ) -> tuple[MergeCounts, list[ShardState]]:
        """
        Write the results of one file this pack content sends, from its state folder's order.

        Returns its counts and the content's shards as the file saw them: each round with the
        file's requests in it, their usage and nothing else (rounds without any are left out), so
        its manifest counts and prices its own requests only.
        """
        from openai_batch.results import read_order

        ids = set(read_order(_local_copy(file_state_dir / ORDER_FILE, Path(self._tmp.name))))
        reused = file_state_dir / REUSED_FILE
        if reused.exists():
            self.store.add_final_lines(iter_lines(reused))
        counts = self.write(file_state_dir, dest, ids)
        usage = self.store.usage_by_batch(ids)
        states = []
        for state in self.states:
            rounds = []
            for rnd in state.rounds:
                sent = len(ids & self._ids_of(rnd.file))
                if not sent:
                    continue
                used = usage.get(rnd.batch_id or "")
                rounds.append(replace(rnd, requests=sent, usage=None if used is None else used.as_api()))
            if rounds:
                states.append(replace(state, rounds=rounds))
        return counts, states

    def _ids_of(self, name: str) -> set[str]:
        """Return the custom_ids of a request file of the content (read once)."""
        from openai_batch.results import request_ids

        found = self._round_ids.get(name)
        if found is None:
            found = self._round_ids[name] = set(request_ids(iter_lines(self.state_dir / name)))
        return found


@dataclass
class MergeCounts(ResultCounts):
    """The counts of a merged results file, with the outcomes answered by another content's batches.

    :param borrowed: requests answered by another run's batch (see :mod:`openai_batch.records`).
    :param from_cache: custom_ids answered from the answer cache (see :mod:`openai_batch.answers`).
    """

    borrowed: int = 0
    from_cache: list[str] = field(default_factory=list)


#: Round numbers of a borrowed entry's own batches start here, after every round of its owner.
BORROWER_ROUNDS = 1_000_000


def _still_borrowed(store: ResultStore, ids: set[str]) -> int:
    """Return how many borrowed ids keep an owner's outcome (not one of a round sent here)."""
    return len(_still_borrowed_ids(store, ids))


def _still_borrowed_ids(store: ResultStore, ids: set[str]) -> list[str]:
    """Return the ids among ``ids`` whose outcome is a carried-over one (not of a round sent here)."""
    from openai_batch.results import REUSED_ROUND

    kept = []
    for custom_id in ids:
        found = store.get(custom_id)
        if found is not None and found.round == REUSED_ROUND:
            kept.append(custom_id)
    return kept


def _apply_cached(store: ResultStore, state_dir: ObjectStoragePath) -> set[str]:
    """Store the answers this content took from the answer cache; return their custom_ids."""
    from openai_batch.answers import CACHED_FILE
    from openai_batch.results import request_ids

    path = state_dir / CACHED_FILE
    if not path.exists():
        return set()
    store.add_final_lines(iter_lines(path))
    return set(request_ids(iter_lines(path)))


def _apply_borrowed(store: ResultStore, state_dir: ObjectStoragePath) -> tuple[set[str], set[str]]:
    """
    Apply the owners' answers to the requests this content borrowed; return identities and ids.

    Each borrowed entry of the plan names its owner's state folder and shard: that shard's rounds
    are applied, restricted to the borrowed custom_ids (an outcome of the owner for any other id is
    never used), as carried-over outcomes: not paid here, so outside this file's usage and cost.
    """
    from openai_batch.layout import BORROWED, PLAN_FILE
    from openai_batch.results import REUSED_ROUND, request_ids
    from openai_batch.state_store import load_state
    from openai_batch.storage import read_json

    plan_path = state_dir / PLAN_FILE
    identities: set[str] = set()
    all_ids: set[str] = set()
    if not plan_path.exists():
        return identities, all_ids
    for entry in read_json(plan_path).get("shards") or []:
        if entry.get("kind") != BORROWED:
            continue
        ids = set(request_ids(iter_lines(state_dir / entry["file"])))
        identities.add(entry["identity"])
        all_ids |= ids
        owner_dir = to_path(entry["owner_state_dir"])
        owner_plan = read_json(owner_dir / PLAN_FILE)
        shard = next(s for s in owner_plan["shards"] if s["index"] == entry["owner_shard"])
        owner = load_state(owner_dir, shard)
        for rnd in owner.rounds:
            if rnd.batch_id and rnd.status:
                _apply_owner_round(store, owner_dir, rnd, ids, REUSED_ROUND)
    return identities, all_ids


def _apply_owner_round(
    store: ResultStore, owner_dir: ObjectStoragePath, rnd: Round, ids: set[str], seq: int
) -> None:
    """Apply one round of another content's shard, only for the custom_ids in ``ids``."""
    from openai_batch.results import request_ids

    assert rnd.batch_id is not None
    sent = [i for i in request_ids(iter_lines(owner_dir / rnd.file)) if i in ids]
    if not sent:
        return
    if rnd.status == "failed":
        first = rnd.errors[0] if rnd.errors else {}
        store.mark_missing(
            sent,
            status="failed",
            batch_id=rnd.batch_id,
            round=seq,
            code=str(first.get("code") or "batch_failed"),
            message=str(first.get("message") or "the batch failed validation"),
        )
        return
    for path in round_files(owner_dir, rnd):
        lines = (line for line in iter_lines(path) if line.strip() and request_id_of_output(line) in ids)
        store.add_lines(lines, batch_id=rnd.batch_id, round=seq)
    missing = list(store.without_outcome_of(sent, rnd.batch_id))
    if missing:
        status = _MISSING_STATUS.get(rnd.status or "", "failed")
        store.mark_missing(
            missing,
            status=status,
            batch_id=rnd.batch_id,
            round=seq,
            code=f"batch_{status}" if status != "failed" else "missing_result",
            message=f"batch {rnd.batch_id} ended {rnd.status} without a result for this request",
        )


def request_id_of_output(line: bytes) -> str | None:
    """Return the custom_id of an output or error file line, None for a line without one."""
    from openai_batch.results import is_final_line

    try:
        return is_final_line(line)[0]
    except ValueError:  # json.JSONDecodeError included: a stray line is no borrowed answer
        return None


def _log_anomalies(shard: int, rnd: Round, check: RoundCheck) -> dict[str, int]:
    """Warn about a round whose files did not match its requests; return the counts."""
    log.warning(
        "Batch %s (shard %s, round %s): its files do not match the %s request(s) sent: "
        "%s missing, %s duplicate, %s foreign, %s without custom_id, %s unparseable line(s); e.g. %s",
        rnd.batch_id,
        shard,
        rnd.round,
        len(check.sent),
        *(check.counts[kind] for kind in ("missing", "duplicate", "foreign", "without_id", "unparseable")),
        "; ".join(f"{kind}: {example}" for kind, example in check.examples),
    )
    return dict(check.counts)


def _apply_round(store: ResultStore, state_dir: ObjectStoragePath, rnd: Round, seq: int) -> RoundCheck | None:
    """Store one round's outcomes; return the check of its files (None for a failed batch: no files)."""
    from openai_batch.results import RoundCheck, request_ids

    assert rnd.batch_id is not None
    if rnd.status == "failed":
        first = rnd.errors[0] if rnd.errors else {}
        store.mark_missing(
            request_ids(iter_lines(state_dir / rnd.file)),
            status="failed",
            batch_id=rnd.batch_id,
            round=seq,
            code=str(first.get("code") or "batch_failed"),
            message=str(first.get("message") or "the batch failed validation"),
        )
        return None
    sent = list(request_ids(iter_lines(state_dir / rnd.file)))
    check = RoundCheck(sent)
    for path in round_files(state_dir, rnd):
        store.add_lines(iter_lines(path), batch_id=rnd.batch_id, round=seq, check=check)
    if rnd.status == "completed":
        # An expired or cancelled batch may leave requests unanswered; a completed one may not.
        check.set_missing()
    missing = list(store.without_outcome_of(sent, rnd.batch_id))
    if missing:
        status = _MISSING_STATUS.get(rnd.status or "", "failed")
        store.mark_missing(
            missing,
            status=status,
            batch_id=rnd.batch_id,
            round=seq,
            code=f"batch_{status}" if status != "failed" else "missing_result",
            message=f"batch {rnd.batch_id} ended {rnd.status} without a result for this request",
        )
    return check


def _local_copy(src: ObjectStoragePath, tmp: Path) -> Path:
    """Return a local path of ``src``: itself on the local file system, else a copy in ``tmp``."""
    found = local_dir(src)
    if found is not None:
        return found
    dest = tmp / src.name
    copy_file(src, to_path(str(dest)))
    return dest


#: 2: ``batches[].shard`` counts from 1; ``run_id``, ``run_type``, ``cost_unknown_reason``,
#: ``by_model``; ``partition`` is null unless the run or the file's folder has a day.
#: 1 (no key): shards from 0.
MANIFEST_VERSION = 2


def build_manifest(plan: dict[str, Any], states: list[ShardState], counts: ResultCounts) -> dict[str, Any]:
    """Return the manifest: input, hash, counts, batches with their rounds, usage and estimated cost."""
    from openai_batch.pricing import is_unpriced, usage_cost_usd
    from openai_batch.results import ANOMALY_KINDS

    counts_dict = counts.to_dict()
    usage = counts_dict.pop("usage", None) or {}
    cost: float | None = 0.0
    by_model: dict[str, dict[str, Any]] = {}  # tokens and cost of this content's batches, per model
    batches = []
    found = counts.service_anomalies
    total_anomalies = dict.fromkeys(ANOMALY_KINDS, 0)
    for kinds in found.values():
        for kind in ANOMALY_KINDS:
            total_anomalies[kind] += kinds.get(kind, 0)
    for state in states:
        for rnd in state.rounds:
            batches.append(
                {
                    "shard": state.index + 1,  # numbered from 1, as the UI and the task labels do
                    "round": rnd.round,
                    "attempt": rnd.attempt,
                    "batch_id": rnd.batch_id,
                    "status": rnd.status,
                    "endpoint": state.endpoint,
                    "model": state.model,
                    "priced_as": state.priced_as,
                    "requests": rnd.requests,
                    "request_counts": rnd.request_counts,
                    "errors": rnd.errors,
                    "service_anomalies": {
                        kind: found.get(rnd.batch_id or "", {}).get(kind, 0) for kind in ANOMALY_KINDS
                    },
                }
            )
            part = usage_cost_usd(state.endpoint, state.priced_as, rnd.usage)
            cost = None if cost is None or part is None else cost + part
            used = by_model.setdefault(state.model, {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0})
            used["input_tokens"] += int((rnd.usage or {}).get("input_tokens") or 0)
            used["output_tokens"] += int((rnd.usage or {}).get("output_tokens") or 0)
            used["cost_usd"] = None if used["cost_usd"] is None or part is None else used["cost_usd"] + part
    unpriced = sorted({s.priced_as for s in states if is_unpriced(s.priced_as, s.endpoint)})
    return {
        "manifest_version": MANIFEST_VERSION,
        "input": plan["source"],
        "input_key": plan["key"],
        "provider": plan.get("provider") or "openai",
        "input_sha256": plan["input_sha256"],
        # The opened file's identity and raw digest: a later run that finds the same identity
        # knows the file is done without reading it (input_sha256 is of the decompressed content).
        "input_stat": plan.get("input_stat"),
        "input_raw_sha256": plan.get("input_raw_sha256"),
        "state_dir": plan["state_dir"],
        "partition": plan["partition"],
        "error": plan.get("error"),
        "unpriced_models": unpriced,
        "counts": {
            "total": plan["lines"],
            "succeeded": counts_dict.get("succeeded", 0),
            "failed": counts_dict.get("failed", 0),
            "expired": counts_dict.get("expired", 0),
            "cancelled": counts_dict.get("cancelled", 0),
            "rejected": plan["rejected"],
            "reused": counts_dict.get("reused", 0),
            "borrowed": counts_dict.get("borrowed", 0),
            "from_cache": len(counts_dict.get("from_cache") or ()),
        },
        # The requests whose answers came from the answer cache (Variable openai_batch_reuse_identical).
        "from_cache": list(counts_dict.get("from_cache") or ()),
        "rounds": max((rnd.round for s in states for rnd in s.rounds), default=0) + 1,
        "batches": batches,
        "usage": {
            "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
            "cached_tokens": usage.get("cached_tokens", 0),
            "reasoning_tokens": usage.get("reasoning_tokens", 0),
        },
        # The cost of the tokens the API reported, at the batch prices of openai_batch.pricing:
        # the same number as actual.cost_usd (the contract's name; estimate.cost_usd is the one
        # made before sending). None, with cost_unknown_reason, when a model has no price.
        "estimated_cost_usd": round(cost, 6) if cost is not None else None,
        "cost_unknown_reason": (
            f"no batch price for model(s) {', '.join(unpriced)} in openai_batch.pricing.PRICES"
            if cost is None and unpriced
            else None
        ),
        "service_anomalies": total_anomalies,
        "by_model": {
            model: {**used, "cost_usd": None if used["cost_usd"] is None else round(used["cost_usd"], 6)}
            for model, used in sorted(by_model.items())
        },
    }
