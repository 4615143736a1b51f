"""Classify batch output/error lines and join them back to the input order.

Result lines come from several output and error files, in no particular order, possibly
over several retry rounds. :class:`ResultStore` keeps the latest outcome per custom_id in a
scratch SQLite file (bounded page cache, no journal), and :meth:`ResultStore.write_results`
streams ``results.jsonl`` in the order of ``order.txt`` written by
:func:`openai_batch.prepare.prepare_requests`. Memory stays flat whatever the number of
results: lines are parsed one by one and written to SQLite in chunks.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii
from json.scanner import make_scanner
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast, get_args

from openai_batch.limits import is_retryable_code

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

__all__ = [
    "ResultCounts",
    "ResultRecord",
    "ResultStatus",
    "ResultStore",
    "Usage",
    "classify_line",
    "is_retryable",
    "read_order",
]

ResultStatus = Literal["succeeded", "failed", "expired", "cancelled"]
RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)

_CHUNK_ROWS = 20000
#: The round of results carried over from an earlier content: below every round of this one.
REUSED_ROUND = -1
_CHUNK_BYTES = 32 * 1024 * 1024
_ORDER_CHUNK = 4000
# Encoders built once: json.dumps with non-default arguments builds a new encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":")).encode
_SCAN: Any = cast("Any", make_scanner)(json.JSONDecoder())


def classify_line(
    obj: dict[str, Any],
) -> tuple[ResultStatus, dict[str, Any] | None, dict[str, Any] | None]:
    """Return ``(status, response body, error)`` of one output/error file line.

    * ``response.status_code`` 2xx: succeeded, error None.
    * any other ``response.status_code``: failed, error from ``response.body.error``
      (``code`` falls back to its ``type``, then to ``http_<status>``).
    * no response and ``error.code`` ``batch_expired``/``batch_cancelled``: expired/cancelled.
    * any other error, or neither: failed.
    """
    response = obj.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status_code: int = response["status_code"]
        body = response.get("body")
        body = body if isinstance(body, dict) else None
        if 200 <= status_code < 300:
            return "succeeded", body, None
        raw_error = body.get("error") if body is not None else None
        err = raw_error if isinstance(raw_error, dict) else {}
        code = err.get("code") or err.get("type") or f"http_{status_code}"
        message = err.get("message") or f"request failed with HTTP status {status_code}"
        return "failed", body, {"code": str(code), "message": str(message)}
    error = obj.get("error")
    if isinstance(error, dict):
        code = str(error.get("code") or "unknown_error")
        message = str(error.get("message") or code)
        if code == "batch_expired":
            return "expired", None, {"code": code, "message": message}
        if code == "batch_cancelled":
            return "cancelled", None, {"code": code, "message": message}
        return "failed", None, {"code": code, "message": message}
    return (
        "failed",
        None,
        {"code": "invalid_result_line", "message": "result line has neither response nor error"},
    )


def is_retryable(status: ResultStatus | str, error: dict[str, Any] | None) -> bool:
    """Return True when a request with this outcome is worth resubmitting.

    Expired and cancelled requests are; failed ones only for rate limits (429), server
    errors (5xx) and similar transient codes (:data:`openai_batch.limits.RETRYABLE_ERROR_CODES`).
    Client errors (4xx) are not.
    """
    if status in ("expired", "cancelled"):
        return True
    if status != "failed" or not error:
        return False
    code = error.get("code")
    return is_retryable_code(code if isinstance(code, str) else None)


@dataclass
class Usage:
    """Token usage summed over succeeded responses.

    :param input_tokens: prompt/input tokens.
    :param output_tokens: completion/output tokens.
    :param cached_tokens: part of the input tokens served from the prompt cache.
    :param reasoning_tokens: part of the output tokens spent on reasoning.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass
class ResultCounts:
    """Outcome counts of a results file.

    :param succeeded: requests that succeeded.
    :param failed: requests that failed (missing results included).
    :param expired: requests whose batch expired before they ran.
    :param cancelled: requests whose batch was cancelled before they ran.
    :param total: lines written.
    :param usage: usage summed over succeeded responses paid in this content's batches.
    :param reused: succeeded results carried over from an earlier content (in ``succeeded`` too).
    """

    succeeded: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    total: int = 0
    usage: Usage = field(default_factory=Usage)
    reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True)
class ResultRecord:
    """Latest known outcome of one request.

    :param custom_id: the request id.
    :param status: outcome.
    :param response: response body, or None.
    :param error: ``{"code", "message"}``, or None.
    :param batch_id: batch that produced the outcome.
    :param round: submission round (0 for the first submission).
    """

    custom_id: str
    status: ResultStatus
    response: dict[str, Any] | None
    error: dict[str, Any] | None
    batch_id: str
    round: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage_of(body: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """Return (input, output, cached, reasoning) tokens of a response body."""
    if body is None:
        return 0, 0, 0, 0
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    if "input_tokens" in usage:  # responses API
        in_details = usage.get("input_tokens_details")
        out_details = usage.get("output_tokens_details")
        return (
            _int(usage.get("input_tokens")),
            _int(usage.get("output_tokens")),
            _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0,
            _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
        )
    in_details = usage.get("prompt_tokens_details")
    out_details = usage.get("completion_tokens_details")
    return (
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0,
        _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
    )


def _dumps(value: Any) -> str:
    if value is None:
        return "null"
    text = _COMPACT(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes: keep them escaped
        return _COMPACT_ASCII(value)
    return text


_UPSERT_HEAD = """
INSERT INTO results (custom_id, round, status, response, error, batch_id, retryable,
                     input_tokens, output_tokens, cached_tokens, reasoning_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (custom_id) DO UPDATE SET
    round = excluded.round, status = excluded.status, response = excluded.response,
    error = excluded.error, batch_id = excluded.batch_id, retryable = excluded.retryable,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    cached_tokens = excluded.cached_tokens, reasoning_tokens = excluded.reasoning_tokens
"""
# A later round replaces an earlier one; within a round a success is never overwritten.
_UPSERT = (
    _UPSERT_HEAD
    + "WHERE excluded.round > results.round"
    + " OR (excluded.round = results.round AND results.status != 'succeeded')"
)
# A missing result only replaces outcomes of earlier rounds.
_INSERT_MISSING = _UPSERT_HEAD + "WHERE excluded.round > results.round"
_Row = tuple[str, int, str, str, str, str, int, int, int, int, int]


def _first(row: _Row) -> str:
    return row[0]


class ResultStore:
    """SQLite-backed store of the latest outcome per custom_id (a scratch file, bounded cache).

    :param path: file of the scratch database; an existing file is reused, so a task can
        add the files of later rounds to the store of earlier ones.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-65536", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS results (
                custom_id TEXT PRIMARY KEY, round INTEGER NOT NULL, status TEXT NOT NULL,
                response TEXT NOT NULL, error TEXT NOT NULL, batch_id TEXT NOT NULL,
                retryable INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL)"""
        )

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database (the file stays; delete it when done)."""
        self._db.close()

    def _write(self, sql: str, rows: list[_Row]) -> None:
        # Sorted by custom_id, the upserts walk the primary-key index in order (fewer page misses).
        # Ids are unique within one output/error file, so the order does not change the outcome;
        # for repeated ids the stable sort keeps their file order.
        rows.sort(key=_first)
        self._db.execute("BEGIN")
        self._db.executemany(sql, rows)
        self._db.execute("COMMIT")

    def add_lines(self, lines: Iterable[bytes], *, batch_id: str, round: int) -> int:
        """Store the outcomes of output/error file lines; return how many lines were read.

        :param lines: raw lines of an output or error file.
        :param batch_id: batch the file belongs to.
        :param round: submission round; a later round replaces an earlier one.
        :raises ValueError: for a line that is not a JSON object with a string custom_id.
        """
        rows: list[_Row] = []
        size = 0
        count = 0
        for raw in lines:
            if not raw.strip():
                continue
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                raise ValueError(f"result line of batch {batch_id} has no custom_id: {raw[:200]!r}")
            status, body, error = classify_line(obj)
            usage = _usage_of(body) if status == "succeeded" else (0, 0, 0, 0)
            response = _dumps(body)
            rows.append(
                (
                    obj["custom_id"],
                    round,
                    status,
                    response,
                    _dumps(error),
                    batch_id,
                    int(is_retryable(status, error)),
                    *usage,
                )
            )
            count += 1
            size += len(response)
            if len(rows) >= _CHUNK_ROWS or size >= _CHUNK_BYTES:
                self._write(_UPSERT, rows)
                rows, size = [], 0
        if rows:
            self._write(_UPSERT, rows)
        return count

    def add_final_lines(self, lines: Iterable[bytes]) -> int:
        """Store ``results.jsonl`` lines carried over from an earlier content (round -1); return how many."""
        rows: list[_Row] = []
        count = 0
        for raw in lines:
            if not raw.strip():
                continue
            record = json.loads(raw)
            body = record.get("response")
            usage = _usage_of(body if isinstance(body, dict) else None)
            rows.append(
                (
                    record["custom_id"],
                    REUSED_ROUND,
                    record["status"],
                    _dumps(body),
                    _dumps(record.get("error")),
                    str(record.get("batch_id") or ""),
                    0,
                    *usage,
                )
            )
            count += 1
            if len(rows) >= _CHUNK_ROWS:
                self._write(_UPSERT, rows)
                rows = []
        if rows:
            self._write(_UPSERT, rows)
        return count

    def mark_missing(
        self,
        custom_ids: Iterable[str],
        *,
        status: ResultStatus,
        batch_id: str,
        round: int,
        code: str,
        message: str,
    ) -> int:
        """Record an outcome for requests a batch returned nothing for; return how many.

        An outcome already stored for the same or a later round is kept.
        """
        error = {"code": code, "message": message}
        error_json = _dumps(error)
        retryable = int(is_retryable(status, error))
        rows: list[_Row] = []
        count = 0
        for custom_id in custom_ids:
            rows.append((custom_id, round, status, "null", error_json, batch_id, retryable, 0, 0, 0, 0))
            count += 1
            if len(rows) >= _CHUNK_ROWS:
                self._write(_INSERT_MISSING, rows)
                rows = []
        if rows:
            self._write(_INSERT_MISSING, rows)
        return count

    def get(self, custom_id: str) -> ResultRecord | None:
        """Return the latest outcome of ``custom_id``, or None."""
        row = self._db.execute(
            "SELECT custom_id, status, response, error, batch_id, round FROM results WHERE custom_id = ?",
            (custom_id,),
        ).fetchone()
        if row is None:
            return None
        return ResultRecord(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4], row[5])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM results").fetchone()[0])

    def _rows_in_order(self, order: Iterable[str]) -> Iterator[tuple[str, tuple[Any, ...] | None]]:
        chunk: list[str] = []
        for custom_id in order:
            chunk.append(custom_id)
            if len(chunk) >= _ORDER_CHUNK:
                yield from self._lookup(chunk)
                chunk = []
        if chunk:
            yield from self._lookup(chunk)

    def _lookup(self, ids: list[str]) -> Iterator[tuple[str, tuple[Any, ...] | None]]:
        found = {
            row[0]: row
            for row in self._db.execute(
                "SELECT custom_id, status, response, error, batch_id, input_tokens, output_tokens,"
                " cached_tokens, reasoning_tokens, round FROM results"
                " WHERE custom_id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        }
        for custom_id in ids:
            yield custom_id, found.get(custom_id)

    def pending(self, order: Iterable[str]) -> Iterator[str]:
        """Yield, in order, the ids with no outcome yet or a retryable one (to resubmit)."""
        for custom_id, row in self._rows_in_order(order):
            if row is None:
                yield custom_id
            elif row[1] != "succeeded":
                record_error = json.loads(row[3])
                if is_retryable(row[1], record_error):
                    yield custom_id

    def write_results(self, order: Iterable[str], out: BinaryIO) -> ResultCounts:
        """Write ``results.jsonl`` lines for ``order`` (custom_ids in input order) to ``out``.

        Each line is ``{"custom_id", "status", "response", "error", "batch_id"}``; an id with
        no stored outcome is written as failed with error code ``missing_result``.
        """
        counts = ResultCounts()
        usage = counts.usage
        batch_json: dict[str, str] = {}
        tally = {"succeeded": 0, "failed": 0, "expired": 0, "cancelled": 0}
        missing_error = '{"code":"missing_result","message":"no result was returned for this request"}'
        buffer: list[str] = []
        for custom_id, row in self._rows_in_order(order):
            if row is None:
                status, response, error, batch_id = "failed", "null", missing_error, "null"
            else:
                status, response, error = row[1], row[2], row[3]
                batch_id = batch_json.get(row[4]) or batch_json.setdefault(row[4], json.dumps(row[4]))
                if row[9] == REUSED_ROUND:
                    counts.reused += 1
                elif status == "succeeded":
                    usage.input_tokens += row[5]
                    usage.output_tokens += row[6]
                    usage.cached_tokens += row[7]
                    usage.reasoning_tokens += row[8]
            tally[status] += 1
            buffer.append(
                f'{{"custom_id":{encode_basestring_ascii(custom_id)},"status":"{status}",'
                f'"response":{response},"error":{error},"batch_id":{batch_id}}}\n'
            )
            if len(buffer) >= _ORDER_CHUNK:
                out.write("".join(buffer).encode("utf-8"))
                buffer = []
        if buffer:
            out.write("".join(buffer).encode("utf-8"))
        counts.succeeded = tally["succeeded"]
        counts.failed = tally["failed"]
        counts.expired = tally["expired"]
        counts.cancelled = tally["cancelled"]
        counts.total = sum(tally.values())
        return counts


def read_order(path: str | Path) -> Iterator[str]:
    """Yield the custom_ids of an ``order.txt`` written by ``prepare_requests``, in order."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            text = line[:-1] if line[-1:] == "\n" else line
            if text[:1] == '"' and text[-1:] == '"':  # the usual line: a JSON string, no padding
                try:
                    value, end = _SCAN(text, 0)
                except ValueError:
                    end = -1
                if end == len(text) and isinstance(value, str):
                    yield value
                    continue
            if line.strip():
                value = json.loads(line)
                if not isinstance(value, str):
                    raise ValueError(f"{path}: not a custom_id line: {line[:200]!r}")
                yield value
