"""Paths for inputs, results and run state, local or object storage, through ``ObjectStoragePath``."""

from __future__ import annotations

import glob as globlib
import re
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Name parts that mark a file as still being written or hidden.
_UNFINISHED = re.compile(r"(^\.|\.tmp$|\.part$)")
_GLOB_CHARS = re.compile(r"[*?\[]")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
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


def safe_name(name: str) -> str:
    """Return ``name`` reduced to a single safe path segment (no separators, no ``..``)."""
    cleaned = _SAFE.sub("_", name).strip("._") or "input"
    return cleaned[:120]


def check_batch_id(batch_id: str) -> str:
    """Return ``batch_id`` if it is safe to use in a file name, else raise ``ValueError``."""
    if not _BATCH_ID.match(batch_id):
        raise ValueError(f"unexpected batch id {batch_id!r}")
    return batch_id


def list_input_files(pattern: str, conn_id: str | None = None) -> dict[str, int]:
    """
    Return ``{url_or_path: size}`` for finished files matching ``pattern``.

    Files still being written (``*.tmp``, ``*.part``) and dotfiles are left out.
    """
    found: dict[str, int] = {}
    if not is_url(pattern):
        for name in globlib.glob(pattern):
            p = Path(name)
            if p.is_file() and not _UNFINISHED.search(p.name):
                found[str(p.resolve())] = p.stat().st_size
        return found
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    cut = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), len(parts))
    base = to_path(f"{scheme}://" + "/".join(parts[:cut]), conn_id)
    if cut == len(parts):
        matches = [base] if base.exists() else []
    else:
        matches = list(base.glob("/".join(parts[cut:])))
    for match in matches:
        if match.is_file() and not _UNFINISHED.search(match.name):
            url = (
                f"{scheme}://{match.path}"
                if not str(match.path).startswith(f"{scheme}://")
                else str(match.path)
            )
            found[url] = int(match.stat()["size"] if isinstance(match.stat(), dict) else match.stat().st_size)
    return found


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


def read_json(path: ObjectStoragePath) -> Any:
    """Return the parsed JSON content of ``path``."""
    import json

    with path.open("rb") as fin:
        return json.loads(fin.read())


def write_json(path: ObjectStoragePath, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` (to a temporary name first where local)."""
    import json

    data = json.dumps(value, indent=2, sort_keys=True).encode()
    local = local_dir(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(local)
        return
    with path.open("wb") as fout:
        fout.write(data)
