"""The prefix of the custom_ids generated for the short (body-only) lines of an input file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openai_batch.layout import MANIFEST_FILE, ORDER_FILE
from openai_batch.prepare import default_id_prefix
from openai_batch.storage import iter_lines, read_json, to_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from openai_batch.identity import InputRef

#: The manifest of a file's current results (as ``operators.MANIFEST_FILE``).


def file_id_prefix(ref: InputRef, folder: ObjectStoragePath) -> str:
    """
    Return the custom_id prefix of the generated ids of ``ref``, whose results folder is ``folder``.

    The prefix comes from the file's full key (``ref.display``: its path below the inbox, or its
    root and path), so ``2024-01-01/day.jsonl`` and ``2024-01-04/day.jsonl`` never share an id.
    Earlier versions hashed the file name only; a file whose current results were prepared that way
    keeps that prefix, so the unchanged requests of a changed content are still reused and its ids
    do not change under the people who read them. A file directly in the inbox (key == name) has
    the same prefix either way.
    """
    prefix = default_id_prefix(ref.display)
    legacy = default_id_prefix(ref.name)
    if prefix == legacy:
        return prefix
    manifest = folder / MANIFEST_FILE
    if not manifest.exists():
        return prefix
    state_dir = read_json(manifest).get("state_dir")
    order = to_path(state_dir) / ORDER_FILE if isinstance(state_dir, str) and state_dir else None
    if order is None or not order.exists():
        return prefix
    # order.txt holds one JSON string per request; a generated id is plain ASCII, written as is.
    current, earlier = (f'"{p}-'.encode() for p in (prefix, legacy))
    for line in iter_lines(order):
        if line.startswith(current):
            return prefix
        if line.startswith(earlier):
            return legacy
    return prefix
