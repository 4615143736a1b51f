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
from dataclasses import dataclass
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

__all__ = ["BadSettingError", "ContentPreparer", "open_input", "results_complete"]


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
        outcome = self._run_prepare(ref, src, folder, work, limit, salt)
        if isinstance(outcome, tuple):
            digest, error, lines, rejected = outcome
            state_dir = folder / state_dir_name(digest, variant)
            for name in (ORDER_FILE, REJECTS_FILE):
                if not (work / name).exists():
                    (work / name).write_bytes(b"")
                copy_file(work / name, state_dir / name)
            return dict(error_plan(url_of(state_dir), digest, error, lines=lines, rejected=rejected))
        state_dir = folder / state_dir_name(outcome.input_sha256, variant)
        earlier = read_json_or_set_aside(
            state_dir / PLAN_FILE, "the file is prepared again into the same state folder", self.log
        )
        # This content was prepared with these settings before (a retry, a clear, a re-run whose
        # results were incomplete): its shards, rounds and downloads are there; keep them. A dry
        # run's plan claimed nothing: a real run claims (and so publishes) again.
        if isinstance(earlier, dict) and not (earlier.get("unclaimed") and not self.plan_only):
            return earlier
        return self._publish(ref, outcome, work, state_dir, salt)

    def _run_prepare(
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

    def _publish(
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
