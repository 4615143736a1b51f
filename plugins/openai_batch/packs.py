"""Packs: many small input files sent as one, each still getting its own results.

A run that takes many small files would spend four task instances and a batch on each (prepare,
submit, wait, write), and on Airflow a task instance costs about half a second whatever it does. So
when a run takes at least :data:`PACK_FROM_FILES` files of at most :data:`PACK_MAX_FILE_BYTES`,
they are handed to prepare in *packs* of up to :data:`PACK_MAX_MEMBERS` files (and
:data:`PACK_MAX_BYTES`): one prepare, one set of shards and batches, one write per pack.

Inside a pack each file is prepared on its own (its validation, rejects with its own line numbers,
state folder and results folder are those it has alone); the requests of the files new to packing
are then sent together from one pack content (``<results>/_packs/_state/<sha16>-<variant>/``),
which claims them in the request record like any content. A file keeps the pack it was first sent
in: its state folder records it, and every later run of that content waits for that pack's batches
(no other pack sends its requests again). Files whose custom_ids would collide go to different
pack contents. The write then writes each file's results, rejects, manifest and asset event from
its pack's outcomes, restricted to its own custom_ids, in its own input order.

Pure: the policy and the grouping only (no I/O); :mod:`openai_batch.preparation` builds packs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "PACK_FROM_FILES",
    "PACK_MAX_BYTES",
    "PACK_MAX_FILE_BYTES",
    "PACK_MAX_MEMBERS",
    "assign_contents",
    "group_files",
    "is_pack",
    "pack_key",
]

#: A run packs its small files when it takes at least this many (``[openai_batch] pack_from_files``;
#: 0 turns packing off). Below it every file has its own tasks and batches, so a small file next to
#: a slow one finishes on its own.
PACK_FROM_FILES = 20
#: A file is small, and may be packed, up to this listed size (bytes).
PACK_MAX_FILE_BYTES = 1 << 20
#: Most files in one pack.
PACK_MAX_MEMBERS = 500
#: Most listed bytes in one pack (its shards are split under the batch limits as any content's).
PACK_MAX_BYTES = 64 << 20


def is_pack(source: object) -> bool:
    """Return True for a prepare source that is a pack (a dict with ``members``)."""
    return isinstance(source, Mapping) and isinstance(source.get("members"), list)


def pack_key(members: Sequence[Mapping[str, Any]]) -> str:
    """Return a pack's label: its size and first and last keys, and a hash of every key (stable)."""
    keys = [str(m["key"]) for m in members]
    digest = hashlib.sha256("\0".join(keys).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if len(keys) == 1:
        return f"pack {digest}: {keys[0]}"
    return f"pack {digest}: {len(keys)} files, {keys[0]} .. {keys[-1]}"


def group_files(
    files: list[dict[str, Any]],
    *,
    pack_from: int = PACK_FROM_FILES,
    max_file_bytes: int = PACK_MAX_FILE_BYTES,
    max_members: int = PACK_MAX_MEMBERS,
    max_bytes: int = PACK_MAX_BYTES,
) -> list[dict[str, Any]]:
    """
    Return the sources prepare maps over: big files alone, small ones in packs when there are enough.

    Files keep their order (the listing's, by root and key); packs come after the files alone, each
    a run of consecutive small files, so the same listing always gives the same packs.
    """
    small = [f for f in files if _size(f) <= max_file_bytes]
    if pack_from <= 0 or len(small) < pack_from:
        return list(files)
    alone = [f for f in files if _size(f) > max_file_bytes]
    packs: list[list[dict[str, Any]]] = []
    size = 0
    for found in small:
        if not packs or len(packs[-1]) >= max_members or size + _size(found) > max_bytes:
            packs.append([])
            size = 0
        packs[-1].append(found)
        size += _size(found)
    return alone + [{"key": pack_key(members), "members": members} for members in packs]


#: The size of a file whose size is unknown: larger than any file, so it is never small.
_UNKNOWN_SIZE = 1 << 62


def _size(found: Mapping[str, Any]) -> int:
    size = found.get("size")
    return int(size) if isinstance(size, int) and size >= 0 else _UNKNOWN_SIZE


def assign_contents(ids_of: Iterable[set[str]]) -> list[int]:
    """
    Return, for each file's custom_ids in order, the pack content it joins (0, 1, ...).

    A file joins the first content holding none of its ids, so within a content every id names one
    request of one file, and each file's outcomes are found by its ids alone.
    """
    contents: list[set[str]] = []
    out: list[int] = []
    for ids in ids_of:
        for number, taken in enumerate(contents):
            if taken.isdisjoint(ids):
                taken |= ids
                out.append(number)
                break
        else:
            contents.append(set(ids))
            out.append(len(contents) - 1)
    return out
