"""
Cost and capacity control: cost estimates with output tokens, budgets, and enqueued-token admission.

Both the daily spending and the enqueued tokens in flight are kept in one small JSON ledger,
``ledger.json`` in a local folder every worker and triggerer of the deployment shares (by default
``<results root>/_ledger``), changed only under an exclusive ``fcntl`` lock on ``ledger.lock``
next to it. A task reads, changes and writes the ledger in one short critical section, so two
runs (or two shards of one run) cannot both take the last free tokens or the last dollars.

* ``inflight``: one entry per batch that holds enqueued tokens (``<shard identity>-r<round>a<attempt>``):
  its model, estimated tokens, batch id once created, and when it was taken. Taken before the
  upload, released when the batch ends. Entries older than :data:`STALE_SECONDS` (a worker lost
  for good) are dropped, so a lost release cannot block a model forever. A release lost sooner
  (a run failed or deleted, a wait marked success by hand) is found by reconciliation: when a
  shard is refused, the refused model's entries with a batch are looked up at the API, each at
  most once per :data:`RECONCILE_SECONDS` (``checked``, optional, records when), and an entry
  whose batch has ended is released (a 404 keeps its room) (see :func:`reconcile`).
* ``waiting``: one entry per shard round waiting for capacity (same key), for the logs and the
  results view: model, tokens, label, when it started waiting and when it last checked. Removed
  when the round is admitted or released; an entry not checked again within
  :func:`openai_batch.capacity.waiting_stale_after` of its poll interval (its task failed, was
  cleared or marked) is dropped.
* ``lost``: per UTC day on which the ledger could not be parsed and was rebuilt (see
  :meth:`Ledger._load`): a daily budget refuses runs that day.
* ``spend``: per UTC day, per run and input file, the estimate taken by the budget check and the
  actual cost from the batches' usage once the results are written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from openai_batch.capacity import (
    admission,
    capacity_summary,
    drop_stale,
    drop_stale_waiting,
    usage,
    waiting_count,
)
from openai_batch.layout import shard_state_file, utc_day
from openai_batch.pricing import FREE_ENDPOINTS, estimate_cost_usd, format_usd, tokens_for_bytes
from openai_batch.status import ENDED
from openai_batch.storage import corrupt_name, fsync_dir, replace_durably

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from airflow.sdk import ObjectStoragePath

#: Output tokens assumed per request without max_tokens, max_completion_tokens or max_output_tokens.
DEFAULT_OUTPUT_TOKENS = 1000
#: Endpoints whose requests produce no billed output tokens.
NO_OUTPUT_ENDPOINTS = frozenset({"/v1/embeddings", "/v1/moderations"})
#: An in-flight entry is looked up at the API (reconciliation) at most once per this many seconds,
#: and never before it is this old.
RECONCILE_SECONDS = 300.0
#: Batch statuses after which a batch holds no enqueued tokens (the hook's terminal statuses).
ENDED_STATUSES = ENDED  # one owner: openai_batch.status
LEDGER_FILE = "ledger.json"
LOCK_FILE = "ledger.lock"

_LOG = logging.getLogger(__name__)

# A key of the request body: in a JSON line an unescaped quote cannot occur inside a string, so
# this matches keys only, never message text. A line's first such key counts; the rest of its line
# is matched too, so the next match is on a later line ([^\S\n]: whitespace within the line).
_MAX_TOKENS = re.compile(rb'"max_(?:completion_|output_)?tokens"[^\S\n]*:[^\S\n]*(\d+)[^\n]*')
# A line holding only whitespace between two others (blank lines are not requests).
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
#: Request files are estimated a block of whole lines at a time.
ESTIMATE_BLOCK = 4 * 1024 * 1024


def shard_estimates(
    path: Path | ObjectStoragePath, endpoint: str, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> tuple[int, int]:
    """
    Return ``(enqueued_tokens, output_tokens)`` estimated for one request file.

    Enqueued tokens are a quarter of each line's length (the whole line, as the service counts
    the enqueued input: a slight overestimate). Output tokens are each request's
    ``max_tokens``/``max_completion_tokens``/``max_output_tokens`` where given, else
    ``default_output_tokens``; none for embeddings and moderations. Blank lines count for nothing.
    """
    enqueued = output = 0
    no_output = endpoint in NO_OUTPUT_ENDPOINTS
    carry = b""
    with path.open("rb") as fin:
        while True:
            data = fin.read(ESTIMATE_BLOCK)
            cut = data.rfind(b"\n") + 1 if data else len(carry)  # at the end: the last line too
            if not cut and data:  # no line ends in this block yet
                carry += data
                continue
            block, carry = carry + data[:cut], data[cut:]
            tokens, requests, given, found = _block_estimates(block)
            enqueued += tokens
            if not no_output:
                output += given + (requests - found) * default_output_tokens
            if not data:
                return enqueued, output


def _block_estimates(block: bytes) -> tuple[int, int, int, int]:
    """
    Return ``(enqueued tokens, requests, max tokens given, requests that give them)`` of whole lines.

    Every line of ``block`` ends in a line break except, at the end of a file, its last one.
    """
    if not block:
        return 0, 0, 0, 0
    lines = block.split(b"\n")
    ended = lines[-1] == b""
    if ended:
        lines.pop()
    # The file's last line, when it has no line break and is not blank, counts without one.
    unended = 0 if ended or not lines[-1].strip() else len(lines[-1])
    if not lines[0].strip() or (not ended and not lines[-1].strip()) or _BLANK_LINE.search(block):
        # Rare: blank lines are left out.
        lines = [line for line in lines if line.strip()]
        block = b"\n".join(lines)
    # Each line counts with its line break: the lengths are counted in C, then priced per length.
    tokens = sum(tokens_for_bytes(size + 1) * count for size, count in Counter(map(len, lines)).items())
    if unended:
        tokens += tokens_for_bytes(unended) - tokens_for_bytes(unended + 1)
    found = _MAX_TOKENS.findall(block)
    return tokens, len(lines), sum(map(int, found)), len(found)


def round_enqueued_tokens(shard: Mapping[str, Any], path: Path | ObjectStoragePath, endpoint: str) -> int:
    """
    Return the enqueued tokens of a round's request file ``path`` of the planned ``shard``.

    The shard's own file (round 0, whatever the attempt) was estimated by prepare, over the same
    bytes: the plan's ``enqueued_tokens`` is used. Any other file (a retry round's, a taken-over
    one's) is estimated from its lines.
    """
    known = shard.get("enqueued_tokens")
    if path.name == shard.get("file") and type(known) is int:
        return known
    return shard_estimates(path, endpoint)[0]


def shard_cost(shard: dict[str, Any]) -> float | None:
    """Return a shard's estimated batch cost with its output tokens, or None when its model has no price."""
    if shard["endpoint"] in FREE_ENDPOINTS:
        return 0.0
    return estimate_cost_usd(
        shard.get("price_model") or shard["model"],
        int(shard.get("estimated_input_tokens") or 0),
        int(shard.get("estimated_output_tokens") or 0),
    )


def plan_cost(plan: dict[str, Any]) -> float | None:
    """Return a plan's estimated cost (input and output tokens), or None when a model has no price."""
    total = 0.0
    for shard in plan.get("shards") or []:
        cost = shard_cost(shard)
        if cost is None:
            return None
        total += cost
    return round(total, 6)


def parse_limits(value: str | dict[str, Any] | None) -> dict[str, int]:
    """
    Return the per-model enqueued-token limits from the Variable's value (a JSON object).

    ``{"gpt-4o-mini": 2000000, "*": 90000}``: ``*`` applies to every model not listed. Empty: none.
    """
    if value is None or value == "":
        return {}
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError(f"enqueued-token limits must be a JSON object of model: tokens, got {value!r}")
    return {str(k): int(v) for k, v in data.items()}


def limit_for(limits: dict[str, int], model: str) -> int | None:
    """Return the model's enqueued-token limit: its own, else ``*``, else None (no limit)."""
    return limits.get(model, limits.get("*"))


#: The names :func:`check_run_budget` gives its two money settings in errors.
MAX_COST_SETTING = "the max_cost_usd param"
DAILY_BUDGET_SETTING = "the Airflow Variable openai_batch_daily_budget_usd"


def parse_usd(value: object, setting: str = "a money setting") -> float | None:
    """
    Return a cap in USD from a param or Variable value; empty or None means no cap.

    Anything else must be a finite number >= 0: ``nan`` compares false with every estimate and
    ``inf`` is above all of them, so either would switch the cap off without a word. Raises
    :class:`BudgetError` naming ``setting`` (e.g. ``"the max_cost_usd param"``).
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    if isinstance(value, bool):
        raise BudgetError(f"{setting} must be a number of US dollars >= 0, got {value!r}")
    try:
        amount = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BudgetError(f"{setting} must be a number of US dollars >= 0, got {value!r}") from None
    if not math.isfinite(amount) or amount < 0:
        raise BudgetError(
            f"{setting} must be a finite number of US dollars >= 0, got {value!r}; leave it empty for no cap"
        )
    return amount


class NoCapacityError(Exception):
    """The shard does not fit under its model's enqueued-token limit yet."""

    def __init__(
        self,
        message: str,
        *,
        ever_fits: bool,
        key: str = "",
        model: str = "",
        tokens: int = 0,
        limit: int | None = None,
        label: str = "",
    ) -> None:
        super().__init__(message)
        self.ever_fits = ever_fits
        self.key, self.model, self.tokens, self.limit, self.label = key, model, tokens, limit, label


@dataclass
class Ledger:
    """The deployment's ledger in ``folder`` (see the module docstring)."""

    folder: Path

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Yield the ledger's data under the exclusive lock; write it back when the block ends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.folder / LEDGER_FILE
                data = self._load(path)
                yield data
                self._write(path, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self, path: Path) -> dict[str, Any]:
        """
        Return the ledger's data (under the lock), rebuilt empty when the file cannot be parsed.

        A ledger that cannot be parsed is moved aside to ``ledger.json.corrupt-<UTC time>`` (named
        in a warning) and the ledger starts empty. What it held is lost: the in-flight entries come
        back as shards are admitted again or re-attach (until then their room is free), the waiting
        entries at their next capacity check, and the day's recorded spend not at all. So that a
        lost spend cannot let the day go over its budget, the UTC day the ledger was rebuilt is
        marked (``lost``): runs with a daily budget are refused for the rest of that day (unset
        the Variable to send anyway); runs without one are never held back.
        """
        data: Any = {}
        if path.exists():
            text = path.read_bytes()
            try:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
            except ValueError as err:
                now = time.time()
                kept = self.folder / corrupt_name(LEDGER_FILE, now)
                os.replace(path, kept)
                fsync_dir(self.folder)
                day = utc_day(now)
                _LOG.warning(
                    "The ledger %s cannot be parsed (%s); it was moved aside to %s and the ledger starts "
                    "empty. The spend recorded for %s (UTC) is lost: runs with a daily budget "
                    "(openai_batch_daily_budget_usd) are refused until the end of that day.",
                    path,
                    err,
                    kept,
                    day,
                )
                data = {"lost": {day: {"at": now, "kept_as": kept.name}}}
                for key in ("inflight", "waiting", "spend"):
                    data[key] = {}
                # Written now: a block that raises (a refused run) writes nothing back, and the
                # mark must outlive it.
                self._write(path, data)
        for key in ("inflight", "waiting", "spend", "lost"):
            data.setdefault(key, {})
        return cast("dict[str, Any]", data)

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        replace_durably(tmp, path)

    # --- enqueued tokens -------------------------------------------------------------------

    def admit(
        self, key: str, model: str, tokens: int, limit: int | None, label: str = "", poll: float = 30.0
    ) -> str:
        """
        Take ``tokens`` of ``model``'s capacity for batch ``key``, or raise :class:`NoCapacityError`.

        Idempotent: a key already admitted stays admitted. Returns a line for the log with the
        capacity in use after admission. A refused key that can fit once others end is recorded
        as waiting; ``poll`` is how often it will check again (for dropping it once it stops).
        """
        now = time.time()
        refused: NoCapacityError | None = None
        with self.locked() as data:
            drop_stale(data["inflight"], now)
            drop_stale_waiting(data["waiting"], now)
            inflight: dict[str, Any] = data["inflight"]
            used, count = usage(inflight, model)
            decision = admission(inflight, key, model, tokens, limit)
            if decision != "admit":
                assert limit is not None  # no limit admits everything
                ever_fits = decision == "wait"
                if ever_fits:
                    # Recorded as waiting (for the logs and the view) and written before refusing.
                    since = data["waiting"].get(key, {}).get("since", now)
                    data["waiting"][key] = {
                        "model": model,
                        "tokens": tokens,
                        "since": since,
                        "seen": now,
                        "poll": poll,
                        "label": label,
                    }
                else:
                    data["waiting"].pop(key, None)
                waiting = waiting_count(data["waiting"], model)
                refused = NoCapacityError(
                    f"{label or key} ({tokens:,} tokens) waits: {model} has {used:,} of {limit:,} "
                    f"enqueued tokens in use by {count} batch(es); {waiting} shard(s) waiting",
                    ever_fits=ever_fits,
                    key=key,
                    model=model,
                    tokens=tokens,
                    limit=limit,
                    label=label,
                )
            else:
                inflight.setdefault(
                    key, {"model": model, "tokens": tokens, "since": now, "batch_id": None, "label": label}
                )
                data["waiting"].pop(key, None)
            used, count = usage(inflight, model)
            still_waiting = waiting_count(data["waiting"], model)
        if refused is not None:
            raise refused
        shown = f"{limit:,}" if limit is not None else "no limit"
        return (
            f"{model}: {used:,} of {shown} enqueued tokens in use by {count} batch(es); "
            f"{still_waiting} shard(s) waiting"
        )

    def fits(self, key: str, model: str, tokens: int, limit: int | None, label: str, poll: float) -> bool:
        """
        Return whether ``key`` would be admitted now, without admitting it (the capacity trigger's check).

        A key that does not fit stays listed as waiting: its entry is marked seen now (or made
        again when it was dropped while nothing checked it).
        """
        now = time.time()
        with self.locked() as data:
            drop_stale(data["inflight"], now)
            drop_stale_waiting(data["waiting"], now)
            if admission(data["inflight"], key, model, tokens, limit) == "admit":
                return True
            entry = data["waiting"].setdefault(
                key, {"model": model, "tokens": tokens, "since": now, "label": label}
            )
            entry.update(seen=now, poll=poll)
            return False

    def attach(self, key: str, batch_id: str) -> None:
        """Record the batch created for an admitted key."""
        with self.locked() as data:
            entry = data["inflight"].get(key)
            if entry is not None:
                entry["batch_id"] = batch_id

    def release(self, key: str) -> str | None:
        """Give back the capacity of a batch that ended; return a line for the log (None: it held none)."""
        with self.locked() as data:
            entry = data["inflight"].pop(key, None)
            data["waiting"].pop(key, None)
            if entry is None:
                return None
            row = capacity_summary(data, time.time())["models"].get(entry["model"]) or {
                "tokens": 0,
                "batches": 0,
                "waiting": 0,
            }
        return (
            f"{entry['model']}: {int(entry['tokens']):,} enqueued tokens given back; "
            f"{row['tokens']:,} in use by {row['batches']} batch(es); {row['waiting']} shard(s) waiting"
        )

    def due_for_check(self, model: str, now: float | None = None) -> list[tuple[str, str]]:
        """
        Return ``[(key, batch_id)]`` of ``model``'s in-flight entries to look up at the API now.

        Only entries with a batch, at least :data:`RECONCILE_SECONDS` old and not checked within
        that time; each returned entry is marked ``checked`` now (under the lock), so a second
        refusal soon after, here or in another process, looks up none of them again.
        """
        now = time.time() if now is None else now
        due: list[tuple[str, str]] = []
        with self.locked() as data:
            drop_stale(data["inflight"], now)
            for key, entry in sorted(data["inflight"].items()):
                if (
                    entry["model"] != model
                    or not entry.get("batch_id")
                    or now - float(entry["since"]) < RECONCILE_SECONDS
                    or now - float(entry.get("checked") or 0.0) < RECONCILE_SECONDS
                ):
                    continue
                entry["checked"] = now
                due.append((key, str(entry["batch_id"])))
        return due

    def release_ended(self, key: str, batch_id: str) -> bool:
        """Release ``key`` if it still holds ``batch_id`` (a batch found ended); return whether it did."""
        with self.locked() as data:
            entry = data["inflight"].get(key)
            if entry is None or entry.get("batch_id") != batch_id:
                return False
            del data["inflight"][key]
            data["waiting"].pop(key, None)
        return True

    def in_use(self) -> dict[str, dict[str, int]]:
        """Return ``{model: {"tokens", "batches", "waiting"}}`` of what is in flight and waiting now."""
        with self.locked() as data:
            return {
                model: {k: row[k] for k in ("tokens", "batches", "waiting")}
                for model, row in capacity_summary(data, time.time())["models"].items()
            }

    # --- spending --------------------------------------------------------------------------

    def check_budget(
        self,
        *,
        day: str,
        run_id: str,
        estimates: dict[str, float],
        max_cost_usd: float | None,
        daily_budget_usd: float | None,
        shards: dict[str, dict[str, Any]] | None = None,
        dag_id: str | None = None,
        run_state: Callable[[str, str], str | None] | None = None,
    ) -> tuple[float, float]:
        """
        Check a run's estimate against its cap and the day's budget, and reserve it for the day.

        ``estimates`` maps each input file of the run to its estimated cost; ``shards`` (same keys)
        what :func:`expire_reservations` needs later: the file's state folder and its shards with
        their costs. Earlier runs of the day count with their actual cost where their results are
        written, else their estimate while they run; a run that ended without results counts only
        what it sent (see :func:`expire_reservations`, done first with ``run_state``).
        Returns ``(estimate, spent by earlier runs today)``; raises :class:`BudgetError`.
        """
        estimate = round(sum(estimates.values()), 6)
        if run_state is not None:
            expire_reservations(self, day, run_id, run_state)
        if max_cost_usd is not None and estimate > max_cost_usd:
            raise BudgetError(
                f"The run's estimated cost {format_usd(estimate)} exceeds max_cost_usd "
                f"{format_usd(max_cost_usd)}; nothing was uploaded. Raise the max_cost_usd param of "
                "the run (or split the input) to send it."
            )
        with self.locked() as data:
            lost = data["lost"].get(day)
            if daily_budget_usd is not None and lost is not None:
                raise BudgetError(
                    f"The ledger could not be parsed on {day} (UTC) and was rebuilt empty (the old one "
                    f"is kept as {lost.get('kept_as')} in {self.folder}): what earlier runs spent that "
                    "day is unknown, so a run with a daily budget is refused until the day ends; "
                    "nothing was uploaded. Unset the Airflow Variable openai_batch_daily_budget_usd to "
                    "send it anyway."
                )
            today: dict[str, Any] = data["spend"].setdefault(day, {})
            spent = round(
                sum(_spent(e) for k, e in today.items() if e.get("run_id") != run_id),
                6,
            )
            if daily_budget_usd is not None and spent + estimate > daily_budget_usd:
                raise BudgetError(
                    f"The run's estimated cost {format_usd(estimate)} plus {format_usd(spent)} spent by "
                    f"earlier runs on {day} (UTC) exceeds the daily budget {format_usd(daily_budget_usd)}; "
                    "nothing was uploaded. Raise the Airflow Variable openai_batch_daily_budget_usd, or "
                    "run it tomorrow."
                )
            for name, cost in estimates.items():
                entry = today.setdefault(
                    f"{run_id}|{name}", {"run_id": run_id, "input": name, "actual_usd": None}
                )
                entry["estimated_usd"] = cost
                entry.pop("ended", None)  # a cleared run that runs again reserves again
                if dag_id is not None:
                    entry["dag_id"] = dag_id
                if shards and name in shards:
                    entry.update(shards[name])
        return estimate, spent

    def reservations(self, day: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Return ``[(key, entry)]`` of ``day``'s reservations of other runs that may have ended."""
        with self.locked() as data:
            return [
                (key, dict(e))
                for key, e in sorted(data["spend"].get(day, {}).items())
                if e.get("run_id") != run_id
                and e.get("actual_usd") is None
                and not e.get("ended")
                and e.get("dag_id")
            ]

    def expire(self, day: str, key: str, sent_usd: float, state: str) -> bool:
        """Count reservation ``key`` of an ended run as ``sent_usd`` only; return whether it was changed."""
        with self.locked() as data:
            entry = data["spend"].get(day, {}).get(key)
            if entry is None or entry.get("actual_usd") is not None or entry.get("ended"):
                return False
            entry.update(reserved_usd=entry.get("estimated_usd"), estimated_usd=sent_usd, ended=state)
            entry.pop("shards", None)
            return True

    def record_actual(
        self, *, run_id: str, name: str, actual_usd: float | None, estimated_usd: float | None
    ) -> None:
        """Record the actual cost of one input file of a run, on the day its estimate was reserved."""
        with self.locked() as data:
            key = f"{run_id}|{name}"
            days = [d for d, entries in data["spend"].items() if key in entries]
            day = days[0] if days else utc_day()
            entry = (
                data["spend"]
                .setdefault(day, {})
                .setdefault(key, {"run_id": run_id, "input": name, "estimated_usd": estimated_usd})
            )
            entry["actual_usd"] = actual_usd

    def spent(self, day: str) -> float:
        """Return what the runs of ``day`` spent (actual where known, else their estimate)."""
        with self.locked() as data:
            return round(sum(_spent(e) for e in data["spend"].get(day, {}).values()), 6)


def reconcile(ledger: Ledger, model: str, status_of: Callable[[str], str | None]) -> list[str]:
    """
    Release ``model``'s in-flight entries whose batch has ended at the API; return a log line for each.

    ``status_of(batch_id)`` returns the batch's status, :data:`NOT_FOUND` for an unknown batch,
    or None when the lookup failed (the entry is kept). Only entries :meth:`Ledger.due_for_check`
    returns are looked up, outside the lock. The async twin in the capacity trigger uses the same
    two ledger calls around its own lookups.
    """
    lines = []
    for key, batch_id in ledger.due_for_check(model):
        line = release_if_ended(ledger, key, batch_id, status_of(batch_id))
        if line:
            lines.append(line)
    return lines


def release_if_ended(ledger: Ledger, key: str, batch_id: str, status: str | None) -> str | None:
    """
    Release ``key`` when ``status`` says its batch ended; return a line for the log.

    A batch the API does not know (:data:`NOT_FOUND`) keeps its room: with several connections
    sharing one ledger, a live batch of another organisation answers 404 too. Such an entry goes
    when it is stale (:data:`STALE_SECONDS`).
    """
    if status is None or status not in ENDED_STATUSES:
        return None
    if not ledger.release_ended(key, batch_id):
        return None
    return f"released capacity of batch {batch_id}: it is {status}"


#: Run states after which a run sends nothing more (a run cleared runs again and reserves again).
ENDED_RUN_STATES = frozenset({"success", "failed"})


def expire_reservations(
    ledger: Ledger, day: str, run_id: str, run_state: Callable[[str, str], str | None]
) -> list[str]:
    """
    Turn the reservations of ``day``'s runs that ended without results into what they sent.

    A run's budget check reserves its whole estimate; results turn it into the actual cost. A run
    that fails (or is marked failed) before that would keep its estimate as the day's spend until
    midnight, refusing later runs for money never spent. So, before each budget check, every other
    run's reservation without an actual cost is looked up: ``run_state(dag_id, run_id)`` returns
    its state, or None when it cannot be told (kept: the safe side). A run that ended counts from
    then on only the estimate of its shards that were sent: a shard whose state record shows an
    upload or a batch (a batch may be running and billed even when the run failed). Looked up
    here rather than in a failure callback because it needs nothing to run at the end of the run:
    a run killed, marked failed by hand, or whose callback was lost is found all the same.
    Returns a line for the log per reservation changed.
    """
    lines = []
    states: dict[tuple[str, str], str | None] = {}
    for key, entry in ledger.reservations(day, run_id):
        ref = (str(entry["dag_id"]), str(entry["run_id"]))
        if ref not in states:
            try:
                states[ref] = run_state(*ref)
            except Exception:  # an unknown state keeps the reservation: the safe side
                states[ref] = None
        state = states[ref]
        if state not in ENDED_RUN_STATES:
            continue
        sent = _sent_usd(entry)
        if ledger.expire(day, key, sent, str(state)):
            lines.append(
                f"run {ref[1]} ended {state}: {entry.get('input')} counts {format_usd(sent)} sent of "
                f"{format_usd(entry.get('estimated_usd'))} reserved"
            )
    return lines


def _sent_usd(entry: dict[str, Any]) -> float:
    """Return the estimate of a reservation's shards that were uploaded (all of it where unknown)."""
    from openai_batch.storage import read_json, to_path

    shards = entry.get("shards")
    state_dir = entry.get("state_dir")
    if not isinstance(shards, list) or not state_dir:
        return float(entry.get("estimated_usd") or 0.0)
    sent = 0.0
    folder = to_path(str(state_dir))
    for index, identity, cost in shards:
        if index is None:
            sent += float(cost or 0.0)  # a shard without an index cannot be looked up: sent
            continue
        try:
            path = folder / shard_state_file(int(index))
            record = read_json(path) if path.exists() else {}
        except (OSError, ValueError):
            record = None  # unreadable: counted as sent
        if (
            record is None
            or record.get("identity") == identity
            and any(r.get("input_file_id") or r.get("batch_id") for r in record.get("rounds") or [])
        ):
            sent += float(cost or 0.0)
    return round(sent, 6)


def current_run_state(dag_id: str, run_id: str) -> str | None:
    """Return a run's state through the Task SDK (inside a task), or None when it cannot be told."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    state = RuntimeTaskInstance.get_dagrun_state(dag_id, run_id)
    return str(getattr(state, "value", state))  # a DagRunState enum: its value, e.g. "failed"


def _current_dag_id() -> str | None:
    """Return the DAG id of the task running this, or None outside a task."""
    try:
        from airflow.sdk import get_current_context

        return str(get_current_context()["dag"].dag_id)
    except Exception:  # outside a task there is no context
        return None


class BudgetError(Exception):
    """A run's estimate does not fit under its cap or the day's budget."""


def _spent(entry: dict[str, Any]) -> float:
    actual = entry.get("actual_usd")
    return float(actual if actual is not None else entry.get("estimated_usd") or 0.0)


def read_ledger(folder: Path) -> dict[str, Any]:
    """Return the ledger's data without taking the lock (it is replaced whole, so never half written)."""
    try:
        data = json.loads((folder / LEDGER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_run_budget(
    plans: list[dict[str, Any]],
    *,
    run_id: str,
    max_cost_usd: object = None,
    daily_budget_usd: object = None,
    ledger_dir: str | None = None,
    day: str | None = None,
    run_state: Callable[[str, str], str | None] | None = None,
) -> str:
    """
    Check a run's plans against ``max_cost_usd`` and the daily budget before anything is uploaded.

    Skipped files, dry runs and unusable files cost nothing. With a cap set, a file whose model
    has no price fails the check (its cost cannot be bounded). A daily budget needs the ledger.
    Earlier runs that ended without results count only what they sent (:func:`expire_reservations`;
    ``run_state`` looks a run's state up, by default through the Task SDK inside a task).
    Returns a line for the log; raises :class:`BudgetError`.
    """
    cap = parse_usd(max_cost_usd, MAX_COST_SETTING)
    daily = parse_usd(daily_budget_usd, DAILY_BUDGET_SETTING)
    estimates: dict[str, float] = {}
    shards: dict[str, dict[str, Any]] = {}
    for plan in plans:
        if plan.get("skipped") or plan.get("dry_run") or plan.get("error") or not plan.get("shards"):
            continue
        cost = plan_cost(plan)
        if cost is None:
            if cap is not None or daily is not None:
                raise BudgetError(
                    f"{plan['key']}: no price is known for model(s) "
                    f"{', '.join(plan.get('unpriced_models') or [])}, "
                    "so its cost cannot be checked against the budget; nothing was uploaded. Add the "
                    "model to openai_batch.pricing.PRICES or unset the budget."
                )
            continue
        estimates[plan["key"]] = cost
        shards[plan["key"]] = {
            "state_dir": plan.get("state_dir"),
            "shards": [[s.get("index"), s.get("identity"), shard_cost(s)] for s in plan["shards"]],
        }
    estimate = round(sum(estimates.values()), 6)
    ledger = ledger_for(ledger_dir)
    if ledger is None:
        if daily is not None:
            raise BudgetError(
                "a daily budget is set but no ledger folder (openai_batch_ledger_dir) is configured"
            )
        if cap is not None and estimate > cap:
            raise BudgetError(
                f"The run's estimated cost {format_usd(estimate)} exceeds max_cost_usd {format_usd(cap)}; "
                "nothing was uploaded. Raise the max_cost_usd param of the run (or split the input) "
                "to send it."
            )
        return f"estimated cost {format_usd(estimate)}; max_cost_usd {format_usd(cap)}"
    day = day or utc_day()
    dag_id = _current_dag_id()
    estimate, spent = ledger.check_budget(
        day=day,
        run_id=run_id,
        estimates=estimates,
        max_cost_usd=cap,
        daily_budget_usd=daily,
        shards=shards,
        dag_id=dag_id,
        run_state=run_state if run_state is not None else (current_run_state if dag_id else None),
    )
    return (
        f"estimated cost {format_usd(estimate)} (max_cost_usd {format_usd(cap)}); spent earlier on {day}: "
        f"{format_usd(spent)} of the daily budget {format_usd(daily)}"
    )


def ledger_for(folder: str | None) -> Ledger | None:
    """
    Return the ledger in the local ``folder``, or None when none is configured (no accounting).

    An object-storage URL gives None: a file lock needs a file system (the default under an
    ``s3://`` results root); set ``openai_batch_ledger_dir`` to a shared mount instead.
    """
    if not folder or folder == "None":
        return None
    if folder.startswith("file://"):
        folder = folder[len("file://") :]
    elif "://" in folder:
        return None
    return Ledger(Path(folder))
