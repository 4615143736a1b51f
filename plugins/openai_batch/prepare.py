"""Validate, normalise and split a JSONL file of OpenAI requests into batch input shards.

One streaming pass over the raw bytes of the input:

* every line is parsed once: common chat lines straight from their bytes with msgspec, any
  other line with :mod:`json`, which words the reasons; bad lines go to ``rejects.jsonl`` with
  their 1-based physical line number, a reason and the original text;
* full batch lines (``{"custom_id", "method", "url", "body"}``) are written unchanged when
  they need no change; bare request bodies ("short lines") are wrapped into a full line;
* valid requests are appended to one open shard per ``(endpoint, model)`` and a shard is
  closed before it would exceed a :class:`~openai_batch.limits.BatchLimits` limit;
* the custom_ids of the valid requests are written in input order to ``order.txt`` so the
  results can be joined back in that order.

Memory stays bounded: at most one chunk of lines is held (see ``_FLUSH_LINES``), duplicate
custom_ids across chunks are found by a fingerprint per id in memory (see :class:`_SeenIds`; a
scratch SQLite table in the work directory confirms a repeated fingerprint), and each open
shard holds only a file handle, a hash and counters.

Custom ids of short lines
    ``<slug>-<hash8>-<line>`` where ``slug`` is the file stem reduced to ``[A-Za-z0-9_.-]``
    (at most 40 characters), ``hash8`` the first 8 hex digits of the SHA-256 of
    ``source_name`` and ``line`` the 1-based physical line number. The same file (same
    ``source_name``) therefore gets the same ids on every run, and two files never share
    a prefix. ``id_prefix`` replaces ``<slug>-<hash8>``. A generated id that is already
    taken by an earlier explicit custom_id is rejected as a duplicate, like any other
    duplicate (the first occurrence wins), so joins never mix up two requests.

Shard numbering
    Shards are numbered from 0 in the order they are opened, i.e. by the first line that
    lands in them; a shard closed on a limit is followed by a new number for the same
    ``(endpoint, model)``. The numbering only depends on the input bytes and arguments.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sqlite3
import sys
from array import array
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import msgspec

from openai_batch import anthropic_format
from openai_batch.layout import ORDER_FILE, ORDER_LINES_FILE, REJECTS_FILE, SHARD_PATTERN, digests_file
from openai_batch.limits import DEFAULT_LIMITS, SUPPORTED_ENDPOINTS, BatchLimits
from openai_batch.pricing import FREE_ENDPOINTS, estimate_cost_usd, tokens_for_bytes
from openai_batch.reuse import INDEX_FILE, REUSED_FILE, RequestDigests

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from openai_batch.reuse import ReuseIndex

__all__ = [
    "NoValidRequestsError",
    "PrepareError",
    "PrepareResult",
    "Shard",
    "default_id_prefix",
    "prepare_requests",
]


_BOM = b"\xef\xbb\xbf"
_FULL_KEYS = ("custom_id", "method", "url", "body")
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/embeddings": ("model", "input"),
    "/v1/completions": ("model", "prompt"),
    "/v1/moderations": ("input",),
    "/v1/responses": ("model", "input"),
    # The spec gives these a default model (dall-e-2, gpt-image-1.5, sora-2).
    "/v1/images/generations": ("prompt",),
    "/v1/images/edits": ("images", "prompt"),
    "/v1/videos": ("prompt",),
    # Anthropic's Messages API: its batch lines are ``{"custom_id", "params"}`` (see _native_line).
    anthropic_format.ENDPOINT: ("model", "max_tokens", "messages"),
}
_ALL_ENDPOINTS = (*SUPPORTED_ENDPOINTS, anthropic_format.ENDPOINT)
# Lines held before duplicate ids are checked against the scratch table and written out.
_FLUSH_LINES = 8192
_FLUSH_BYTES = 32 * 1024 * 1024
_WRITE_BUFFER = 1024 * 1024
# Input is read in blocks of whole lines: one hash update, one UTF-8 decode and one split per block.
_READ_BLOCK = 4 * 1024 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# NaN/Infinity are not JSON and the service refuses them; parse once with a shared decoder.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_CHAT = "/v1/chat/completions"


class _ChatBody(msgspec.Struct, gc=False):
    """The fields of a chat body that validation reads; the others are only checked as JSON."""

    model: Any = msgspec.UNSET
    messages: list[msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET
    stream: Any = None


class _Line(msgspec.Struct, gc=False):
    """A full chat line or a bare chat body, as far as the fast path reads it."""

    custom_id: Any = msgspec.UNSET
    method: Any = msgspec.UNSET
    url: Any = msgspec.UNSET
    body: _ChatBody | msgspec.UnsetType = msgspec.UNSET
    model: Any = msgspec.UNSET
    messages: list[msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET
    stream: Any = None


# Common lines are decoded straight from their bytes into ``_Line``. Any line it does not take
# (a decode or type error, an odd value) goes through ``_DECODER``, which alone words the reject
# reasons, so a line's outcome never depends on which path saw it. What msgspec accepts and the
# stdlib does not (bytes that are not UTF-8, integers above ``sys.get_int_max_str_digits()``
# digits) is checked before a decoded line is used.
_FAST_DECODE = msgspec.json.Decoder(_Line).decode


class PrepareError(Exception):
    """Raise when an input file cannot be prepared for the Batch API."""


class NoValidRequestsError(PrepareError):
    """Raise when an input file holds no valid request; the message names the file.

    :param source: name of the input file.
    :param lines: non-blank lines read.
    :param rejected: lines rejected.
    :param first_reject: ``(line, reason)`` of the first rejected line, if any.
    """

    def __init__(
        self,
        source: str,
        lines: int,
        rejected: int,
        first_reject: tuple[int, str] | None,
        input_sha256: str = "",
    ) -> None:
        self.source = source
        self.input_sha256 = input_sha256
        self.lines = lines
        self.rejected = rejected
        self.first_reject = first_reject
        if lines == 0:
            message = f"{source}: no request found (the file is empty or blank)"
        else:
            message = f"{source}: no valid request in {lines} lines ({rejected} rejected"
            if first_reject is not None:
                message += f"; first: line {first_reject[0]}: {first_reject[1]}"
            message += ")"
        super().__init__(message)


@dataclass
class Shard:
    """One batch input file, ready to upload.

    :param index: shard number (see the module docstring).
    :param endpoint: endpoint every line of the shard targets.
    :param model: model of every line ("" for moderations without a model).
    :param path: local path of the shard JSONL.
    :param requests: number of request lines.
    :param bytes: size of the file in bytes.
    :param embedding_inputs: embedding inputs in the file (0 for other endpoints).
    :param estimated_input_tokens: heuristic input token count.
    :param sha256: SHA-256 of the file content.
    :param price_model: the model whose price applies ("" : ``model``'s own): on Azure, ``model``
        names a deployment, and the deployment's model is priced.
    """

    index: int
    endpoint: str
    model: str
    path: str
    requests: int = 0
    bytes: int = 0
    embedding_inputs: int = 0
    estimated_input_tokens: int = 0
    sha256: str = ""
    price_model: str = ""

    @property
    def priced_as(self) -> str:
        """Return the model whose price applies to the shard."""
        return self.price_model or self.model

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        """Build a shard from :meth:`to_dict` output."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class PrepareResult:
    """Outcome of :func:`prepare_requests`; serialisable as a plan file.

    :param source: name of the input file.
    :param input_sha256: SHA-256 of the raw input bytes.
    :param lines: non-blank input lines.
    :param valid: requests written to shards.
    :param rejected: lines written to the rejects file (``valid + rejected == lines``).
    :param shards: the shards, by index.
    :param order_path: file with the custom_ids of the valid requests in input order.
    :param rejects_path: JSONL file of ``{"line", "reason", "raw"}``.
    :param estimated_input_tokens: heuristic input token count over all shards.
    :param estimated_cost_usd: batch price of the estimated input tokens only (output
        tokens are unknown before the run), or None when a model has no known price.
    :param reused: valid requests not sent because an earlier content's result is carried over
        (counted in ``valid``, in no shard).
    """

    source: str
    input_sha256: str
    lines: int
    valid: int
    rejected: int
    shards: list[Shard] = field(default_factory=list)
    order_path: str = ""
    rejects_path: str = ""
    estimated_input_tokens: int = 0
    estimated_cost_usd: float | None = None
    reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareResult:
        """Build a result from :meth:`to_dict` output."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["shards"] = [Shard.from_dict(s) for s in data.get("shards", [])]
        return cls(**values)


def default_id_prefix(source_name: str) -> str:
    """Return the custom_id prefix of short lines of ``source_name``: ``<stem slug>-<hash8>``.

    Pass the file's full key (its path below the inbox), not its name only: the hash covers all of
    ``source_name``, so files of the same name in different folders get different prefixes.
    """
    stem = Path(source_name).name
    if stem.endswith(".jsonl"):
        stem = stem[: -len(".jsonl")]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:40] or "line"
    digest = hashlib.sha256(source_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}-{digest}"


#: Bytes of an over-long line kept in its reject (the rest is read and dropped, never held).
RAW_HEAD_BYTES = 4096
# Bytes a line may carry beyond its request: a byte order mark (line 1) and a CR before the LF.
_LINE_SLACK = 4


class _LongLine:
    """A line longer than the per-request limit: its first bytes and its length, nothing more."""

    __slots__ = ("head", "size")

    def __init__(self, head: bytes, size: int) -> None:
        self.head = head
        self.size = size


def _iter_blocks(
    source: BinaryIO | Iterable[bytes],
    size: int = _READ_BLOCK,
    *,
    hasher: Any = None,
    max_line: int | None = None,
) -> Iterator[bytes | _LongLine]:
    """
    Yield the input in blocks that end on a line break (the last one may not).

    Every byte read goes to ``hasher.update`` (when given), dropped ones too. A line with no
    break within ``max_line`` (plus a BOM and a CR) is not kept: a :class:`_LongLine` with its
    first :data:`RAW_HEAD_BYTES` bytes and its full length is yielded instead, and the rest of it
    is read and dropped up to its line break. The pieces of a line still looking for its break
    are kept in a list and only the new piece is searched, so a long line costs linear time.
    """
    update = hasher.update if hasher is not None else None
    cap = None if max_line is None else max_line + _LINE_SLACK
    chunks: Iterator[bytes]
    if hasattr(source, "read"):
        reader = source.read
        chunks = iter(lambda: reader(size), b"")
    else:
        chunks = iter(source)
    pending: list[bytes] = []
    pending_len = 0
    open_line = False  # pending is the start of one line, no break found in it yet
    for chunk in chunks:
        if not chunk:
            continue
        if open_line:
            pending.append(chunk)
            pending_len += len(chunk)
            if b"\n" not in chunk:
                if cap is not None and pending_len > cap:
                    long_line, rest = _drop_line(pending, chunks, update)
                    yield long_line
                    pending, pending_len, open_line = ([rest], len(rest), False) if rest else ([], 0, False)
                continue
            open_line = False
        else:
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len < size:
                continue
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            pending, open_line = [data], True
            if cap is not None and pending_len > cap:
                long_line, rest = _drop_line(pending, chunks, update)
                yield long_line
                pending, pending_len, open_line = ([rest], len(rest), False) if rest else ([], 0, False)
            continue
        block = data[:cut] if cut < len(data) else data
        if update is not None:
            update(block)
        yield block
        rest = data[cut:]
        pending = [rest] if rest else []
        pending_len = len(rest)
    if pending:
        block = b"".join(pending)
        if update is not None:
            update(block)
        yield block


def _drop_line(pending: list[bytes], chunks: Iterator[bytes], update: Any) -> tuple[_LongLine, bytes]:
    """Read the rest of an over-long line and drop it; return the line and what follows its break."""
    data = b"".join(pending)
    pending.clear()
    if update is not None:
        update(data)
    head, total, last = data[:RAW_HEAD_BYTES], len(data), data[-1:]
    del data
    rest = b""
    for chunk in chunks:
        at = chunk.find(b"\n")
        if at < 0:
            if update is not None:
                update(chunk)
            total += len(chunk)
            last = chunk[-1:] or last
            continue
        if update is not None:
            update(chunk[: at + 1])
        total += at
        if at:
            last = chunk[at - 1 : at]
        rest = chunk[at + 1 :]
        break
    if last == b"\r":  # CRLF: the CR is the line ending's, not the request's
        total -= 1
    return _LongLine(head, total), rest


def _quote(value: str) -> str:
    return "'" + (value if len(value) <= 80 else value[:77] + "...") + "'"


def _count_embedding_inputs(value: Any) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return 1  # one pre-tokenised input
        return len(value)
    return 0


def _check_body(body: dict[str, Any], endpoint: str, limits: BatchLimits) -> tuple[str | None, int]:
    """Return ``(reason or None, embedding inputs)`` for a request body."""
    if endpoint == "/v1/chat/completions":  # fast path for the common valid chat body
        model, messages = body.get("model"), body.get("messages")
        if type(model) is str and model and type(messages) is list and messages:
            if body.get("stream") is not True:
                return None, 0
    for name in _REQUIRED_FIELDS[endpoint]:
        if body.get(name) is None:
            return f"body.{name} is missing (required for {endpoint})", 0
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        return "body.model must be a non-empty string", 0
    if body.get("stream") is True:
        return "body.stream is true; the Batch API does not support streaming", 0
    if endpoint == "/v1/chat/completions":
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return "body.messages must be a non-empty list", 0
    elif endpoint == anthropic_format.ENDPOINT:
        return _check_messages_body(body), 0
    elif endpoint == "/v1/images/edits":
        images = body["images"]
        if not isinstance(images, list) or not images:
            return "body.images must be a non-empty list of image references", 0
    elif endpoint == "/v1/embeddings":
        return _check_embeddings(body, limits)
    return None, 0


def _check_embeddings(body: dict[str, Any], limits: BatchLimits) -> tuple[str | None, int]:
    """Return ``(reason or None, embedding inputs)`` for an embeddings body."""
    inputs = _count_embedding_inputs(body["input"])
    if inputs == 0:
        return "body.input must be a non-empty string or list", 0
    if inputs > limits.max_embedding_inputs:
        return (
            f"body.input has {inputs} inputs, above the limit of "
            f"{limits.max_embedding_inputs} per embeddings batch"
        ), 0
    return None, inputs


def _check_messages_body(body: dict[str, Any]) -> str | None:
    """Return why Anthropic's Messages API would refuse ``body`` (its required fields present), or None."""
    messages, max_tokens = body["messages"], body["max_tokens"]
    if not isinstance(messages, list) or not messages:
        return "params.messages must be a non-empty list"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "params.max_tokens must be a positive integer"
    return None


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return json.dumps(value, separators=(",", ":")).encode("ascii")


class _OpenShard:
    """A shard being written, and the digest of each of its requests (``{custom_id: SHA-256}``)."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.file: IO[bytes] = open(shard.path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.hash = hashlib.sha256()
        self.buffer: list[bytes] = []
        self.digests: dict[str, bytes] = {}

    def fits(self, size: int, inputs: int, limits: BatchLimits) -> bool:
        s = self.shard
        return (
            s.requests < limits.max_requests
            and s.bytes + size <= limits.max_bytes
            and s.embedding_inputs + inputs <= limits.max_embedding_inputs
        )

    def add(self, line: bytes, inputs: int, tokens: int, custom_id: str, digest: bytes) -> None:
        """Queue a request line given without its line break, with its id and ``request_digest``."""
        self.buffer.append(line)
        self.digests[custom_id] = digest
        s = self.shard
        s.requests += 1
        s.bytes += len(line) + 1
        s.embedding_inputs += inputs
        s.estimated_input_tokens += tokens

    def drain(self) -> None:
        """Write and hash the buffered lines in one call each."""
        if self.buffer:
            self.buffer.append(b"")  # a line break after the last line too
            data = b"\n".join(self.buffer)
            self.buffer = []
            self.file.write(data)
            self.hash.update(data)

    def close(self) -> Shard:
        """Close the file and write its digests file (what claiming reads instead of the shard)."""
        self.drain()
        self.file.close()
        self.shard.sha256 = self.hash.hexdigest()
        path = Path(self.shard.path)
        ids = {custom_id: digest.hex() for custom_id, digest in self.digests.items()}
        self.digests = {}
        side = RequestDigests(self.shard.sha256, len(ids), ids)
        (path.parent / digests_file(path.name)).write_bytes(msgspec.json.encode(side))
        return self.shard


_FINGERPRINT_BUCKETS = 1 << 16


# The fingerprints as a hash table in C (``native/``, built by ``make venv``), the same 48 bits kept
# per id; None: not built (the Docker image, a machine without a C compiler), so the Python
# buckets below keep them, or turned off with OPENAI_BATCH_PURE_PYTHON=1.
def _native_fingerprints() -> Callable[[], Any] | None:
    if os.environ.get("OPENAI_BATCH_PURE_PYTHON"):
        return None
    try:
        from openai_batch_fingerprints import Fingerprints
    except ImportError:
        return None
    return Fingerprints  # type: ignore[no-any-return]


_NATIVE_FINGERPRINTS = _native_fingerprints()


class _SeenIds:
    """The custom_ids of the chunks already flushed, to find duplicates across chunks.

    Every id leaves a fingerprint of its 64-bit ``hash()`` in memory, 16 bits of which pick one of
    65,536 tables. The C table (``_NATIVE_FINGERPRINTS``) stores 32 more bits per id, in about 7
    bytes (68 MB for 10M ids); without it, Python buckets store the other 48 bits, 6 bytes each
    (prepare's peak RSS at 10M ids 193-200 MB against 163 MB). Either way an id whose fingerprint
    is not there is new, which is the only answer a file without duplicates ever needs. The first
    fingerprint found switches to an exact table of ``(id, first line)`` in a scratch SQLite file, built from
    ``order.txt`` (the ids kept so far, in order) and a scratch file of their line numbers, and kept
    up to date from then on; a hit is a duplicate only if the table has the id.

    :param work_dir: directory for the scratch files.
    :param order: the open ``order.txt`` (flushed before it is read back).
    """

    def __init__(self, work_dir: Path, order: IO[str]) -> None:
        self.native = _NATIVE_FINGERPRINTS() if _NATIVE_FINGERPRINTS is not None else None
        self.buckets = [bytearray() for _ in range(_FINGERPRINT_BUCKETS)] if self.native is None else []
        self.order = order
        self.order_path = work_dir / ORDER_FILE
        self.lines_path = work_dir / ".seen.lines"
        self.lines_file: IO[bytes] | None = None
        self.db_path = work_dir / ".seen.sqlite"
        self.db: sqlite3.Connection | None = None

    def check(self, ids: dict[str, int]) -> dict[str, int]:
        """Return the ids of ``ids`` kept by an earlier chunk, with their line; note the fingerprints."""
        candidates = []
        if self.native is not None:
            found = self.native.check_add(map(hash, ids))
            if found:
                listed = list(ids)
                candidates = [listed[at] for at in found]
            return self._earlier(candidates)
        buckets = self.buckets
        for custom_id in ids:
            key = hash(custom_id) & 0xFFFF_FFFF_FFFF_FFFF
            bucket = buckets[key & 0xFFFF]
            fingerprint = (key >> 16).to_bytes(6, "little")
            if fingerprint in bucket:  # also at an unaligned offset: only ever a needless lookup
                candidates.append(custom_id)
            bucket += fingerprint
        return self._earlier(candidates)

    def _earlier(self, candidates: list[str]) -> dict[str, int]:
        """Return the candidates the exact table has, with their first line."""
        if not candidates:
            return {}
        db = self.db if self.db is not None else self._build()
        rows = db.execute(
            "SELECT id, line FROM seen WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(candidates),),
        )
        return dict(rows)

    def remember(self, ids: dict[str, int], earlier: dict[str, int]) -> None:
        """Record the ids of a chunk that are kept (all but ``earlier``), in ``order.txt`` order."""
        if self.db is None:  # then ``earlier`` is empty
            if self.lines_file is None:
                self.lines_file = open(self.lines_path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
            array("q", ids.values()).tofile(self.lines_file)
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO seen VALUES (?, ?)",
            sorted((cid, line) for cid, line in ids.items() if cid not in earlier),
        )
        self.db.execute("COMMIT")

    def _build(self) -> sqlite3.Connection:
        self.db_path.unlink(missing_ok=True)
        db = sqlite3.connect(self.db_path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16384"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        if self.lines_file is not None:
            self.lines_file.close()
            self.lines_file = None
            self.order.flush()
            with self.lines_path.open("rb") as lines, self.order_path.open("rb") as order:
                while True:
                    numbers = array("q")
                    try:
                        numbers.fromfile(lines, _FLUSH_LINES)
                    except EOFError:  # the last, shorter run of numbers is read all the same
                        pass
                    if not numbers:
                        break
                    rows = sorted((json.loads(order.readline()), line) for line in numbers)
                    db.execute("BEGIN")
                    db.executemany("INSERT INTO seen VALUES (?, ?)", rows)
                    db.execute("COMMIT")
            self.lines_path.unlink()
        self.db = db
        return db

    def close(self) -> None:
        """Close and delete the scratch files."""
        if self.lines_file is not None:
            self.lines_file.close()
            self.lines_file = None
        self.lines_path.unlink(missing_ok=True)
        if self.db is not None:
            self.db.close()
            self.db = None
        self.db_path.unlink(missing_ok=True)


# A pending line: (line, custom_id, endpoint, model, out_line, inputs, tokens, original) when
# valid (``out_line`` without its line break), (line, None, reason, raw_text, b"", 0, 0, b"") when rejected.
_Entry = tuple[int, str | None, str, str, bytes, int, int, bytes]


class _Preparer:
    """State of one prepare pass."""

    def __init__(
        self,
        work_dir: Path,
        endpoint: str,
        model: str | None,
        limits: BatchLimits,
        id_prefix: str,
        reuse: ReuseIndex | None = None,
        price_models: Mapping[str, str] | None = None,
        own_lines: bool = False,
    ) -> None:
        self.work_dir = work_dir
        self.own_lines = own_lines
        self.price_models = dict(price_models or {})
        self.reuse = reuse
        self.reused = 0
        self.endpoint = endpoint
        # An Anthropic connection takes Anthropic's lines only, an OpenAI one never takes them.
        self.anthropic = endpoint == anthropic_format.ENDPOINT
        self.model = model
        self.limits = limits
        self.id_prefix = id_prefix
        self.lines = 0
        self.valid = 0
        self.rejected = 0
        self.first_reject: tuple[int, str] | None = None
        self.pending: list[_Entry] = []
        self.pending_bytes = 0
        self.chunk_ids: dict[str, int] = {}
        self.open: dict[tuple[str, str], _OpenShard] = {}
        self.closed: list[Shard] = []
        self.next_index = 0
        self.order = open(work_dir / ORDER_FILE, "w", encoding="utf-8", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.rejects = open(work_dir / REJECTS_FILE, "w", encoding="utf-8", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.order_buffer: list[str] = []  # custom_ids kept, in input order
        self.order_lines = array("q")  # their input line numbers
        self.order_lines_file = open(work_dir / ORDER_LINES_FILE, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.index = open(work_dir / INDEX_FILE, "w", encoding="ascii", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.reused_file = open(work_dir / REUSED_FILE, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.seen = _SeenIds(work_dir, self.order)
        digits = sys.get_int_max_str_digits()
        # An integer with more digits than int() takes (0: no limit) is a reject for the stdlib.
        self.int_digits = digits
        self.long_int = re.compile(b"[0-9]{%d}" % (digits + 1))
        head = encode_basestring_ascii(f"{id_prefix}-").encode()
        self.short_head = b'{"custom_id":' + head[:-1]
        self.short_tail = b'","method":"POST","url":"' + endpoint.encode() + b'","body":'

    # -- per line -------------------------------------------------------------------------

    def reject(self, line_no: int, reason: str, content: bytes) -> None:
        self.pending.append((line_no, None, reason, content.decode("utf-8", "replace"), b"", 0, 0, b""))
        self.pending_bytes += len(content)

    def reject_long(self, line_no: int, line: _LongLine) -> None:
        """Reject a line above the per-request limit with its length and the start of its text only."""
        head, size = line.head, line.size
        if line_no == 1 and head.startswith(_BOM):
            head, size = head[3:], size - 3
        self.reject_truncated(line_no, self._too_large(size), head[:RAW_HEAD_BYTES], size)

    def reject_truncated(self, line_no: int, reason: str, head: bytes, size: int) -> None:
        """Queue a reject whose raw text is the first bytes of a line of ``size`` bytes."""
        # The inputs slot of a reject carries the full size: non-zero marks its raw as truncated.
        self.pending.append((line_no, None, reason, head.decode("utf-8", "replace"), b"", size, 0, b""))
        self.pending_bytes += len(head)

    def feed_lines(self, parts: list[bytes], line_no: int) -> int:  # noqa: C901 - one loop, no call per line
        """Validate the lines of one block (split, no line endings) after line ``line_no``.

        Common lines are decoded from their bytes and queued here; any other line takes
        :meth:`feed`. Return the number of the last line.
        """
        decode = _FAST_DECODE
        unset = msgspec.UNSET
        chunk_ids = self.chunk_ids
        pending = self.pending
        max_request = self.limits.max_request_bytes
        long_int = self.long_int
        digits = self.int_digits
        fast_full = self.model is None and not self.anthropic  # the fast paths are for OpenAI's lines
        fast_short = fast_full and self.endpoint == _CHAT
        short_head, short_tail = self.short_head, self.short_tail
        flush_lines, flush_bytes = _FLUSH_LINES, _FLUSH_BYTES
        lines = 0
        pending_bytes = self.pending_bytes  # written back before any call that uses it
        for raw in parts:
            line_no += 1
            if not raw or (raw[0] != 123 and raw.isspace()):  # 123: "{"
                continue
            lines += 1
            content = raw[:-1] if raw[-1] == 13 else raw  # CRLF
            size = len(content)
            rec: _Line | None = None
            if raw[0] == 123 and content[-1] == 125 and size <= max_request and fast_full:
                try:
                    rec = decode(content)
                except Exception:  # noqa: BLE001 - the stdlib path words the reason
                    rec = None
                if rec is not None and not content.isascii():
                    try:
                        content.decode("utf-8")
                    except UnicodeDecodeError:
                        rec = None
                if rec is not None and digits and size > digits and long_int.search(content) is not None:
                    rec = None
            out: bytes | None = None
            if rec is not None:
                custom_id = rec.custom_id
                if custom_id is unset:
                    if fast_short and rec.method is unset and rec.url is unset and rec.body is unset:
                        model = rec.model
                        if type(model) is str and model and rec.messages and rec.stream is not True:
                            custom_id = f"{self.id_prefix}-{line_no}"
                            out = b"".join((short_head, str(line_no).encode(), short_tail, content, b"}"))
                            if len(out) > max_request:
                                out = None
                elif (
                    type(custom_id) is str
                    and custom_id
                    and custom_id.isascii()
                    and custom_id.isprintable()  # odd ids take the checked path
                    and rec.method == "POST"
                    and rec.url == _CHAT
                ):
                    body = rec.body
                    if body is not unset:
                        model = body.model
                        if type(model) is str and model and body.messages and body.stream is not True:
                            out = content
            if out is not None and custom_id not in chunk_ids:
                chunk_ids[custom_id] = line_no
                pending.append((line_no, custom_id, _CHAT, model, out, 0, tokens_for_bytes(size), content))
                pending_bytes += len(out) + 1
            else:
                self.pending_bytes = pending_bytes
                self.feed(line_no, raw + b"\n")
                pending_bytes = self.pending_bytes
            if len(pending) >= flush_lines or pending_bytes >= flush_bytes:
                self.lines += lines
                lines = 0
                self.pending_bytes = pending_bytes
                self.flush(final=False)
                chunk_ids, pending, pending_bytes = self.chunk_ids, self.pending, 0
        self.pending_bytes = pending_bytes
        self.lines += lines
        return line_no

    def feed(self, line_no: int, raw: bytes) -> None:
        """Validate one physical line (blank lines already skipped) and queue its outcome."""
        content = raw
        if content.endswith(b"\n"):
            content = content[:-1]
            if content.endswith(b"\r"):
                content = content[:-1]
        if line_no == 1 and content.startswith(_BOM):
            content = content[3:]
        if len(content) > self.limits.max_request_bytes:
            self.reject_truncated(
                line_no, self._too_large(len(content)), content[:RAW_HEAD_BYTES], len(content)
            )
            return
        try:
            obj = _DECODER.decode(content.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self.reject(line_no, f"not valid UTF-8 (byte {exc.start + 1}: {exc.reason})", content)
            return
        except json.JSONDecodeError as exc:
            self.reject(line_no, f"invalid JSON: {exc.msg} (column {exc.colno})", content)
            return
        except (ValueError, RecursionError) as exc:
            self.reject(line_no, f"invalid JSON: {exc}", content)
            return
        if not isinstance(obj, dict):
            self.reject(line_no, f"expected a JSON object, got {_json_type(obj)}", content)
            return
        try:
            self._accept(line_no, obj, content)
        except RecursionError as exc:  # a value nested too deep to write back (a changed line)
            self.reject(line_no, f"invalid JSON: {exc}", content)

    def _accept(self, line_no: int, obj: dict[str, Any], content: bytes) -> None:
        result: str | tuple[str, str, dict[str, Any], bytes, int]
        if anthropic_format.is_native_line(obj):
            result = self._native_line(obj)
        elif "custom_id" in obj or "body" in obj or "url" in obj or "method" in obj:  # see _FULL_KEYS
            result = self._full_line(obj, content)
        else:
            result = self._short_line(line_no, obj, content)
        if isinstance(result, str):
            self.reject(line_no, result, content)
            return
        custom_id, endpoint, body, out, inputs = result
        first = self.chunk_ids.get(custom_id)
        if first is not None:
            self.reject(line_no, _duplicate_reason(custom_id, first, generated=obj is body), content)
            return
        self.chunk_ids[custom_id] = line_no
        model = body.get("model") or ""
        # Counting the line's bytes instead of walking the body keeps this pass at C speed; the
        # JSON syntax makes it a slight overestimate, which is the safe side for cost control.
        tokens = tokens_for_bytes(len(content))
        self.pending.append((line_no, custom_id, endpoint, model, out, inputs, tokens, content))
        self.pending_bytes += len(out) + 1

    def _too_large(self, size: int) -> str:
        limit = self.limits.max_request_bytes
        return f"request is {size} bytes, above the limit of {limit} bytes per request"

    def _override_model(self, body: dict[str, Any]) -> bool:
        if self.model is not None and body.get("model") != self.model:
            body["model"] = self.model
            return True
        return False

    def _native_line(self, obj: dict[str, Any]) -> str | tuple[str, str, dict[str, Any], bytes, int]:
        """Check a line in Anthropic's batch shape ``{"custom_id", "params"}``; queue it as a shard line."""
        endpoint = anthropic_format.ENDPOINT
        if not self.anthropic:
            return (
                "an Anthropic Message Batches line ({custom_id, params}): "
                "send it with an anthropic connection (the conn_id param)"
            )
        custom_id = obj.get("custom_id")
        if custom_id is None:
            return "custom_id is missing"
        if not isinstance(custom_id, str):
            return "custom_id must be a string"
        bad = anthropic_format.bad_custom_id(custom_id)
        if bad is not None:
            return bad
        body = obj["params"]
        if not isinstance(body, dict):
            return f"params must be a JSON object, got {_json_type(body)}"
        self._override_model(body)
        for name in _REQUIRED_FIELDS[endpoint]:
            if body.get(name) is None:
                return f"params.{name} is missing (required by Anthropic's Messages API)"
        reason, _ = _check_body(body, endpoint, self.limits)
        if reason is not None:
            return reason.replace("body.", "params.")
        out = _dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
        if len(out) > self.limits.max_request_bytes:
            return self._too_large(len(out))
        return custom_id, endpoint, body, out, 0

    def _full_line(
        self, obj: dict[str, Any], content: bytes
    ) -> str | tuple[str, str, dict[str, Any], bytes, int]:
        if self.anthropic and not self.own_lines:
            return (
                "a Batch API line ({custom_id, method, url, body}): this connection is Anthropic's, "
                "which takes {custom_id, params} lines or bare Messages bodies; "
                "send this file with an openai connection (the conn_id param)"
            )
        custom_id = obj.get("custom_id")
        if custom_id is None:
            return "custom_id is missing"
        if not isinstance(custom_id, str) or not custom_id:
            return "custom_id must be a non-empty string"
        bad = _bad_custom_id(custom_id)
        if bad is not None:
            return bad
        method = obj.get("method", "POST")
        if method != "POST":
            return f"method must be POST, got {json.dumps(method)}"
        url = obj.get("url", self.endpoint)
        if url == anthropic_format.ENDPOINT and not (self.anthropic and self.own_lines):
            return f"url {url} is Anthropic's Messages API: send this file with an anthropic connection"
        if url not in _REQUIRED_FIELDS:
            return f"unsupported url {json.dumps(url)} (supported: {', '.join(SUPPORTED_ENDPOINTS)})"
        body = obj.get("body")
        if body is None:
            return "body is missing"
        if not isinstance(body, dict):
            return f"body must be a JSON object, got {_json_type(body)}"
        changed = self._override_model(body)
        reason, inputs = _check_body(body, url, self.limits)
        if reason is not None:
            return reason
        if changed or "method" not in obj or "url" not in obj:
            obj["method"] = "POST"
            obj["url"] = url
            out = _dumps(obj)
        elif content[:1] == b"{" and content[-1:] == b"}":
            out = content  # unchanged: send the original bytes
        else:
            out = content.strip()
        if len(out) > self.limits.max_request_bytes:
            return self._too_large(len(out))
        return custom_id, url, body, out, inputs

    def _short_line(
        self, line_no: int, body: dict[str, Any], content: bytes
    ) -> str | tuple[str, str, dict[str, Any], bytes, int]:
        endpoint = self.endpoint
        changed = self._override_model(body)
        reason, inputs = _check_body(body, endpoint, self.limits)
        if reason is not None:
            return reason
        if self.anthropic:
            custom_id = anthropic_format.generated_id(self.id_prefix, line_no)
        else:
            custom_id = f"{self.id_prefix}-{line_no}"
        # Splice the original body bytes into the envelope instead of re-serialising them.
        body_bytes = _dumps(body) if changed else content.strip()
        out = b"".join(
            (
                b'{"custom_id":',
                encode_basestring_ascii(custom_id).encode(),
                b',"method":"POST","url":"',
                endpoint.encode(),
                b'","body":',
                body_bytes,
                b"}",
            )
        )
        if len(out) > self.limits.max_request_bytes:
            return self._too_large(len(out))
        return custom_id, endpoint, body, out, inputs

    # -- per chunk ------------------------------------------------------------------------

    def flush(self, *, final: bool) -> None:
        earlier = self.seen.check(self.chunk_ids)
        if not final:
            self.seen.remember(self.chunk_ids, earlier)
        open_shards = self.open
        order_append = self.order_buffer.append
        line_append = self.order_lines.append
        limits = self.limits
        max_requests, max_bytes = limits.max_requests, limits.max_bytes
        max_inputs = limits.max_embedding_inputs
        sha256 = hashlib.sha256
        reusable: dict[str, bytes] = {}
        if self.reuse is not None:
            digest = self.reuse.digest  # the loaded index's digest, older ones included
            digests = {
                custom_id: digest(out) for _, custom_id, _, _, out, _, _, _ in self.pending if custom_id
            }
            reusable = self.reuse.take(list(digests.items()))
        digests_out: list[bytes] = []
        digest_append = digests_out.append
        for line_no, custom_id, endpoint, model, out, inputs, tokens, original in self.pending:
            if custom_id is None:
                self._write_reject(line_no, endpoint, model, truncated=inputs > 0)
                continue
            if earlier and custom_id in earlier:
                text = original.decode("utf-8", "replace")
                self._write_reject(line_no, _duplicate_reason(custom_id, earlier[custom_id]), text)
                continue
            # Same as request_digest(out): ``out`` ends in "}", not in a line break.
            line_digest = sha256(out).digest()
            digest_append(line_digest)
            if reusable and custom_id in reusable:
                self.reused += 1
                order_append(custom_id)
                line_append(line_no)
                self.reused_file.write(reusable.pop(custom_id))
                continue
            shard = open_shards.get((endpoint, model))
            if shard is not None:
                s = shard.shard
                size = len(out) + 1
                if (
                    s.requests < max_requests
                    and s.bytes + size <= max_bytes
                    and s.embedding_inputs + inputs <= max_inputs
                ):  # inlined _OpenShard.fits/add and _write_request
                    order_append(custom_id)
                    line_append(line_no)
                    shard.buffer.append(out)
                    shard.digests[custom_id] = line_digest
                    s.requests += 1
                    s.bytes += size
                    s.embedding_inputs += inputs
                    s.estimated_input_tokens += tokens
                    continue
            line_append(line_no)
            self._write_request(custom_id, endpoint, model, out, inputs, tokens, line_digest)
        for shard in self.open.values():
            shard.drain()
        if self.order_buffer:
            self.valid += len(self.order_buffer)
            self.order.write("\n".join(map(encode_basestring_ascii, self.order_buffer)) + "\n")
            self.order_buffer = []
            if sys.byteorder != "little":
                self.order_lines.byteswap()
            self.order_lines.tofile(self.order_lines_file)
            self.order_lines = array("q")
        if digests_out:
            # One hex string for the chunk, a line break after every 32 bytes (64 digits).
            self.index.write(b"".join(digests_out).hex("\n", 32) + "\n")
        self.pending = []
        self.pending_bytes = 0
        self.chunk_ids = {}

    def _write_reject(self, line_no: int, reason: str, text: str, *, truncated: bool = False) -> None:
        self.rejected += 1
        if self.first_reject is None:
            self.first_reject = (line_no, reason)
        entry: dict[str, Any] = {"line": line_no, "reason": reason, "raw": text}
        if truncated:  # raw is the first RAW_HEAD_BYTES bytes of a line above the limit
            entry["raw_truncated"] = True
        self.rejects.write(json.dumps(entry, ensure_ascii=False))
        self.rejects.write("\n")

    def _write_request(
        self, custom_id: str, endpoint: str, model: str, out: bytes, inputs: int, tokens: int, digest: bytes
    ) -> None:
        self.order_buffer.append(custom_id)
        key = (endpoint, model)
        shard = self.open.get(key)
        if shard is not None and not shard.fits(len(out) + 1, inputs, self.limits):
            self.closed.append(shard.close())
            shard = None
        if shard is None:
            path = self.work_dir / SHARD_PATTERN.format(self.next_index)
            price_model = self.price_models.get(model, "")
            shard = _OpenShard(Shard(self.next_index, endpoint, model, str(path), price_model=price_model))
            self.next_index += 1
            self.open[key] = shard
        shard.add(out, inputs, tokens, custom_id, digest)

    def finish(self) -> list[Shard]:
        self.flush(final=True)
        self.closed.extend(s.close() for s in self.open.values())
        self.open = {}
        self.close_files()
        return sorted(self.closed, key=lambda s: s.index)

    def close_files(self) -> None:
        for shard in self.open.values():
            shard.file.close()
        self.order.close()
        self.order_lines_file.close()
        self.rejects.close()
        self.index.close()
        self.reused_file.close()
        self.seen.close()


#: NUL (cut short by SQLite's JSON functions and C strings) and lone UTF-16 surrogates (not Unicode
#: text, so not encodable as UTF-8): ids with them cannot be joined back reliably.
_BAD_ID_CHARS = re.compile("[\x00\ud800-\udfff]")


def _bad_custom_id(custom_id: str) -> str | None:
    """Return why a custom_id cannot be sent, or None when it can."""
    if custom_id.isascii() and custom_id.isprintable():
        return None
    found = _BAD_ID_CHARS.search(custom_id)
    if found is None:
        return None
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a NUL character"
    where = f"U+{ord(char):04X} at position {found.start() + 1}"
    return f"custom_id contains {kind} ({where}); it cannot be joined back to its result"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "an object"


def _duplicate_reason(custom_id: str, first_line: int, *, generated: bool = False) -> str:
    if generated:
        return f"generated custom_id {_quote(custom_id)} is already used on line {first_line}"
    return f"duplicate custom_id {_quote(custom_id)} (first seen on line {first_line})"


def _estimate_cost(shards: list[Shard]) -> float | None:
    total = 0.0
    for shard in shards:
        if shard.endpoint in FREE_ENDPOINTS:
            continue
        cost = estimate_cost_usd(shard.priced_as, shard.estimated_input_tokens, 0)
        if cost is None:
            return None
        total += cost
    return round(total, 6)


def prepare_requests(
    source: BinaryIO | Iterable[bytes],
    *,
    source_name: str,
    work_dir: str | Path,
    endpoint: str = "/v1/chat/completions",
    model: str | None = None,
    limits: BatchLimits = DEFAULT_LIMITS,
    id_prefix: str | None = None,
    reuse: ReuseIndex | None = None,
    price_models: Mapping[str, str] | None = None,
    own_lines: bool = False,
) -> PrepareResult:
    """Validate and split the requests of one input file into batch shards in ``work_dir``.

    :param source: the raw input, a binary file or an iterable of byte lines (or chunks).
    :param source_name: name of the input, used in messages and for the custom_id prefix.
    :param work_dir: directory for ``shard-NNNNN.jsonl``, ``order.txt`` and ``rejects.jsonl``
        (created if needed; earlier shard files in it are removed).
    :param endpoint: endpoint of short lines and of full lines without ``url``.
    :param model: when set, replaces ``body.model`` on every line.
    :param limits: limits each shard must respect.
    :param id_prefix: prefix of generated custom_ids, default :func:`default_id_prefix`.
    :param reuse: succeeded requests of an earlier content of the file; unchanged ones are not put
        in a shard, their earlier result lines go to ``reused.jsonl``.
    :param price_models: the model each ``model`` value is priced as, where it differs (an Azure
        deployment's model); recorded on each shard as ``price_model``.
    :param own_lines: the input is shard lines this function wrote (a pack's files' requests, see
        :mod:`openai_batch.packs`): full lines in the shape they are sent, Anthropic's included.
    :raises PrepareError: for an unsupported ``endpoint``.
    :raises NoValidRequestsError: when no line is valid (after writing the rejects).
    """
    if endpoint not in _REQUIRED_FIELDS:
        raise PrepareError(f"unsupported endpoint {endpoint!r} (supported: {', '.join(_ALL_ENDPOINTS)})")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("shard-[0-9][0-9][0-9][0-9][0-9].jsonl"):  # never a later round's file
        stale.unlink()
        (work / digests_file(stale.name)).unlink(missing_ok=True)
    prefix = id_prefix if id_prefix is not None else default_id_prefix(source_name)
    state = _Preparer(work, endpoint, model, limits, prefix, reuse, price_models, own_lines)
    hasher = hashlib.sha256()
    line_no = 0
    # The pass allocates a few container objects per line and keeps a chunk of them, none in a
    # reference cycle; the cyclic collector's passes over them cost more than a tenth of the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for block in _iter_blocks(source, hasher=hasher, max_line=limits.max_request_bytes):
            if isinstance(block, _LongLine):  # rare: one line, never held in memory whole
                line_no += 1
                state.lines += 1
                state.reject_long(line_no, block)
                continue
            parts = block.split(b"\n")
            last = parts.pop()  # b"" when the block ends with a line break
            if line_no == 0 and parts:  # line 1 may start with a byte order mark
                line_no = 1
                first = parts[0] + b"\n"
                if not first.isspace() and not (first.startswith(_BOM) and first[3:].isspace()):
                    state.lines += 1
                    state.feed(1, first)
                del parts[0]
            line_no = state.feed_lines(parts, line_no)
            if last:  # a last line without a line break
                line_no += 1
                if last.isspace() or (line_no == 1 and last.startswith(_BOM) and last[3:].isspace()):
                    continue
                state.lines += 1
                state.feed(line_no, last)
        shards = state.finish()
    except BaseException:
        state.close_files()
        raise
    finally:
        if collecting:
            gc.enable()
    result = PrepareResult(
        source=source_name,
        input_sha256=hasher.hexdigest(),
        lines=state.lines,
        valid=state.valid,
        rejected=state.rejected,
        shards=shards,
        order_path=str(work / ORDER_FILE),
        rejects_path=str(work / REJECTS_FILE),
        estimated_input_tokens=sum(s.estimated_input_tokens for s in shards),
        estimated_cost_usd=_estimate_cost(shards),
        reused=state.reused,
    )
    if not shards and not state.reused:
        raise NoValidRequestsError(
            source_name, state.lines, state.rejected, state.first_reject, result.input_sha256
        )
    return result
