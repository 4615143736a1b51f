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
import os
import sqlite3
import sys
from array import array
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii
from json.scanner import make_scanner
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast, get_args

import msgspec

from openai_batch.retry import is_retryable_request

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

__all__ = [
    "ResultCounts",
    "ResultRecord",
    "ResultStatus",
    "ResultStore",
    "RoundCheck",
    "Usage",
    "classify_line",
    "is_retryable",
    "is_final_line",
    "read_order",
    "read_order_lines",
    "request_id",
    "request_ids",
]

ResultStatus = Literal["succeeded", "failed", "expired", "cancelled"]
RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)

#: Outcomes written to the database at a time, sorted by custom_id (fewer passes over its index).
_CHUNK_ROWS = 100_000
#: Page size of a new store's database. Once the store outgrows its page cache, each chunk's upserts
#: read pages back from the file and write them out again, a page per call; with 16 KiB pages instead
#: of SQLite's 4 KiB a 3M-result merge took 0.935 of the CPU (docs/benchmarks.md, the merge's growth).
_PAGE_BYTES = 16384
#: The round of results carried over from an earlier content: below every round of this one.
REUSED_ROUND = -1
#: Parts (three per line) buffered for writing at a time.
_ORDER_CHUNK = 3000
#: Response bytes buffered for writing at a time.
_BODY_BYTES = 8 * 1024 * 1024
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
    """Return True when a request with this outcome is worth resubmitting (see :mod:`openai_batch.retry`)."""
    return is_retryable_request(status, error)


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

    def as_api(self) -> dict[str, Any]:
        """Return the usage as a batch's ``usage`` object (as the API reports it, pricing reads it)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


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
    :param service_anomalies: per batch id, the counts of :class:`RoundCheck` for its round (only
        batches whose files held something else than one line per request sent).
    """

    succeeded: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    total: int = 0
    usage: Usage = field(default_factory=Usage)
    reused: int = 0
    service_anomalies: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the counts (``service_anomalies`` left out: per batch)."""
        data = asdict(self)
        del data["service_anomalies"]
        return data


#: Ways a round's output and error files can disagree with the requests sent in it.
ANOMALY_KINDS: tuple[str, ...] = ("missing", "duplicate", "foreign", "without_id", "unparseable")
#: Examples of anomalies kept per round (for the log), and characters kept of each.
_EXAMPLES, _EXAMPLE_CHARS = 3, 80


class RoundCheck:
    """
    The custom_ids sent in one round, to check that round's output and error files against.

    :meth:`ResultStore.add_lines` given a check stores only lines of ids sent in the round and counts
    the rest instead of failing: ``unparseable`` (not JSON), ``without_id`` (JSON without a string
    custom_id), ``foreign`` (an id not sent in this round: it never touches another request's
    outcome, another shard's included). An id answered more than once counts as ``duplicate`` for
    each extra line; its first success stays, and without one its last line counts (the store's
    rule within a round). ``missing`` (sent, no line at all) is set with :meth:`set_missing`.
    Memory: one set of the round's ids (at most 50,000, a batch's limit).

    :param sent: the custom_ids of the round's request file.
    """

    def __init__(self, sent: Iterable[str]) -> None:
        self.sent: frozenset[str] = frozenset(sent)
        #: Ids of the round answered by at least one stored line.
        self.seen: set[str] = set()
        self.counts: dict[str, int] = dict.fromkeys(ANOMALY_KINDS, 0)
        #: A few ``(kind, example)`` pairs, each example cut to a few dozen characters.
        self.examples: list[tuple[str, str]] = []

    def note(self, kind: str, example: str | bytes) -> None:
        """Count one anomaly of ``kind``; keep it as an example while there are few."""
        self.counts[kind] += 1
        if len(self.examples) < _EXAMPLES:
            text = example if isinstance(example, str) else repr(example[:_EXAMPLE_CHARS])
            self.examples.append((kind, text[:_EXAMPLE_CHARS]))

    def set_missing(self) -> int:
        """Count the ids sent that no line answered as ``missing``; return how many."""
        missing = self.sent - self.seen
        self.counts["missing"] = len(missing)
        for custom_id in sorted(missing)[: max(0, _EXAMPLES - len(self.examples))]:
            self.examples.append(("missing", custom_id[:_EXAMPLE_CHARS]))
        return len(missing)

    @property
    def total(self) -> int:
        """Return the number of anomalies counted."""
        return sum(self.counts.values())


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
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:  # Anthropic's Message
        # Its input_tokens leave out the cached part: cache reads (billed as cached input) and cache
        # writes (billed at 1.25 times input; counted here as input, so a little under).
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        return _int(usage.get("input_tokens")) + read + written, _int(usage.get("output_tokens")), read, 0
    if "input_tokens" in usage:  # responses API (and Anthropic's Message without cache fields)
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


def usage_of_lines(lines: Iterable[bytes]) -> dict[str, Any]:
    """
    Return a batch-level ``usage`` object summed over the succeeded answers among ``lines``.

    For a batch whose API reports no usage of its own (Anthropic's Message Batches, some
    OpenAI-compatible servers): the same object OpenAI's Batch gives, so costs follow one rule.
    """
    total = [0, 0, 0, 0]
    for raw in lines:
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        status, body, _ = classify_line(obj)
        if status == "succeeded":
            for i, n in enumerate(_usage_of(body)):
                total[i] += n
    return {
        "input_tokens": total[0],
        "output_tokens": total[1],
        "input_tokens_details": {"cached_tokens": total[2]},
        "output_tokens_details": {"reasoning_tokens": total[3]},
        "total_tokens": total[0] + total[1],
    }


class _Details(msgspec.Struct):
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _Body(msgspec.Struct):
    usage: _Usage | None = None


class _Response(msgspec.Struct):
    status_code: int
    body: msgspec.Raw


class _Line(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: msgspec.Raw = msgspec.Raw(b"null")


class _Final(msgspec.Struct):
    custom_id: str
    status: str
    response: msgspec.Raw = msgspec.Raw(b"null")
    error: msgspec.Raw = msgspec.Raw(b"null")
    batch_id: str | None = None


class _Request(msgspec.Struct):
    custom_id: str


_LINE = msgspec.json.Decoder(_Line)
_REQUEST = msgspec.json.Decoder(_Request)
_BODY = msgspec.json.Decoder(_Body)
_FINAL = msgspec.json.Decoder(_Final)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)
_NO_USAGE = (0, 0, 0, 0)


def _usage_tuple(usage: _Usage | None) -> tuple[int, int, int, int]:
    """Return (input, output, cached, reasoning) tokens of a decoded usage object."""
    if usage is None:
        return _NO_USAGE
    if usage.input_tokens or usage.output_tokens:  # responses API
        cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
        reasoning = usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
        return usage.input_tokens, usage.output_tokens, cached, reasoning
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return usage.prompt_tokens, usage.completion_tokens, cached, reasoning


def _fast_success(raw: bytes) -> tuple[str, bytes, tuple[int, int, int, int]] | None:
    """
    Return ``(custom_id, raw body, usage)`` of a 2xx output line, or None to take the general path.

    Only the envelope and the usage are decoded; the body is kept as the exact bytes the service
    sent (valid JSON, checked to be UTF-8), so it is neither parsed into objects nor serialised again.
    """
    try:
        line = _LINE.decode(raw)
    except _DECODE_ERRORS:
        return None
    response = line.response
    if response is None or not 200 <= response.status_code < 300:
        return None
    body = bytes(response.body)
    if body[:1] != b"{":
        return None
    if not body.isascii():
        try:  # skipped strings are not checked by the decoder: the file must stay UTF-8
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        usage = _BODY.decode(body).usage
    except _DECODE_ERRORS:
        return None
    return line.custom_id, body, _usage_tuple(usage)


def request_id(raw: bytes) -> str:
    """Return the custom_id of a request line (only that field is decoded).

    :raises ValueError: for a line that is not a JSON object with a string custom_id.
    """
    try:
        return _REQUEST.decode(raw).custom_id
    except _DECODE_ERRORS:
        pass
    try:  # what msgspec refuses and prepare keeps: a lone surrogate escape ("\\udc00") in a body
        line = json.loads(raw)
    except ValueError:
        line = None
    if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
        return str(line["custom_id"])
    raise ValueError(f"request line without a custom_id: {raw[:200]!r}")


def request_ids(lines: Iterable[bytes]) -> Iterator[str]:
    """Yield the custom_id of each request line, blank lines skipped (see :func:`request_id`)."""
    for raw in lines:
        if raw.strip():
            yield request_id(raw)


def is_final_line(raw: bytes) -> tuple[str, bool]:
    """Return ``(custom_id, final)`` of an output/error file line: final unless worth resubmitting.

    :raises ValueError: for a line that is not a JSON object with a string custom_id.
    """
    try:
        line = _LINE.decode(raw)
    except _DECODE_ERRORS:
        line = None
    if line is not None and line.response is not None and 200 <= line.response.status_code < 300:
        return line.custom_id, True  # the common line, decoded without its body
    obj = json.loads(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError(f"result line has no custom_id: {raw[:200]!r}")
    status, _body, error = classify_line(obj)
    return obj["custom_id"], not is_retryable(status, error)


def final_state(raw: bytes) -> tuple[str, str | None]:
    """
    Return ``(custom_id, state)`` of an output/error line for the request record.

    ``state`` is ``succeeded`` (a 2xx answer without an error), ``final_failed`` (any other final
    outcome) or None (worth resubmitting: not final). The common success line is decoded without
    its body.

    :raises ValueError: for a line that is not a JSON object with a string custom_id.
    """
    try:
        line = _LINE.decode(raw)
    except _DECODE_ERRORS:
        line = None
    if (
        line is not None
        and line.response is not None
        and 200 <= line.response.status_code < 300
        and bytes(line.error) == b"null"
    ):
        return line.custom_id, "succeeded"
    custom_id, final = is_final_line(raw)
    if not final:
        return custom_id, None
    obj = json.loads(raw)
    response = obj.get("response") or {}
    ok = not obj.get("error") and 200 <= int(response.get("status_code") or 0) < 300
    return custom_id, "succeeded" if ok else "final_failed"


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
INSERT INTO results (custom_id, round, status, body_at, body_len, error, batch, retryable,
                     input_tokens, output_tokens, cached_tokens, reasoning_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (custom_id) DO UPDATE SET
    round = excluded.round, status = excluded.status, body_at = excluded.body_at,
    body_len = excluded.body_len, error = excluded.error, batch = excluded.batch,
    retryable = excluded.retryable, input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens, cached_tokens = excluded.cached_tokens,
    reasoning_tokens = excluded.reasoning_tokens
"""
# A later round replaces an earlier one; within a round a success is never overwritten.
_UPSERT = (
    _UPSERT_HEAD
    + "WHERE excluded.round > results.round"
    + " OR (excluded.round = results.round AND results.status != 'succeeded')"
)
# A missing result only replaces outcomes of earlier rounds.
_INSERT_MISSING = _UPSERT_HEAD + "WHERE excluded.round > results.round"
# custom_id, round, status, body offset, body length, error JSON, batch number, retryable, usage.
_Row = tuple[str, int, str, int, int, str, int, int, int, int, int, int]
_BY_ID = itemgetter(0)
_MISSING_TAIL = (
    b',"error":{"code":"missing_result","message":"no result was returned for this request"},'
    b'"batch_id":null}\n'
)
_STATUS_HEADS = {status: f',"status":"{status}","response":' for status in RESULT_STATUSES}
#: custom_ids looked up per query (SQLite allows 999 parameters in its oldest builds).
_LOOKUP_CHUNK = 500
_NULL = b"null"
#: Every side file starts with ``null``: the body of outcomes without one.
_NULL_AT, _NULL_LEN = 0, len(_NULL)
_SUMS = (
    f"SELECT count(*), coalesce(sum(round = {REUSED_ROUND}), 0)"
    + "".join(
        f", coalesce(sum(CASE WHEN status = 'succeeded' AND round != {REUSED_ROUND} THEN {column} END), 0)"
        for column in ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
    )
    + " FROM results"
)


class ResultStore:
    """SQLite-backed store of the latest outcome per custom_id (a scratch file, bounded cache).

    Response bodies are appended, as the bytes the service sent, to a side file next to the database
    (``<path>.bodies``); the database keeps, per custom_id, the outcome, the body's offset and
    length, the error and the usage. Rows stay small whatever the responses, so the database's page
    cache holds most of them and writing the results reads each body once, by offset.

    :param path: file of the scratch database; an existing file is reused, so a task can
        add the files of later rounds to the store of earlier ones.
    :raises FileNotFoundError: when the database exists but its bodies file does not.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bodies_path = self.path.with_name(self.path.name + ".bodies")
        reopened = self.path.exists()
        if reopened and not self.bodies_path.exists():
            raise FileNotFoundError(f"{self.bodies_path}: the bodies of the outcomes in {self.path} are gone")
        self._db = sqlite3.connect(self.path, isolation_level=None)
        # page_size first: it applies to a new database only (a reopened store keeps its own).
        pragmas = (f"page_size={_PAGE_BYTES}", "journal_mode=OFF", "synchronous=OFF", "cache_size=-65536")
        for pragma in (*pragmas, "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS results (
                custom_id TEXT PRIMARY KEY, round INTEGER NOT NULL, status TEXT NOT NULL,
                body_at INTEGER NOT NULL, body_len INTEGER NOT NULL, error TEXT NOT NULL,
                batch INTEGER NOT NULL, retryable INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL) WITHOUT ROWID"""
        )
        # Batch ids are stored once each, by number: rows stay small, so more fit in the page cache.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"
        )
        self._batch_names: dict[int, str] = dict(self._db.execute("SELECT id, name FROM batches"))
        self._batch_ids = {name: number for number, name in self._batch_names.items()}
        # A new database starts a new side file: offsets recorded earlier belong to a database gone.
        self._bodies = open(self.bodies_path, "ab" if reopened else "wb", buffering=1 << 20)  # noqa: SIM115
        if not reopened:
            self._bodies.write(_NULL)
        self._end = self._bodies.tell()
        self._reader = os.open(self.bodies_path, os.O_RDONLY)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and its side file (both files stay; delete them when done)."""
        self._db.close()
        self._bodies.close()
        os.close(self._reader)

    def _write(self, sql: str, rows: list[_Row]) -> None:
        # Sorted by custom_id, the upserts walk the primary-key index in order (fewer page misses).
        # Ids are unique within one output/error file, so the order does not change the outcome;
        # for repeated ids the stable sort keeps their file order.
        rows.sort(key=_BY_ID)
        self._db.execute("BEGIN")
        self._db.executemany(sql, rows)
        self._db.execute("COMMIT")

    def _batch(self, name: str) -> int:
        """Return the number of batch ``name`` (numbered on first sight)."""
        number = self._batch_ids.get(name)
        if number is None:
            number = self._db.execute("INSERT INTO batches (name) VALUES (?)", (name,)).lastrowid
            assert number is not None
            self._batch_ids[name], self._batch_names[number] = number, name
        return number

    def _body(self, at: int, length: int) -> bytes:
        """Return a stored body's bytes (``null`` for none)."""
        data = os.pread(self._reader, length, at)
        while len(data) < length:  # a short read (signals, huge bodies): read the rest
            more = os.pread(self._reader, length - len(data), at + len(data))
            if not more:
                raise OSError(f"{self.bodies_path}: body at {at} is cut short")
            data += more
        return data

    def add_lines(
        self, lines: Iterable[bytes], *, batch_id: str, round: int, check: RoundCheck | None = None
    ) -> int:
        """Store the outcomes of output/error file lines; return how many lines were stored.

        :param lines: raw lines of an output or error file.
        :param batch_id: batch the file belongs to.
        :param round: submission round; a later round replaces an earlier one.
        :param check: the ids sent in the round: lines of other ids, without an id or not JSON are
            counted there and skipped (see :class:`RoundCheck`). None: every line is trusted.
        :raises ValueError: without ``check``, for a line that is not a JSON object with a string
            custom_id.
        """
        rows: list[_Row] = []
        write = self._bodies.write
        end = self._end
        count = 0
        batch = self._batch(batch_id)
        sent = check.sent if check is not None else None
        seen = check.seen if check is not None else set()
        try:
            for raw in lines:
                fast = _fast_success(raw)
                if fast is not None:  # the common line: a 2xx answer, stored as its raw body bytes
                    custom_id, body, usage = fast
                    if sent is not None:
                        if custom_id in sent and custom_id not in seen:  # the usual: first answer
                            seen.add(custom_id)
                        elif not _accept(check, sent, seen, custom_id):
                            continue
                    size = len(body)
                    rows.append((custom_id, round, "succeeded", end, size, "null", batch, 0, *usage))
                    write(body)
                    end += size
                elif not raw.strip():
                    continue
                else:
                    try:
                        custom_id, status, data, error, usage = _general(raw, batch_id)
                    except ValueError as err:
                        if check is None:
                            raise
                        check.note("without_id" if isinstance(err, _NoCustomIdError) else "unparseable", raw)
                        continue
                    if sent is not None and not _accept(check, sent, seen, custom_id):
                        continue
                    body_at = _NULL_AT if data is None else end
                    size = _NULL_LEN if data is None else len(data)
                    rows.append((custom_id, round, status, body_at, size, error[0], batch, error[1], *usage))
                    if data is not None:
                        write(data)
                        end += size
                count += 1
                if len(rows) >= _CHUNK_ROWS:
                    self._write(_UPSERT, rows)
                    rows = []
            if rows:
                self._write(_UPSERT, rows)
        finally:
            self._end = self._bodies.tell()
        return count

    def add_final_lines(self, lines: Iterable[bytes]) -> int:
        """Store ``results.jsonl`` lines carried over from an earlier content (round -1); return how many."""
        rows: list[_Row] = []
        count = 0
        try:
            for raw in lines:
                if not raw.strip():
                    continue
                try:
                    record = _FINAL.decode(raw)
                except _DECODE_ERRORS as err:
                    raise ValueError(f"not a results line: {raw[:200]!r}: {err}") from None
                if record.status not in RESULT_STATUSES:
                    raise ValueError(f"results line with an unknown status: {raw[:200]!r}")
                body = bytes(record.response)
                if body == _NULL:
                    body_at, size = _NULL_AT, _NULL_LEN
                else:
                    body_at, size = self._end, len(body)
                    self._bodies.write(body)
                    self._end += size
                error = bytes(record.error).decode("utf-8")
                batch = self._batch(record.batch_id or "")
                rows.append(
                    (
                        record.custom_id,
                        REUSED_ROUND,
                        record.status,
                        body_at,
                        size,
                        error,
                        batch,
                        0,
                        *_NO_USAGE,
                    )
                )
                count += 1
                if len(rows) >= _CHUNK_ROWS:
                    self._write(_UPSERT, rows)
                    rows = []
            if rows:
                self._write(_UPSERT, rows)
        finally:
            self._end = self._bodies.tell()
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
        batch = self._batch(batch_id)
        rows: list[_Row] = []
        count = 0
        for custom_id in custom_ids:
            rows.append(
                (custom_id, round, status, _NULL_AT, _NULL_LEN, error_json, batch, retryable, *_NO_USAGE)
            )
            count += 1
            if len(rows) >= _CHUNK_ROWS:
                self._write(_INSERT_MISSING, rows)
                rows = []
        if rows:
            self._write(_INSERT_MISSING, rows)
        return count

    def without_outcome_of(self, custom_ids: Iterable[str], batch_id: str) -> Iterator[str]:
        """Yield, in order, the ids whose stored outcome is not from ``batch_id`` (or that have none)."""
        chunk: list[str] = []
        for custom_id in custom_ids:
            chunk.append(custom_id)
            if len(chunk) >= _LOOKUP_CHUNK:
                yield from self._without_outcome_of(chunk, batch_id)
                chunk = []
        if chunk:
            yield from self._without_outcome_of(chunk, batch_id)

    def _without_outcome_of(self, chunk: list[str], batch_id: str) -> list[str]:
        batch = self._batch_ids.get(batch_id)
        if batch is None:  # no outcome of this batch is stored
            return chunk
        marks = ",".join("?" * len(chunk))
        found = {
            row[0]
            for row in self._db.execute(
                f"SELECT custom_id FROM results WHERE batch = ? AND custom_id IN ({marks})",  # noqa: S608
                (batch, *chunk),
            )
        }
        return [custom_id for custom_id in chunk if custom_id not in found]

    def get(self, custom_id: str) -> ResultRecord | None:
        """Return the latest outcome of ``custom_id``, or None."""
        row = self._db.execute(
            "SELECT custom_id, status, body_at, body_len, error, batch, round FROM results"
            " WHERE custom_id = ?",
            (custom_id,),
        ).fetchone()
        if row is None:
            return None
        self._bodies.flush()
        body = json.loads(self._body(row[2], row[3]))
        return ResultRecord(row[0], row[1], body, json.loads(row[4]), self._batch_names[row[5]], row[6])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM results").fetchone()[0])

    def usage_by_batch(self, custom_ids: Iterable[str]) -> dict[str, Usage]:
        """Return the usage of the succeeded outcomes of ``custom_ids`` paid in each batch, by batch id."""
        ids = sorted(set(custom_ids))
        found: dict[str, Usage] = {}
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT batch, sum(input_tokens), sum(output_tokens), sum(cached_tokens),"  # noqa: S608
                f" sum(reasoning_tokens) FROM results WHERE custom_id IN ({marks})"
                f" AND status = 'succeeded' AND round != {REUSED_ROUND} GROUP BY batch",
                chunk,
            )
            for batch, *tokens in rows:
                name = self._batch_names[batch]
                before = found.get(name, Usage())
                found[name] = Usage(
                    *(a + int(b) for a, b in zip(asdict(before).values(), tokens, strict=True))
                )
        return found

    def _joined(self, order: Iterable[str], columns: str) -> sqlite3.Cursor:
        """
        Return a cursor over ``(custom_id, <columns of results r, all NULL when none>)`` in ``order``.

        The order goes into a scratch table and one join streams the rows in that order, so memory
        holds a row at a time. Drop ``temp.input_order`` when done.
        """
        self._db.execute("DROP TABLE IF EXISTS temp.input_order")
        self._db.execute("CREATE TEMP TABLE input_order (pos INTEGER PRIMARY KEY, custom_id TEXT NOT NULL)")
        insert = "INSERT INTO temp.input_order (custom_id) VALUES (?)"
        chunk: list[tuple[str]] = []
        self._db.execute("BEGIN")
        try:
            for custom_id in order:
                chunk.append((custom_id,))
                if len(chunk) >= _CHUNK_ROWS:
                    self._db.executemany(insert, chunk)
                    chunk = []
            self._db.executemany(insert, chunk)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return self._db.execute(
            f"SELECT o.custom_id, {columns} FROM temp.input_order o"  # noqa: S608 - fixed column lists
            " LEFT JOIN results r ON r.custom_id = o.custom_id ORDER BY o.pos"
        )

    def write_results(
        self, order: Iterable[str], out: BinaryIO, lines: Iterable[int] | None = None
    ) -> ResultCounts:
        """Write ``results.jsonl`` lines for ``order`` (custom_ids in input order) to ``out``.

        Each line is ``{"custom_id", "line", "status", "response", "error", "batch_id"}``, ``line``
        the input line number from ``lines`` (one per id of ``order``; None: ``null``, for state
        folders written before line numbers were kept); an id with no stored outcome is written as
        failed with error code ``missing_result``. Bodies are copied as stored; about ``_BODY_BYTES``
        of them are held at a time. ``order`` lists each id once (``prepare_requests`` rejects
        repeated ids).
        """
        self._bodies.flush()
        tally = dict.fromkeys(RESULT_STATUSES, 0)
        # Succeeded lines of one batch end alike: their tail is built once per batch.
        tails: dict[int, bytes] = {}
        names = self._batch_names
        parts: list[bytes] = []
        buffered = found = 0
        heads = _STATUS_HEADS
        rows = self._joined(order, "r.status, r.body_at, r.body_len, r.error, r.batch")
        pread, fd, read = os.pread, self._reader, self._body
        numbers = iter(lines) if lines is not None else None
        for custom_id, status, at, length, error, batch in rows:
            if status == "succeeded":
                tail = tails.get(batch)
                if tail is None:
                    tail = tails[batch] = f',"error":null,"batch_id":{json.dumps(names[batch])}}}\n'.encode()
            elif status is None:
                status, at, length, tail = "failed", _NULL_AT, _NULL_LEN, _MISSING_TAIL
                found -= 1
            else:
                tail = f',"error":{error},"batch_id":{json.dumps(names[batch])}}}\n'.encode()
            tally[status] += 1
            body = pread(fd, length, at)
            if len(body) != length:  # a short read: read the rest
                body = read(at, length)
            line = "null" if numbers is None else str(next(numbers))
            parts += (
                (
                    '{"custom_id":' + encode_basestring_ascii(custom_id) + ',"line":' + line + heads[status]
                ).encode(),
                body,
                tail,
            )
            buffered += length
            if len(parts) >= _ORDER_CHUNK or buffered >= _BODY_BYTES:
                out.write(b"".join(parts))
                parts, buffered = [], 0
        if parts:
            out.write(b"".join(parts))
        total = sum(tally.values())
        found += total
        usage, reused = self._usage(found)
        return ResultCounts(
            succeeded=tally["succeeded"],
            failed=tally["failed"],
            expired=tally["expired"],
            cancelled=tally["cancelled"],
            total=total,
            usage=usage,
            reused=reused,
        )

    def _usage(self, found: int) -> tuple[Usage, int]:
        """
        Return the usage of the succeeded outcomes paid in this content's rounds, and the reused count.

        ``found`` ids of ``temp.input_order`` had an outcome. When that is every outcome stored (the
        usual case: no line answered an id that was not asked), the table is summed as it is; else
        only the outcomes of ids in ``temp.input_order``. Drops ``temp.input_order``.
        """
        row = self._db.execute(_SUMS).fetchone()
        if row[0] != found:
            row = self._db.execute(
                _SUMS + " WHERE custom_id IN (SELECT custom_id FROM temp.input_order)"
            ).fetchone()
        self._db.execute("DROP TABLE temp.input_order")
        return Usage(*row[2:]), int(row[1])


class _NoCustomIdError(ValueError):
    """A result line that is JSON but not an object with a string custom_id."""


def _accept(check: RoundCheck | None, sent: frozenset[str], seen: set[str], custom_id: str) -> bool:
    """Return True to store a line of ``custom_id``: an id sent in the round (a repeat is counted)."""
    assert check is not None
    if custom_id not in sent:
        check.note("foreign", custom_id)
        return False
    if custom_id in seen:
        check.note("duplicate", custom_id)
    else:
        seen.add(custom_id)
    return True


def _general(
    raw: bytes, batch_id: str
) -> tuple[str, str, bytes | None, tuple[str, int], tuple[int, int, int, int]]:
    """Return ``(custom_id, status, body or None, (error JSON, retryable), usage)`` of any result line."""
    obj = json.loads(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise _NoCustomIdError(f"result line of batch {batch_id} has no custom_id: {raw[:200]!r}")
    status, body, error = classify_line(obj)
    data = None if body is None else _dumps(body).encode("utf-8")
    usage = _usage_of(body) if status == "succeeded" else _NO_USAGE
    return obj["custom_id"], status, data, (_dumps(error), int(is_retryable(status, error))), usage


def read_order_lines(path: str | Path) -> Iterator[int]:
    """Yield the input line numbers of an ``order.lines`` written by ``prepare_requests``, in order."""
    with open(path, "rb") as raw:
        while True:
            numbers = array("q")
            try:
                numbers.fromfile(raw, 65_536)
            except EOFError:  # the last, shorter run is read all the same
                pass
            if not numbers:
                return
            if sys.byteorder != "little":
                numbers.byteswap()
            yield from numbers


def read_order(path: str | Path) -> Iterator[str]:
    """Yield the custom_ids of an ``order.txt`` written by ``prepare_requests``, in order."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line[:1] == '"':  # the usual line: a JSON string, no padding
                size = len(line)
                inner = (
                    line[1:-2]
                    if size > 2 and line[-2:] == '"\n'
                    else line[1:-1]
                    if size > 1 and line[-1:] == '"'
                    else None
                )
                if inner is not None and '"' not in inner and "\\" not in inner and inner.isprintable():
                    yield inner  # nothing escaped: the text is the id
                    continue
                text = line.rstrip("\n")
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
