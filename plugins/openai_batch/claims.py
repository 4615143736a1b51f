"""Glue between prepared shards, batches and the request record (:mod:`openai_batch.records`).

After ``prepare_requests`` wrote its shards, :func:`claim_shards` claims every request for the
content's state folder. Requests another state folder owns (sent or about to be, or answered) are
taken out of the shards and written to ``borrowed-<hash>.jsonl`` files, one per owner shard: the
plan gets a ``borrowed`` entry for each, whose wait uses the owner's answers instead of paying again.
With the opt-in answer cache (:mod:`openai_batch.answers`), requests whose identical request (same
endpoint and body) succeeded before are taken out first, their answers written to ``cached.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from openai_batch.answers import CACHED_FILE, answer_key
from openai_batch.layout import BORROWED, digests_file, take_file
from openai_batch.records import FINAL_STATES, RECORD_FILE, STALE_AFTER, RequestRecord
from openai_batch.reuse import RequestDigests, request_digest

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from airflow.sdk import ObjectStoragePath

    from openai_batch.answers import AnswerCache, Cached
    from openai_batch.budget import Ledger
    from openai_batch.prepare import Shard
    from openai_batch.provider import Log
    from openai_batch.records import Entry
    from openai_batch.state import Round, ShardState


@dataclass
class ClaimOutcome:
    """What claiming changed: the shards rewritten without borrowed requests, and the borrowed groups.

    :param kept: ``{shard index: (requests left, sha256 of the rewritten file)}`` for rewritten shards.
    :param borrowed: one dict per owner shard: ``owner_state_dir``, ``owner_shard``, ``file``,
        ``requests``, ``endpoint``, ``model``.
    """

    kept: dict[int, tuple[int, str]] = field(default_factory=dict)
    borrowed: list[dict[str, Any]] = field(default_factory=list)
    #: Requests answered from the answer cache (their result lines are in ``cached.jsonl``).
    cached: int = 0

    def requests(self, shard: Shard) -> int:
        """Return the requests a shard still sends."""
        return self.kept[shard.index][0] if shard.index in self.kept else shard.requests

    def sha256(self, shard: Shard) -> str:
        """Return the SHA-256 of the shard's file as sent."""
        return self.kept[shard.index][1] if shard.index in self.kept else shard.sha256


def record_of(ledger: Ledger | None) -> RequestRecord | None:
    """Return the request record next to the capacity ledger, or None without a ledger."""
    return None if ledger is None else RequestRecord(ledger.folder / RECORD_FILE)


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fin:
        for line in fin:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def _custom_id(line: bytes) -> str:
    from openai_batch.results import request_id

    return request_id(line)


def claim_shards(
    record: RequestRecord,
    owner: str,
    shards: list[Shard],
    work: Path,
    *,
    force: bool = False,
    cache: AnswerCache | None = None,
) -> ClaimOutcome:
    """
    Claim every request of ``shards`` (files in ``work``) for ``owner``; take out the ones others own.

    Runs after prepare, once per content and settings: one read of the shards to claim, and only
    when another owner holds some request, a rewrite of the shards holding them (rare). With a
    ``cache``, requests it holds an answer for are neither claimed nor sent: their answers go to
    ``cached.jsonl`` (always written, empty without hits).
    """
    hits = _cache_hits(cache, shards, work) if cache is not None and not force else {}

    def rows() -> Iterable[tuple[str, str, int]]:
        for shard in shards:
            path = work / Path(shard.path).name
            side = work / digests_file(path.name)
            found = _prepared_digests(side, shard)
            if found is not None:  # the usual: prepare digested each request as it wrote it
                for custom_id, digest in found.items():
                    if digest not in hits:
                        yield digest, custom_id, shard.index
                continue
            found = {}
            with path.open("rb") as fin:
                for custom_id, digest in _digested(fin, found):
                    if digest not in hits:
                        yield digest, custom_id, shard.index
            # Kept for submit and the wait (published with the shard; dropped below if rewritten).
            # shard.sha256 is prepare's hash of exactly the bytes it wrote to this file.
            _keep_digests(side, RequestDigests(shard.sha256, len(found), found))

    others = {e.digest: e for e in record.claim(owner, rows(), force=force)}
    outcome = ClaimOutcome()
    with (work / CACHED_FILE).open("wb") as cached_out:
        if not others and not hits:
            return outcome
        groups: dict[tuple[str, int], dict[str, Any]] = {}
        for shard in shards:
            path = work / Path(shard.path).name
            kept = path.with_suffix(".kept")
            count, digest, touched = 0, hashlib.sha256(), False
            with kept.open("wb") as fout:
                for line in _lines(path):
                    line_digest = request_digest(line)
                    answer = hits.get(line_digest)
                    if answer is not None:
                        touched = True
                        cached_out.write(_cached_line(_custom_id(line), answer))
                        outcome.cached += 1
                        continue
                    entry = others.get(line_digest)
                    if entry is None:
                        fout.write(line)
                        digest.update(line)
                        count += 1
                        continue
                    touched = True
                    group = groups.get((entry.owner, entry.shard))
                    if group is None:
                        name = hashlib.sha256(f"{entry.owner}\0{entry.shard}".encode()).hexdigest()[:16]
                        group = groups[(entry.owner, entry.shard)] = {
                            "owner_state_dir": entry.owner,
                            "owner_shard": entry.shard,
                            "file": f"borrowed-{name}.jsonl",
                            "requests": 0,
                            "endpoint": shard.endpoint,
                            "model": shard.model,
                        }
                    with (work / group["file"]).open("ab") as borrowed:
                        borrowed.write(line)
                    group["requests"] += 1
            if touched:
                kept.replace(path)
                (work / digests_file(path.name)).unlink(missing_ok=True)
                outcome.kept[shard.index] = (count, digest.hexdigest())
            else:
                kept.unlink()
    outcome.borrowed = list(groups.values())
    return outcome


def _prepared_digests(side: Path, shard: Shard) -> dict[str, str] | None:
    """Return the ``{custom_id: digest}`` prepare wrote beside a shard, or None unless it is whole.

    Whole: it names the SHA-256 prepare gave the shard and holds one digest per request of it.
    """
    try:
        kept = _DIGESTS.decode(side.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if kept.sha256 != shard.sha256 or not kept.count == len(kept.ids) == shard.requests:
        return None
    return kept.ids


def _cache_hits(cache: AnswerCache, shards: list[Shard], work: Path) -> dict[str, Cached]:
    """Return ``{request digest: cached answer}`` for the shards' requests the cache answers."""
    keys: dict[str, str] = {}  # request digest -> answer key
    for shard in shards:
        for line in _lines(work / Path(shard.path).name):
            keys[request_digest(line)] = answer_key(line)
    found = cache.lookup(sorted(set(keys.values())))
    return {digest: found[key] for digest, key in keys.items() if key in found}


def _cached_line(custom_id: str, answer: Cached) -> bytes:
    """Return the ``results.jsonl`` line of a request answered from the cache."""
    head = json.dumps({"custom_id": custom_id, "status": "succeeded"}, ensure_ascii=False)[:-1]
    tail = json.dumps({"error": None, "batch_id": answer.batch_id})[1:]
    return f'{head}, "response": '.encode() + answer.response + b", " + tail.encode() + b"\n"


def store_round_answers(cache: AnswerCache, owner: str, state_dir: ObjectStoragePath, rnd: Round) -> int:
    """
    Store the successful answers of a collected round in the answer cache; return how many are new.

    Only answers to ids sent in the round, each answered once, are stored (a duplicate or foreign
    line of the service's output is never an answer to someone else's identical request).
    """
    from openai_batch.results import classify_line
    from openai_batch.results_io import round_files
    from openai_batch.storage import iter_lines

    if not rnd.batch_id:
        return 0
    keys: dict[str, str] = {}
    for line in iter_lines(state_dir / rnd.file):
        if line.strip():
            keys[_custom_id(line)] = answer_key(line)
    answers: dict[str, bytes] = {}
    seen: set[str] = set()
    for path in round_files(state_dir, rnd):
        for line in iter_lines(path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
            if not isinstance(custom_id, str) or custom_id not in keys:
                continue
            if custom_id in seen:
                answers.pop(custom_id, None)  # answered twice: trust neither
                continue
            seen.add(custom_id)
            status, body, _error = classify_line(obj)
            if status == "succeeded" and body is not None:
                answers[custom_id] = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(
                    "utf-8", "surrogatepass"
                )
    return cache.store((keys[cid], body, rnd.batch_id, f"{owner}#{cid}") for cid, body in answers.items())


def borrowed_entries(
    outcome: ClaimOutcome, base: dict[str, Any], input_sha256: str, first_index: int, salt: str
) -> list[dict[str, Any]]:
    """Return the plan entries of the borrowed groups, numbered from ``first_index`` (after the shards)."""
    entries = []
    for offset, group in enumerate(outcome.borrowed):
        index = first_index + offset
        entries.append(
            {
                **base,
                "kind": BORROWED,
                "index": index,
                "identity": f"{input_sha256[:32]}-{group['file'][9:25]}-{index:05d}{salt}",
                **group,
                "estimated_input_tokens": 0,
                "estimated_output_tokens": 0,
                "enqueued_tokens": 0,
            }
        )
    return entries


_DIGESTS = msgspec.json.Decoder(RequestDigests)


def digests_of(path: ObjectStoragePath) -> dict[str, str]:
    """
    Return ``{custom_id: digest}`` of a request file.

    The answer is kept beside the file (:func:`openai_batch.layout.digests_file`) and used again only
    when it names the file's current SHA-256 and holds its count of ids: a file rewritten since, or a
    digests file cut short or unreadable, is read and hashed again. Submit, the answers, the give-up
    and each look of a borrowed wait then cost one pass of SHA-256 over the file, not a decode and a
    hash per line.
    """
    from openai_batch.storage import file_digest, iter_lines

    side = path.parent / digests_file(path.name)
    try:
        kept = _DIGESTS.decode(side.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        kept = None
    if kept is not None and len(kept.ids) == kept.count and kept.sha256 == file_digest(path)[0]:
        return kept.ids
    whole = hashlib.sha256()
    found: dict[str, str] = {}
    for _ in _digested(iter_lines(path), found, whole):
        pass
    _keep_digests(side, RequestDigests(whole.hexdigest(), len(found), found))
    return found


def _digested(
    lines: Iterable[bytes], found: dict[str, str], whole: hashlib._Hash | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(custom_id, digest)`` of each request line, filling ``found``; ``whole`` hashes every byte."""
    for line in lines:
        if whole is not None:
            whole.update(line)
        if line.strip():
            custom_id, digest = _custom_id(line), request_digest(line)
            found[custom_id] = digest
            yield custom_id, digest


def _keep_digests(side: ObjectStoragePath | Path, digests: RequestDigests) -> None:
    """Write a digests file, best effort: it is a cache, checked on every read (not synced to disk)."""
    from openai_batch.storage import open_atomic, to_path

    try:
        with open_atomic(to_path(str(side)) if isinstance(side, Path) else side, durable=False) as fout:
            fout.write(msgspec.json.encode(digests))
    except OSError:
        pass  # a read-only or full state folder: the next call hashes the file again


def record_round_answers(record: RequestRecord, owner: str, state_dir: ObjectStoragePath, rnd: Round) -> None:
    """Record the final answers of a collected round of ``owner`` (successes, non-retryable failures)."""
    from openai_batch.results import final_state
    from openai_batch.results_io import round_files
    from openai_batch.storage import iter_lines

    if not rnd.batch_id:
        return
    digests = digests_of(state_dir / rnd.file)
    by_state: dict[str, list[str]] = {"succeeded": [], "final_failed": []}
    for path in round_files(state_dir, rnd):
        for line in iter_lines(path):
            if not line.strip():
                continue
            try:
                custom_id, state = final_state(line)
                digest = digests.get(custom_id)
            except ValueError:  # json.JSONDecodeError included
                continue  # a stray line (no id, not JSON): counted by the merge's check, no answer here
            if state is not None and digest is not None:
                by_state[state].append(digest)
    for state, found in by_state.items():
        if found:
            record.mark_final(owner, found, state, rnd.batch_id)


def give_up_unanswered(
    record: RequestRecord, owner: str, state_dir: ObjectStoragePath, rounds: list[Round]
) -> int:
    """Mark ``owner``'s requests of ``rounds`` without a final answer ``open``, for another run to send."""
    digests: set[str] = set()
    for rnd in rounds:
        digests.update(digests_of(state_dir / rnd.file).values())
    return record.mark_open(owner, sorted(digests))


def split_borrowed(
    record: RequestRecord, me: str, digests: list[str], now: float, stale_after: float = STALE_AFTER
) -> tuple[list[Entry], list[Entry]]:
    """Return ``(waiting, takeable)``: borrowed requests still in another owner's hands, and given up."""
    waiting: list[Entry] = []
    takeable: list[Entry] = []
    for entry in record.entries(digests).values():
        if entry.owner == me or entry.state in FINAL_STATES:
            continue
        (takeable if entry.takeable(now, stale_after) else waiting).append(entry)
    return waiting, takeable


# --- what the wait task does with the request record, kept out of the Airflow adapter -----------


def record_collected_round(
    ledger_dir: str | None,
    reuse_identical: Any,
    owner: str,
    state_dir: ObjectStoragePath,
    rnd: Round,
    log: Log,
) -> None:
    """Record a collected round's final answers for every run that borrowed them, and cache them.

    Nothing without a local record or for a failed batch. The answers go into the answer cache too
    when the Variable ``openai_batch_reuse_identical`` turns it on (a bad value was refused by
    prepare already: here it only skips the cache, with a warning).
    """
    from openai_batch.answers import cache_for
    from openai_batch.answers import reuse_identical as parse_reuse
    from openai_batch.records import record_for

    record = record_for(ledger_dir)
    if record is None or not rnd.collected or rnd.status == "failed":
        return
    record_round_answers(record, owner, state_dir, rnd)
    try:
        enabled = parse_reuse(reuse_identical)
    except ValueError as err:
        log.warning("No answer is cached: %s", err)
        return
    cache = cache_for(ledger_dir) if enabled else None
    if cache is None:
        return
    stored = store_round_answers(cache, owner, state_dir, rnd)
    if cache.set_aside is not None:
        log.warning("The answer cache could not be read; it was moved to %s", cache.set_aside)
    log.info("%s answer(s) of batch %s stored in the answer cache", stored, rnd.batch_id)


def keep_round_claims(ledger_dir: str | None, owner: str, state_dir: ObjectStoragePath, rnd: Round) -> None:
    """Refresh the claims of a round waiting for capacity, so no borrower takes them as stale."""
    from openai_batch.records import record_for

    record = record_for(ledger_dir)
    if record is not None:
        record.touch(owner, list(digests_of(state_dir / rnd.file).values()))


def give_up_rounds(
    ledger_dir: str | None, owner: str, state_dir: ObjectStoragePath, rounds: list[Round], log: Log
) -> None:
    """Give up the requests of ``rounds`` left without a final answer: a borrower sends them itself."""
    from openai_batch.records import record_for

    record = record_for(ledger_dir)
    if record is not None:
        count = give_up_unanswered(record, owner, state_dir, rounds)
        if count:
            log.info("%s request(s) end without a final answer; another run may send them", count)


@dataclass(frozen=True)
class BorrowStep:
    """
    What a borrowed entry does next.

    :param action: ``finish`` (every borrowed request has its answer), ``wait`` (some are still in
        their owner's hands) or ``send`` (these were given up and are now ours to send).
    :param owners: The owners waited for.
    :param waiting: How many requests are waited for.
    :param taken: The digests taken over, for ``send``.
    """

    action: Literal["finish", "wait", "send"]
    owners: tuple[str, ...] = ()
    waiting: int = 0
    taken: frozenset[str] = frozenset()


def next_borrow_step(
    record: RequestRecord, me: str, index: int, digests: list[str], now: float, stale_after: float
) -> BorrowStep:
    """
    Decide what a borrowed entry does: wait for owners, send what they gave up, or finish.

    Requests given up, or claimed and never sent for longer than ``stale_after``, are taken over
    (compare and swap: of two borrowers only one wins each); when another borrower won them all,
    they are in its hands now and the entry looks again.
    """
    while True:
        waiting, takeable = split_borrowed(record, me, digests, now, stale_after)
        if waiting:
            return BorrowStep("wait", owners=tuple(sorted({e.owner for e in waiting})), waiting=len(waiting))
        if not takeable:
            return BorrowStep("finish")
        taken = record.take_over(me, index, takeable)
        if taken:
            return BorrowStep("send", taken=frozenset(taken))


def write_taken_round(
    shard_file: str, state_dir: ObjectStoragePath, state: ShardState, taken: frozenset[str]
) -> int:
    """Write the requests taken over as a round of the entry (see :func:`openai_batch.layout.take_file`).

    The round is added to ``state`` (the caller saves it): after the last one, or in place of the
    entry's first round when nothing was sent for it yet. Return how many requests it holds.
    """
    from openai_batch.state import Round
    from openai_batch.storage import iter_lines

    name = take_file(shard_file, len(state.rounds))
    count = 0
    with (state_dir / name).open("wb") as fout:
        for line in iter_lines(state_dir / shard_file):
            if line.strip() and request_digest(line) in taken:
                fout.write(line if line.endswith(b"\n") else line + b"\n")
                count += 1
    rnd = state.current
    if rnd.batch_id:
        state.rounds.append(Round(round=rnd.round + 1, file=name, requests=count))
    else:  # the entry's first round: nothing was sent for it yet
        state.rounds[-1] = Round(round=rnd.round, file=name, requests=count)
    return count
