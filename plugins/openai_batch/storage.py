"""Paths for inputs, results and run state, local or object storage, through ``ObjectStoragePath``."""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
import shutil
import stat as stat_module
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from airflow.sdk import ObjectStoragePath

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Name parts that mark a file as still being written or hidden.
_UNFINISHED = re.compile(r"(^\.|\.tmp$|\.part$)")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: Connection used for a URL that names none (``s3://bucket/key`` rather than ``s3://conn@bucket/key``).
#: Without one, ObjectStoragePath talks to S3 with boto's own credential chain and ignores Airflow's
#: ``aws_default`` connection (its endpoint, region and keys).
DEFAULT_CONN_IDS = {"s3": "aws_default", "s3a": "aws_default"}


def is_url(value: str) -> bool:
    """Return True for object-storage URLs such as ``s3://bucket/key``."""
    return "://" in value


def to_path(value: str, conn_id: str | None = None, root: str | None = None) -> ObjectStoragePath:
    """Return a storage path for a URL, an absolute path, or a path relative to ``root``."""
    if is_url(value):
        url = ObjectStoragePath(value, conn_id=conn_id) if conn_id else ObjectStoragePath(value)
        default = DEFAULT_CONN_IDS.get(url.protocol)
        if url.conn_id is None and default:
            url = ObjectStoragePath(value, conn_id=default)
        return url
    local = Path(value)
    if not local.is_absolute():
        local = Path(root or ".") / local
    return ObjectStoragePath(str(local.resolve()))


def url_of(path: ObjectStoragePath) -> str:
    """
    Return ``path`` as a string that ``to_path`` turns back into the same path.

    Object-storage paths keep their connection only when it is not the scheme's default, so results
    read ``s3://bucket/key`` instead of ``s3://aws_default@bucket/key``.
    """
    if local_dir(path) is not None:
        return str(path)
    conn_id = path.conn_id
    user = f"{conn_id}@" if conn_id and conn_id != DEFAULT_CONN_IDS.get(path.protocol) else ""
    return f"{path.protocol}://{user}{path.path}"


def join_pattern(base: str, pattern: str) -> str:
    """Join a relative pattern to a base path or URL; absolute patterns and URLs are kept."""
    if is_url(pattern) or pattern.startswith("/"):
        return pattern
    return base.rstrip("/") + "/" + pattern


def check_batch_id(batch_id: str) -> str:
    """Return ``batch_id`` if it is safe to use in a file name, else raise ``ValueError``."""
    if not _BATCH_ID.match(batch_id):
        raise ValueError(f"unexpected batch id {batch_id!r}")
    return batch_id


@dataclass
class InputScan:
    """What one look at the inbox found.

    :param taken: Files ready to take: ``{"source", "key", "root", "size", "mtime"}`` each.
    :param waiting: Files that match but changed within the settle window (still being written).
    :param ignored: ``(path, reason)`` of every match the pipeline does not take.
    :param base_exists: Whether the folder the pattern lists exists at all.
    """

    taken: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    base_exists: bool = True

    def ready(self) -> bool:
        """Return True when there is something to take and nothing matching is still being written."""
        return bool(self.taken) and not self.waiting

    def fingerprint(self) -> list[tuple[str, int, float | None]]:
        """Return what must stay the same between two looks for the taken files to count as settled."""
        return [(f["source"], f["size"], f["mtime"]) for f in self.taken]


def _ignore_reason(name: str) -> str:
    if name.startswith("."):
        return "hidden file"
    if _UNFINISHED.search(name):
        return "still being written (.tmp/.part: rename it when complete)"
    return "not a .jsonl or .jsonl.gz file"


def scan_inputs(
    pattern: str,
    inbox: str,
    allowed_roots: list[str] | tuple[str, ...] = (),
    settle_seconds: float = 0.0,
    conn_id: str | None = None,
    now: float | None = None,
) -> InputScan:
    """
    Look for the input files matching ``pattern`` and sort them into taken, waiting and ignored.

    A file is taken when its name is ``*.jsonl`` or ``*.jsonl.gz`` (not hidden), it resolves inside
    the inbox or an allowed root (symlinks pointing elsewhere are refused), it is a regular file, and
    it has not been modified for ``settle_seconds``.
    """
    from openai_batch.identity import OutsideRootsError, input_ref, is_input_name

    now = time.time() if now is None else now
    scan = InputScan()
    seen: set[str] = set()
    for path, name, info in _matches(pattern, conn_id, scan):
        if not is_input_name(name):
            scan.ignored.append((path, _ignore_reason(name)))
            continue
        try:
            ref = input_ref(path, inbox, allowed_roots)
        except OutsideRootsError as err:
            scan.ignored.append((path, f"refused: {err}"))
            continue
        mtime: float | None
        if info is None:  # local: stat the resolved file, never what a link claims
            try:
                st = os.stat(ref.source)
            except OSError as err:
                scan.ignored.append((path, f"cannot be read: {err.strerror}"))
                continue
            if not stat_module.S_ISREG(st.st_mode):
                scan.ignored.append((path, "not a regular file"))
                continue
            size, mtime = st.st_size, st.st_mtime
        else:
            size, mtime = info
        if ref.source in seen:
            continue
        seen.add(ref.source)
        if mtime is not None and now - mtime < settle_seconds:
            scan.waiting.append(path)
            continue
        scan.taken.append(
            {"source": ref.source, "key": ref.display, "root": ref.root, "size": size, "mtime": mtime}
        )
    scan.taken.sort(key=lambda f: (f["root"], f["key"]))
    return scan


def walk_inbox(inbox: str, now: float | None = None, settle_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
    """
    Yield every input file under the inbox that has settled: the root and every folder below it.

    Folders whose names start with ``.`` or ``_`` (hidden, ``_done``, ``_state``) are not entered;
    files are taken by the same rules as :func:`scan_inputs` (input names only, resolved inside the
    inbox, regular files, unchanged for ``settle_seconds``). Each item is ``{"source", "key",
    "root", "size", "mtime", "mtime_ns", "ino"}``. A local inbox is walked with ``os.scandir``, which
    costs about a second per 100,000 files; an object-storage inbox is listed recursively.
    """
    from openai_batch.identity import OutsideRootsError, input_ref, is_input_name

    now = time.time() if now is None else now
    if is_url(inbox):
        yield from _walk_url_inbox(inbox, now, settle_seconds)
        return
    real_inbox = os.path.realpath(inbox)
    stack = [real_inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name[:1] in "._":
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)  # links to folders are not followed
                    continue
                if not is_input_name(entry.name):
                    continue
                st = entry.stat()  # follows a link: what it points to is what would be read
            except OSError:
                continue
            if not stat_module.S_ISREG(st.st_mode) or now - st.st_mtime < settle_seconds:
                continue
            if entry.is_symlink():  # where it points must be inside the inbox, as for any input
                try:
                    ref = input_ref(entry.path, inbox)
                except OutsideRootsError:
                    continue
                source, key = ref.source, ref.display
            else:  # under the resolved inbox through real folders only: the path is the source
                source, key = entry.path, entry.path[len(real_inbox) + 1 :]
            yield {
                "source": source,
                "key": key,
                "root": "",
                "size": st.st_size,
                "mtime": st.st_mtime,
                "mtime_ns": st.st_mtime_ns,
                "ino": st.st_ino,
            }


def _walk_url_inbox(inbox: str, now: float, settle_seconds: float) -> Iterator[dict[str, Any]]:
    """:func:`walk_inbox` for an object-storage inbox: one recursive listing."""
    from openai_batch.identity import OutsideRootsError, input_ref, is_input_name

    scheme, base = inbox.split("://", 1)
    base = base.rstrip("/")
    for match in to_path(inbox).rglob("*"):
        where = str(match.path).split("://", 1)[-1]
        if not where.startswith(base + "/"):
            continue
        *folders, name = where[len(base) + 1 :].split("/")
        if not is_input_name(name) or any(part[:1] in "._" for part in folders):
            continue
        info = match.stat()
        info = info if isinstance(info, dict) else {"size": info.st_size, "mtime": info.st_mtime}
        mtime = mtime_of(info)
        if mtime is not None and now - mtime < settle_seconds:
            continue
        url = f"{scheme}://{where}"
        try:
            ref = input_ref(url, inbox)
        except OutsideRootsError:
            continue
        size = int(info.get("size") or 0)
        yield {
            "source": ref.source,
            "key": ref.display,
            "root": ref.root,
            "size": size,
            "mtime": mtime,
            "mtime_ns": int((mtime or 0) * 1e9),
            "ino": 0,
        }


def _matches(
    pattern: str, conn_id: str | None, scan: InputScan
) -> Iterator[tuple[str, str, tuple[int, float | None] | None]]:
    """Yield ``(path, name, (size, mtime) or None for local files)`` of every file matching ``pattern``."""
    if not is_url(pattern):
        glob_at = _GLOB_CHARS.search(pattern)
        scan.base_exists = os.path.isdir(os.path.dirname(pattern[: glob_at.start()] if glob_at else pattern))
        for name in sorted(globlib.glob(pattern, include_hidden=True)):
            if not Path(name).is_dir():
                yield name, Path(name).name, None
        return
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    cut = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), len(parts))
    base = to_path(f"{scheme}://" + "/".join(parts[:cut]), conn_id)
    if cut == len(parts):
        matches = [base] if base.exists() else []
    else:
        scan.base_exists = base.exists()
        matches = list(base.glob("/".join(parts[cut:])))
    for match in matches:
        if not match.is_file():
            continue
        url = (
            f"{scheme}://{match.path}" if not str(match.path).startswith(f"{scheme}://") else str(match.path)
        )
        info = match.stat()
        info = info if isinstance(info, dict) else {"size": info.st_size, "mtime": info.st_mtime}
        yield url, match.name, (int(info.get("size") or 0), mtime_of(info))


def mtime_of(info: dict[str, Any]) -> float | None:
    """Return the modification time in a file-system info dict (epoch seconds), or None."""
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None


def local_dir(path: ObjectStoragePath) -> Path | None:
    """Return a local directory for ``path`` when it is on the local file system, else None."""
    if path.protocol in ("", "file", "local"):
        return Path(path.path)
    return None


def copy_file(src: Path | ObjectStoragePath, dest: ObjectStoragePath, chunk_size: int = 1 << 20) -> None:
    """Copy a file (local or object storage) to ``dest`` in chunks, creating its folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dest.open("wb") as fout:
        shutil.copyfileobj(fin, fout, chunk_size)


def iter_lines(path: ObjectStoragePath, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the lines of a file (with their line endings), reading in chunks."""
    local = local_dir(path)
    if local is not None:  # the file object's own line iteration: no copy per line
        with open(local, "rb", buffering=chunk_size) as fh:
            yield from fh
        return
    with path.open("rb") as fin:
        yield from _lines_of(fin, chunk_size)


def _lines_of(stream: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    tail = b""
    while chunk := stream.read(chunk_size):
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            yield part + b"\n"
    if tail:
        yield tail


@contextmanager
def open_atomic(path: ObjectStoragePath, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """
    Open ``path`` for writing so that readers see the old file or the whole new one, never a part.

    Locally the data goes to a temporary name in the same folder, is flushed to disk and renamed
    into place only when the block ends without an error (a full disk leaves the old file alone).
    Object stores publish an object only when its upload completes. ``durable=False`` skips the
    flush to disk, for a cache its readers check: after a power loss the new name may hold a part.
    """
    local = local_dir(path)
    if local is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fout:
            yield fout
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fout:
            yield fout
        if durable:
            replace_durably(tmp, local)
        else:
            os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


def replace_durably(tmp: Path, dest: Path) -> None:
    """
    Rename the local file ``tmp`` onto ``dest`` so that after a crash either is whole on disk.

    The file's data is synced before the rename (else a power loss can leave the new name pointing
    at an empty or partial file) and the folder after it (else the rename itself can be lost).
    """
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def fsync_dir(folder: Path) -> None:
    """Sync a local folder's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def corrupt_name(name: str, now: float | None = None) -> str:
    """Return the name a file that cannot be parsed is kept under: ``<name>.corrupt-<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{name}.corrupt-{stamp}"


def move(src: ObjectStoragePath, dest: ObjectStoragePath) -> None:
    """Move a file (a rename where local), creating the destination folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    local_src, local_dest = local_dir(src), local_dir(dest)
    if local_src is not None and local_dest is not None:
        local_src.replace(local_dest)
        return
    copy_file(src, dest)
    src.unlink()


def file_digest(path: ObjectStoragePath, chunk_size: int = 1 << 20) -> tuple[str, int]:
    """Return the SHA-256 (hex) and size of a file's bytes, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fin:
        while chunk := fin.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_json(path: ObjectStoragePath) -> Any:
    """Return the parsed JSON content of ``path``."""
    import json

    with path.open("rb") as fin:
        return json.loads(fin.read())


def read_json_or_set_aside(path: ObjectStoragePath, what: str, log: Any = None) -> Any:
    """
    Return the parsed JSON content of ``path``, or None when it is missing or cannot be parsed.

    A file that cannot be parsed (a torn write from before writes were synced, a full disk, a hand
    edit) is moved aside to :func:`corrupt_name` next to it, kept for inspection, and a warning
    naming it and ``what`` happens next is logged (to ``log``, a task's logger, else this
    module's); the caller then goes on as if it were absent.
    """
    import json

    if not path.exists():
        return None
    try:
        with path.open("rb") as fin:
            return json.loads(fin.read())
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        kept = path.parent / corrupt_name(path.name)
        move(path, kept)
        (log or logging.getLogger(__name__)).warning(
            "%s cannot be parsed (%s); moved aside to %s: %s", path, err, kept, what
        )
        return None


def write_json(path: ObjectStoragePath, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` (to a temporary name first where local)."""
    import json

    with open_atomic(path) as fout:
        fout.write(json.dumps(value, indent=2, sort_keys=True).encode())


class NotRegularFileError(OSError):
    """Raise when an input path names something other than a regular file (a FIFO, a folder, a device)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat_module.S_ISDIR, "a folder"),
        (stat_module.S_ISFIFO, "a FIFO"),
        (stat_module.S_ISLNK, "a symbolic link"),
        (stat_module.S_ISSOCK, "a socket"),
        (stat_module.S_ISCHR, "a character device"),
        (stat_module.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_no_follow(real_path: str) -> int:
    """
    Open a resolved local path for reading without following any link, and return the descriptor.

    The path was resolved and checked against the allowed roots before; opening it again by name
    would follow whatever was swapped in since (a link to ``/proc/self/environ``, a FIFO). So each
    folder is opened relative to its parent with ``O_NOFOLLOW|O_DIRECTORY`` from ``/``, and the
    file itself with ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO opens at once instead of blocking), then
    checked with ``fstat`` to be a regular file. A link anywhere on the path fails with ``ELOOP``
    or ``ENOTDIR``; anything but a regular file raises :class:`NotRegularFileError`.
    """
    if not os.path.isabs(real_path):
        raise ValueError(f"not an absolute path: {real_path!r}")
    parts = [p for p in real_path.split("/") if p]
    if not parts:
        raise NotRegularFileError(f"{real_path} is a folder")
    # O_PATH: a folder needs only search permission to be walked, as with a lookup by name.
    dir_flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    dir_fd = os.open("/", dir_flags)
    try:
        for part in parts[:-1]:
            child = os.open(part, dir_flags, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = child
        fd = os.open(parts[-1], file_flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat_module.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{real_path} is {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Default cap on the decompressed size of a ``*.jsonl.gz`` input (Variable ``openai_batch_max_input_bytes``):
#: 100 GiB, far above a day's batch input (a batch file is at most 200 MB) yet below what a
#: small archive built to expand without end would fill a worker's disk with.
DEFAULT_MAX_INPUT_BYTES = 100 * 1024**3


class InputTooLargeError(ValueError):
    """Raise when a compressed input expands beyond the cap on its decompressed size."""


class _CappedReader:
    """A binary reader that raises :class:`InputTooLargeError` once more than ``cap`` bytes were read."""

    def __init__(self, raw: IO[bytes], cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        # Never more than the cap plus one byte in one read, even for read(-1).
        want = self._cap - self._read + 1 if size < 0 else min(size, self._cap - self._read + 1)
        data = self._raw.read(max(want, 1))
        self._read += len(data)
        if self._read > self._cap:
            raise InputTooLargeError(
                f"its decompressed content is above {self._cap:,} bytes, the cap on .jsonl.gz inputs "
                "(Variable openai_batch_max_input_bytes)"
            )
        return data


class _HashingReader:
    """A binary reader that hashes every byte read through it (the raw bytes of a compressed input)."""

    def __init__(self, raw: IO[bytes]) -> None:
        import hashlib

        self._raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hash.update(data)
        return data

    def drain(self, chunk_size: int = 1 << 20) -> str:
        """Read to the end and return the digest of everything read."""
        while self.read(chunk_size):
            pass
        return self.hash.hexdigest()


class InputFile:
    """
    One input file as the prepare step reads it: opened once, then stat'ed, hashed and read from there.

    A local input is opened with :func:`open_no_follow` and every later step (its stat identity,
    the digest of the skip check, the prepare pass) uses that one descriptor, rewound between
    reads: nothing swapped in at the path after the check is ever read. An object-storage input
    is opened by its path, as object stores have no links to follow.

    :param path: The input's storage path.
    :param max_content_bytes: Cap on the decompressed size of a ``*.gz`` input; reading past it
        raises :class:`InputTooLargeError`.
    """

    def __init__(self, path: ObjectStoragePath, max_content_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> None:
        self.path = path
        self.max_content_bytes = max_content_bytes
        self.compressed = str(path).endswith(".gz")
        self._fh: IO[bytes] | None = None
        self._raw_hash: _HashingReader | None = None
        self._raw_done: str | None = None
        local = local_dir(path)
        #: ``{"size", "mtime_ns", "ino", "dev"}`` of the opened local file; None in object storage.
        self.identity: dict[str, int] | None = None
        if local is None:
            info = path.stat()
            info = info if isinstance(info, dict) else {"size": info.st_size, "mtime": info.st_mtime}
            self.size, self.mtime = int(info.get("size") or 0), mtime_of(info)
            return
        fd = open_no_follow(str(local))
        self._fh = os.fdopen(fd, "rb", buffering=1 << 20)
        st = os.fstat(fd)
        self.size, self.mtime = st.st_size, st.st_mtime
        self.identity = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptor (local inputs)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @contextmanager
    def raw(self) -> Iterator[IO[bytes]]:
        """Yield the file's bytes from the start (the same descriptor each time where local)."""
        if self._fh is None:
            with self.path.open("rb") as fin:
                yield fin
            return
        self._fh.seek(0)
        yield self._fh

    @contextmanager
    def content(self) -> Iterator[IO[bytes]]:
        """Yield the file's content from the start: ``*.gz`` decompressed on the fly, its raw bytes hashed."""
        import gzip

        with self.raw() as raw:
            if not self.compressed:
                yield raw
                return
            self._raw_hash, self._raw_done = _HashingReader(raw), None
            with gzip.GzipFile(fileobj=cast("IO[bytes]", self._raw_hash), mode="rb") as unzipped:
                yield cast("IO[bytes]", _CappedReader(cast("IO[bytes]", unzipped), self.max_content_bytes))
            # Read what the decompressor left (nothing in a sound file) so the digest covers it all.
            self._raw_done = self._raw_hash.drain()

    def raw_sha256(self, content_sha256: str) -> str:
        """
        Return the SHA-256 of the file's raw bytes.

        That is ``content_sha256`` for an uncompressed file, and for ``*.gz`` the digest the last
        complete :meth:`content` pass took on the way (the file is read again only when that pass
        stopped early, on a corrupt file).
        """
        if not self.compressed:
            return content_sha256
        if self._raw_done is not None:
            return self._raw_done
        import hashlib

        digest = hashlib.sha256()
        with self.raw() as fin:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def content_sha256(self, chunk_size: int = 1 << 20) -> str:
        """Return the SHA-256 of the content (decompressed for ``*.gz``), as the manifest records it."""
        import hashlib

        digest = hashlib.sha256()
        with self.content() as fin:
            while chunk := fin.read(chunk_size):
                digest.update(chunk)
        return digest.hexdigest()


def allowed_roots(value: str | None) -> list[str]:
    """Return the allowed input roots (besides the inbox) from the Variable's value."""
    from openai_batch.identity import parse_roots

    return [r if "://" in r else str(to_path(r)) for r in parse_roots(value)]
