"""Preparing one content of one input file: prepare, claim, publish into its state folder, plan.

:class:`ContentPreparer` does the work of the prepare task for a file that was opened and is not
done yet: it runs :func:`openai_batch.prepare.prepare_requests` into a scratch folder, claims the
requests in the request record (:mod:`openai_batch.claims`), copies the files into the content's
state folder and writes the plan (:mod:`openai_batch.plans`) last. No Airflow here: the task
(:class:`openai_batch.operators.OpenAIBatchPrepareOperator`) opens the input and calls it.
"""

from __future__ import annotations

import gzip
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from openai_batch.budget import plan_cost, shard_estimates
from openai_batch.layout import (
    MANIFEST_FILE,
    ORDER_FILE,
    ORDER_LINES_FILE,
    PLAN_FILE,
    REJECTS_FILE,
    RESULTS_FILE,
    digests_file,
)
from openai_batch.plans import error_plan, shard_ref, state_dir_name, state_plan
from openai_batch.pricing import is_unpriced
from openai_batch.storage import (
    InputTooLargeError,
    copy_file,
    file_digest,
    iter_lines,
    read_json_or_set_aside,
    to_path,
    url_of,
    write_json,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

    from openai_batch.claims import ClaimOutcome
    from openai_batch.identity import InputRef
    from openai_batch.prepare import PrepareResult, Shard
    from openai_batch.provider import Log
    from openai_batch.reuse import ReuseIndex
    from openai_batch.storage import InputFile

__all__ = ["BadSettingError", "ContentPreparer", "PackBuilder", "PackError", "open_input", "results_complete"]


class BadSettingError(ValueError):
    """Raise when a setting (a Variable) has a value the preparer cannot use: no retry can help."""


def results_complete(folder: ObjectStoragePath, manifest: dict[str, Any]) -> bool:
    """
    Return True when the folder's results and rejects are exactly what its manifest recorded.

    A truncated or missing results file (a full disk, a crash, a hand edit) is not complete, so
    the run writes it again from the state it kept, without paying again.
    """
    for name, key in ((RESULTS_FILE, "results_sha256"), (REJECTS_FILE, "rejects_sha256")):
        recorded = manifest.get(key)
        path = folder / name
        if not recorded or not path.exists() or file_digest(path)[0] != recorded:
            return False
    return True


@contextmanager
def open_input(src: InputFile) -> Iterator[IO[bytes]]:
    """Stream an opened input from its start; ``*.gz`` is decompressed on the fly."""
    with src.content() as fin:
        yield fin


@dataclass
class ContentPreparer:
    """
    Prepare one opened input into its state folder, with the prepare task's settings.

    :meth:`prepare` runs the steps a file alone takes; :class:`PackBuilder` runs the same steps
    (:meth:`run_prepare`, :meth:`publish_error`, :meth:`earlier_plan`, :meth:`publish`) for each
    file of a pack and for the pack's contents.

    :param endpoint: Endpoint for short lines and lines without a url.
    :param provider: The connection's provider (``openai``, ``azure`` or ``anthropic``): whose limits apply.
    :param price_models: The model each ``model`` value is priced as where it differs (Azure deployments).
    :param model: When set, overrides the model of every request.
    :param plan_only: A dry run: nothing is claimed.
    :param ledger_dir: The ledger folder (the request record and the answer cache live there).
    :param reuse_identical: The Variable ``openai_batch_reuse_identical`` as rendered.
    :param log: Where to log.
    """

    endpoint: str
    provider: str
    price_models: dict[str, str]
    model: str | None
    plan_only: bool
    ledger_dir: str | None
    reuse_identical: Any
    log: Log

    def _earlier_results(self, folder: ObjectStoragePath, work: Path) -> ReuseIndex | None:
        """
        Return the succeeded requests of the content whose results are in ``folder`` now, if complete.

        Unchanged requests of a file that came back with lines added or changed are then not sent
        again. Results that are incomplete or from before digests were kept give no index.
        """
        from openai_batch.reuse import INDEX_FILE, ReuseIndex

        manifest = read_json_or_set_aside(folder / MANIFEST_FILE, "no earlier results are reused", self.log)
        if not isinstance(manifest, dict):
            return None
        state_dir = manifest.get("state_dir")
        if not state_dir or not results_complete(folder, manifest):
            return None
        digests = to_path(state_dir) / INDEX_FILE
        if not digests.exists():
            return None
        index = ReuseIndex(work / ".reuse.sqlite")
        try:
            count = index.load(iter_lines(digests), iter_lines(folder / RESULTS_FILE))
        except (ValueError, KeyError) as err:
            self.log.warning("Earlier results in %s cannot be reused: %s", folder, err)
            index.close()
            return None
        self.log.info("%s earlier succeeded request(s) of this file can be reused if unchanged", count)
        return index

    def _claim(
        self, shards: list[Shard], work: Path, state_dir: ObjectStoragePath, salt: str
    ) -> ClaimOutcome:
        """
        Claim the prepared requests in the request record; take out the ones another run owns.

        A dry run claims nothing. ``force`` (a ``salt``) takes every request over: it is sent again.
        """
        from openai_batch.answers import CACHED_FILE, cache_for, reuse_identical
        from openai_batch.claims import ClaimOutcome, claim_shards
        from openai_batch.records import record_for

        record = None if self.plan_only else record_for(self.ledger_dir)
        if record is None:
            (work / CACHED_FILE).write_bytes(b"")
            return ClaimOutcome()
        try:
            enabled = reuse_identical(self.reuse_identical)
        except ValueError as err:
            raise BadSettingError(str(err)) from None
        cache = cache_for(self.ledger_dir) if enabled else None
        outcome = claim_shards(record, url_of(state_dir), shards, work, force=bool(salt), cache=cache)
        if cache is not None and cache.set_aside is not None:
            self.log.warning("The answer cache could not be read; it was moved to %s", cache.set_aside)
        if outcome.cached:
            self.log.info(
                "%s request(s) are identical to ones answered before: their answers come from the "
                "answer cache (Variable openai_batch_reuse_identical), not paid again",
                outcome.cached,
            )
        for group in outcome.borrowed:
            self.log.info(
                "%s request(s) are already sent or answered by %s (shard %s): their answers are used, "
                "not paid again",
                group["requests"],
                group["owner_state_dir"],
                group["owner_shard"],
            )
        return outcome

    def prepare(
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
        outcome = self.run_prepare(ref, src, folder, work, limit, salt)
        if isinstance(outcome, tuple):
            return self.publish_error(outcome, folder, work, variant)
        state_dir = folder / state_dir_name(outcome.input_sha256, variant)
        earlier = self.earlier_plan(state_dir)
        if earlier is not None:
            return earlier
        return self.publish(ref, outcome, work, state_dir, salt)

    def publish_error(
        self, outcome: tuple[str, str, int, int], folder: ObjectStoragePath, work: Path, variant: str
    ) -> dict[str, Any]:
        """Publish the rejects of a content that cannot be sent; return its error plan."""
        digest, error, lines, rejected = outcome
        state_dir = folder / state_dir_name(digest, variant)
        for name in (ORDER_FILE, REJECTS_FILE):
            if not (work / name).exists():
                (work / name).write_bytes(b"")
            copy_file(work / name, state_dir / name)
        return dict(error_plan(url_of(state_dir), digest, error, lines=lines, rejected=rejected))

    def earlier_plan(self, state_dir: ObjectStoragePath) -> dict[str, Any] | None:
        """
        Return the plan this content was published with before, to go on with, or None.

        This content was prepared with these settings before (a retry, a clear, a re-run whose
        results were incomplete): its shards, rounds and downloads are there; keep them. A dry run's
        plan claimed nothing: a real run claims (and so publishes) again. A packed file's plan is
        kept only while its pack content's plan is there.
        """
        earlier = read_json_or_set_aside(
            state_dir / PLAN_FILE, "the file is prepared again into the same state folder", self.log
        )
        if not isinstance(earlier, dict) or (earlier.get("unclaimed") and not self.plan_only):
            return None
        packed_in = earlier.get("packed_in")
        if packed_in and not (to_path(packed_in) / PLAN_FILE).exists():
            return None
        return earlier

    def run_prepare(
        self, ref: InputRef, src: InputFile, folder: ObjectStoragePath, work: Path, limit: int, salt: str
    ) -> PrepareResult | tuple[str, str, int, int]:
        """Return the outcome of preparing ``src`` into ``work``, or ``(digest, error, lines, rejected)``."""
        from openai_batch.idprefix import file_id_prefix
        from openai_batch.limits import limits_for
        from openai_batch.prepare import NoValidRequestsError, PrepareError, prepare_requests

        limits = limits_for(self.provider, limit)
        reuse = None if salt else self._earlier_results(folder, work)
        try:
            with open_input(src) as fin:
                return prepare_requests(
                    fin,
                    source_name=ref.display,
                    work_dir=work,
                    endpoint=self.endpoint,
                    model=self.model or None,
                    limits=limits,
                    # Ids from the file's full key: two files of the same name never share one.
                    id_prefix=file_id_prefix(ref, folder),
                    reuse=reuse,
                    price_models=self.price_models,
                )
        except NoValidRequestsError as err:
            return err.input_sha256 or src.content_sha256(), str(err), err.lines, err.rejected
        except (PrepareError, EOFError, OSError, zlib.error, InputTooLargeError) as err:
            if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
                raise  # storage trouble is worth a task retry; a corrupt file is not
            for name in (ORDER_FILE, REJECTS_FILE):
                (work / name).write_bytes(b"")  # whatever a broken read left there is not kept
            # A corrupt archive has no content digest: its bytes name the state folder.
            return src.raw_sha256(""), f"{ref.display}: cannot be read: {err}", 0, 0

    def publish(
        self, ref: InputRef, result: PrepareResult, work: Path, state_dir: ObjectStoragePath, salt: str
    ) -> dict[str, Any]:
        """Claim the requests, copy the prepared files into the state folder and write its plan last."""
        from openai_batch.answers import CACHED_FILE
        from openai_batch.claims import borrowed_entries
        from openai_batch.reuse import INDEX_FILE, REUSED_FILE
        from openai_batch.state import shard_identity

        claimed = self._claim(result.shards, work, state_dir, salt)
        names = [Path(s.path).name for s in result.shards] + [
            ORDER_FILE,
            ORDER_LINES_FILE,
            REJECTS_FILE,
            INDEX_FILE,
            REUSED_FILE,
            CACHED_FILE,
        ]
        names += [group["file"] for group in claimed.borrowed]
        # The shards' digests, where claiming kept them (a cache: see claims.digests_of).
        names += [d for s in result.shards if (work / (d := digests_file(Path(s.path).name))).exists()]
        for name in names:
            copy_file(work / name, state_dir / name)
        estimates = {s.index: shard_estimates(work / Path(s.path).name, s.endpoint) for s in result.shards}
        where = {"source": ref.source, "key": ref.display, "state_dir": url_of(state_dir)}
        count = len(result.shards)
        shards = [
            shard_ref(
                s,
                **where,
                count=count,
                identity=shard_identity(result.input_sha256, claimed.sha256(s), s.index, salt),
                requests=claimed.requests(s),
                enqueued_tokens=estimates[s.index][0],
                estimated_output_tokens=estimates[s.index][1],
            )
            for s in result.shards
            if claimed.requests(s)
        ]
        borrowed = borrowed_entries(claimed, {**where, "count": count}, result.input_sha256, count, salt)
        plan = state_plan(
            result,
            state_dir=url_of(state_dir),
            shards=[*shards, *borrowed],  # type: ignore[list-item]  # borrowed entries are ShardRefs too
            unpriced_models=sorted(
                {s.priced_as for s in result.shards if is_unpriced(s.priced_as, s.endpoint)}
            ),
            borrowed=sum(g["requests"] for g in claimed.borrowed),
            cached=claimed.cached,
            estimated_output_tokens=sum(e[1] for e in estimates.values()),
            plan_only=bool(self.plan_only),
        )
        plan["estimated_total_cost_usd"] = plan_cost(dict(plan))
        write_json(state_dir / PLAN_FILE, plan)  # last: its presence means the folder is complete
        return dict(plan)


class PackError(RuntimeError):
    """Raise when a pack content would not send exactly its files' requests (nothing is claimed)."""


@dataclass
class _Packed:
    """A file of a pack new to packing: prepared in ``work``, its plan written once its pack is."""

    ref: InputRef
    result: PrepareResult
    work: Path
    state_dir: ObjectStoragePath
    plan: dict[str, Any]


@dataclass
class PackBuilder:
    """
    Prepare the files of a pack (see :mod:`openai_batch.packs`) and the pack contents that send them.

    :meth:`add` prepares one file on its own, as :meth:`ContentPreparer.prepare` does, but publishes
    nothing for a content new to packing: :meth:`publish` then writes the requests of those files,
    as each would send them alone, into pack contents of files whose custom_ids do not collide;
    prepares and checks each; writes each file's state folder, whose plan names its pack content
    (``packed_in``); and last claims and publishes the pack content like any content (its state
    folder under ``<results>/_packs/``). A content already sent (alone, or in a pack whose plan is
    there) keeps its plan: every later run waits for the same batches.

    :param preparer: The prepare task's settings.
    :param packs_folder: ``<results>/_packs``.
    :param work: A scratch folder for the whole pack.
    """

    preparer: ContentPreparer
    packs_folder: ObjectStoragePath
    work: Path
    new: list[_Packed] = field(default_factory=list)
    #: The state folder of each file :meth:`publish` packed -> its pack content's.
    packed_in: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        ref: InputRef,
        src: InputFile,
        folder: ObjectStoragePath,
        limit: int,
        variant: str,
        salt: str,
    ) -> dict[str, Any]:
        """Prepare one file of the pack; return its plan (``packed_in`` is set by :meth:`publish`)."""
        from openai_batch.budget import plan_cost

        work = self.work / f"file-{len(list(self.work.iterdir())):05d}"
        work.mkdir()
        outcome = self.preparer.run_prepare(ref, src, folder, work, limit, salt)
        if isinstance(outcome, tuple):
            return self.preparer.publish_error(outcome, folder, work, variant)
        state_dir = folder / state_dir_name(outcome.input_sha256, variant)
        earlier = self.preparer.earlier_plan(state_dir)
        if earlier is not None:
            return earlier
        if not any(s.requests for s in outcome.shards):
            # Every request is answered already (carried over from an earlier content): nothing to
            # send, so nothing to pack; published as alone, it claims nothing.
            return self.preparer.publish(ref, outcome, work, state_dir, salt)
        # The file's own estimate, for its manifest: its shards as it would send them alone.
        estimates = [shard_estimates(work / Path(s.path).name, s.endpoint) for s in outcome.shards]
        refs = [
            shard_ref(
                s,
                source=ref.source,
                key=ref.display,
                state_dir=url_of(state_dir),
                count=len(outcome.shards),
                identity="",
                requests=s.requests,
                enqueued_tokens=e[0],
                estimated_output_tokens=e[1],
            )
            for s, e in zip(outcome.shards, estimates, strict=True)
        ]
        plan = dict(
            state_plan(
                outcome,
                state_dir=url_of(state_dir),
                shards=[],
                unpriced_models=sorted(
                    {s.priced_as for s in outcome.shards if is_unpriced(s.priced_as, s.endpoint)}
                ),
                borrowed=0,
                cached=0,
                estimated_output_tokens=sum(e[1] for e in estimates),
                plan_only=False,
            )
        )
        plan["estimated_total_cost_usd"] = plan_cost({"shards": refs})
        self.new.append(_Packed(ref, outcome, work, state_dir, plan))
        return plan

    def publish(self, label: str, limit: int, variant: str, salt: str) -> list[dict[str, Any]]:
        """Send the files new to packing from pack contents; return those contents' plans."""
        from openai_batch.identity import InputRef
        from openai_batch.packs import assign_contents
        from openai_batch.results import read_order

        if not self.new:
            return []
        groups: dict[int, list[_Packed]] = {}
        numbers = assign_contents(set(read_order(p.work / ORDER_FILE)) for p in self.new)
        for packed, number in zip(self.new, numbers, strict=True):
            groups.setdefault(number, []).append(packed)
        units = []
        for number, members in sorted(groups.items()):
            name = label if len(groups) == 1 else f"{label} #{number + 1}/{len(groups)}"
            work = self.work / f"pack-{number}"
            result = self._build_content(name, members, limit, work)
            state_dir = self.packs_folder / state_dir_name(result.input_sha256, variant)
            # The files' plans first, naming the pack content; its plan (after its claim) last. A
            # file's plan counts only once the pack's is there, so a prepare that dies in between
            # builds the same pack content again from the same files, and never another one.
            for packed in members:
                self._publish_file(packed, url_of(state_dir))
                self.packed_in[url_of(packed.state_dir)] = url_of(state_dir)
            unit = self.preparer.earlier_plan(state_dir)
            if unit is None:
                ref = InputRef(source=url_of(state_dir), key=name)
                unit = self.preparer.publish(ref, result, work / "shards", state_dir, salt)
            units.append(unit)
        return units

    def _build_content(self, name: str, members: list[_Packed], limit: int, work: Path) -> PrepareResult:
        """Prepare one pack content from its files' shards into ``work/shards``, checked; claim nothing."""
        from openai_batch.limits import limits_for
        from openai_batch.prepare import prepare_requests
        from openai_batch.reuse import request_digest

        work.mkdir()
        joined = work / "pack-input.jsonl"
        expected: set[str] = set()
        with joined.open("wb") as fout:
            for packed in members:
                for shard in packed.result.shards:
                    for line in _local_lines(packed.work / Path(shard.path).name):
                        if line.strip():
                            line = line if line.endswith(b"\n") else line + b"\n"
                            expected.add(request_digest(line))
                            fout.write(line)
        shards_dir = work / "shards"
        with joined.open("rb") as fin:
            result = prepare_requests(
                fin,
                source_name=name,
                work_dir=shards_dir,
                endpoint=self.preparer.endpoint,
                model=None,  # each file's lines carry their model already (with any override)
                limits=limits_for(self.preparer.provider, limit),
                reuse=None,
                price_models=self.preparer.price_models,
                own_lines=True,
            )
        sent: set[str] = set()
        for shard in result.shards:
            sent.update(
                request_digest(line if line.endswith(b"\n") else line + b"\n")
                for line in _local_lines(shards_dir / Path(shard.path).name)
                if line.strip()
            )
        if result.rejected or sent != expected:
            raise PackError(
                f"{name}: the pack content would not send its files' requests as each would alone "
                f"({result.rejected} rejected, {len(expected - sent)} missing, {len(sent - expected)} "
                "changed); nothing was claimed"
            )
        return result

    @staticmethod
    def _publish_file(packed: _Packed, pack_state_dir: str) -> None:
        """Write a packed file's state folder: its order, rejects and reuse files, then its plan."""
        from openai_batch.reuse import INDEX_FILE, REUSED_FILE

        for name in (ORDER_FILE, ORDER_LINES_FILE, REJECTS_FILE, INDEX_FILE, REUSED_FILE):
            if (packed.work / name).exists():
                copy_file(packed.work / name, packed.state_dir / name)
        packed.plan["packed_in"] = pack_state_dir
        write_json(packed.state_dir / PLAN_FILE, packed.plan)  # last: the folder is complete


def _local_lines(path: Path) -> Iterator[bytes]:
    """Yield the lines of a local scratch file."""
    with path.open("rb", buffering=1 << 20) as fin:
        yield from fin
