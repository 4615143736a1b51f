"""What an input file is to the pipeline: its key, the roots it may come from, and where its outputs live.

Every reader and writer of results or state asks this module; nothing builds those paths by hand.

Key
    An input's key is its path relative to the inbox (``2024-06-01/reviews.jsonl``), or
    ``_roots/<label>/<path>`` for a file under another root a deployer allowed. The key is exact
    (no cleaning), so two different paths never share a key, and it is recorded in every manifest.

Results folder
    ``<results>/<folder(key)>``: each directory segment of the key and the file name are kept as
    they are when they are plain (``[A-Za-z0-9][A-Za-z0-9._-]*``, a file name ending in
    ``.jsonl``, whose extension is dropped), so ``<inbox>/D/reviews.jsonl`` keeps
    ``<results>/D/reviews/``. Any other segment becomes ``<cleaned>~<hash>``, with the hash taken
    of the exact segment; ``~`` never appears in a plain segment, so the mapping stays one-to-one
    (``a b.jsonl`` -> ``a_b.jsonl~3f1c...``, never ``a_b``).

Content
    Inside a results folder, ``_state/<sha16>/`` holds the run state of one content of the file
    (shards, batch records, downloads), and ``_history/<sha16>/`` the results of an earlier content
    once a newer one is written over the top-level files. Nothing paid for is deleted.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "FORBIDDEN_PREFIXES",
    "INPUT_SUFFIXES",
    "PACKS_DIR",
    "InputRef",
    "OutsideRootsError",
    "check_pattern",
    "folder_of",
    "history_folder",
    "input_ref",
    "is_input_name",
    "parse_roots",
    "state_folder",
]

#: File names the pipeline reads as request files (``.jsonl.gz`` is decompressed while streaming).
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz")
#: Pseudo file systems never read, whatever roots a deployer allows.
FORBIDDEN_PREFIXES = ("/proc", "/sys", "/dev")
STATE_DIR = "_state"
HISTORY_DIR = "_history"
ROOTS_DIR = "_roots"
#: Under the results root: the state folders of pack contents (see :mod:`openai_batch.packs`), as
#: ``_packs/_state/<sha16>-<variant>/``. No input's results folder starts with ``_``.
PACKS_DIR = "_packs"

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CLEAN = re.compile(r"[^A-Za-z0-9._-]+")


class OutsideRootsError(ValueError):
    """Raise when an input path resolves outside the inbox and every allowed root."""


@dataclass(frozen=True)
class InputRef:
    """An input file as the pipeline knows it.

    :param source: What is read: a real local path (symlinks resolved) or an object-storage URL.
    :param key: The exact path relative to its root.
    :param root: ``""`` for the inbox, else the (resolved) allowed root the file lies under.
    """

    source: str
    key: str
    root: str = ""

    @property
    def folder(self) -> str:
        """Return the results folder of this input, relative to the results root (one-to-one)."""
        if not self.root:
            return folder_of(self.key)
        return f"{ROOTS_DIR}/{root_label(self.root)}/{folder_of(self.key)}"

    @property
    def display(self) -> str:
        """Return the key as shown to people (``<root>/<key>`` outside the inbox)."""
        return f"{self.root.rstrip('/')}/{self.key}" if self.root else self.key

    @property
    def name(self) -> str:
        """Return the file name (for display)."""
        return self.key.rsplit("/", 1)[-1]


def _hash(text: str, size: int = 12) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def _encode(segment: str, *, plain: bool) -> str:
    if plain:
        return segment
    cleaned = _CLEAN.sub("_", segment).strip("._")[:60] or "x"
    return f"{cleaned}~{_hash(segment)}"


def folder_of(key: str) -> str:
    """
    Return the results folder of a key relative to its root; one-to-one.

    Plain segments are kept; a directory starting with ``_`` is encoded, so user folders never
    meet the pipeline's own ``_state``, ``_history`` and ``_roots``.
    """
    parts = PurePosixPath(key).parts
    if not parts or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
        raise ValueError(f"not a relative input key: {key!r}")
    *dirs, name = parts
    out = [_encode(d, plain=bool(_PLAIN.match(d)) and not d.startswith("_")) for d in dirs]
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else ""
    out.append(stem if stem and _PLAIN.match(stem) else _encode(name, plain=False))
    return "/".join(out)


def state_folder(input_sha256: str) -> str:
    """Return the state folder of one content of a file, relative to the file's results folder."""
    return f"{STATE_DIR}/{_content(input_sha256)}"


def history_folder(input_sha256: str) -> str:
    """Return where results of an earlier content are kept, relative to the file's results folder."""
    return f"{HISTORY_DIR}/{_content(input_sha256)}"


def _content(input_sha256: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16,64}", input_sha256):
        raise ValueError(f"not a sha256: {input_sha256!r}")
    return input_sha256[:16]


def is_input_name(name: str) -> bool:
    """Return True for names the pipeline takes: ``*.jsonl``/``*.jsonl.gz``, not hidden, not partial."""
    return not name.startswith(".") and name.endswith(INPUT_SUFFIXES)


def parse_roots(value: str | None) -> list[str]:
    """Return the roots listed in a Variable's value: separated by commas, semicolons or lines."""
    if not value:
        return []
    return [part.strip() for part in re.split(r"[,;\n]", value) if part.strip()]


def _is_url(value: str) -> bool:
    return "://" in value


def _real(path: str) -> str:
    return os.path.realpath(path)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _norm_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    if "/../" in f"/{rest}/" or "/./" in f"/{rest}/":
        raise OutsideRootsError(f"{url}: '.' and '..' are not allowed in input URLs")
    return f"{scheme}://{posixpath.normpath(rest) if rest else rest}"


def root_label(root: str) -> str:
    """Return the folder label of an allowed root: its last segment and a hash of the whole root."""
    tail = root.rstrip("/").rsplit("/", 1)[-1] or "root"
    return _encode(tail, plain=False)


def input_ref(path: str, inbox: str, allowed_roots: list[str] | tuple[str, ...] = ()) -> InputRef:
    """
    Return the reference of an input file, or raise :class:`OutsideRootsError`.

    A local path is resolved (symlinks followed) first; the resolved path must lie under the
    resolved inbox or an allowed root, and never under ``/proc``, ``/sys`` or ``/dev``. A URL must
    start with the inbox URL or an allowed root URL.
    """
    resolve: Callable[[str], str]
    if _is_url(path):
        target = _norm_url(path)
        roots = [r for r in [inbox, *allowed_roots] if _is_url(r)]
        resolve = _norm_url
    else:
        target = _real(path)
        roots = [r for r in [inbox, *allowed_roots] if not _is_url(r)]
        resolve = _real
        if any(_under(target, p) for p in FORBIDDEN_PREFIXES):
            raise OutsideRootsError(f"{path}: resolves to {target}, which is never read")
    for index, root in enumerate(roots):
        real_root = resolve(root)
        if _under(target, real_root) and target != real_root:
            rel = target[len(real_root.rstrip("/")) + 1 :]
            return InputRef(source=target, key=rel, root="" if index == 0 and root == inbox else real_root)
    where = ", ".join([inbox, *allowed_roots])
    shown = path if target == path else f"{path} (resolves to {target})"
    raise OutsideRootsError(
        f"{shown} is outside the inbox and the allowed roots ({where}); "
        "list its root in the Variable openai_batch_allowed_roots to read it"
    )


def check_pattern(pattern: str, inbox: str, allowed_roots: list[str] | tuple[str, ...] = ()) -> None:
    """
    Raise :class:`OutsideRootsError` when the fixed part of an input pattern lies outside every root.

    ``/proc/self/environ`` or ``../elsewhere/*.jsonl`` are refused before anything is listed; a
    pattern inside the roots can still match links that point out, which the listing refuses.
    """
    glob_at = re.search(r"[*?\[]", pattern)
    fixed = pattern[: glob_at.start()] if glob_at else pattern
    if _is_url(pattern):
        target = _norm_url(fixed.rstrip("/") or fixed)
        roots = [_norm_url(r) for r in [inbox, *allowed_roots] if _is_url(r)]
    else:
        target = _real(fixed if glob_at is None or fixed.endswith("/") else os.path.dirname(fixed) or "/")
        roots = [_real(r) for r in [inbox, *allowed_roots] if not _is_url(r)]
        if any(_under(target, p) for p in FORBIDDEN_PREFIXES):
            raise OutsideRootsError(f"{pattern}: resolves to {target}, which is never read")
    if not any(_under(target, root) for root in roots):
        where = ", ".join([inbox, *allowed_roots])
        raise OutsideRootsError(
            f"input {pattern} is outside the inbox and the allowed roots ({where}); "
            "list its root in the Variable openai_batch_allowed_roots to read it"
        )
