"""Shard state records on disk: read (a torn or foreign record is set aside) and write.

One record per shard in its state folder (:func:`openai_batch.layout.shard_state_file`); the
submission service, the wait and the result merge all read and write them through here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from openai_batch.layout import shard_state_file
from openai_batch.storage import read_json_or_set_aside, to_path, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from openai_batch.state import ShardState

__all__ = ["load_state", "save_state", "shard_finished"]

_LOG = logging.getLogger("openai_batch.service")  # the name the logs have always carried


def load_state(state_dir: ObjectStoragePath, shard_ref: dict[str, Any]) -> ShardState:
    """
    Return the shard's state record, or a new one when none was written yet.

    A record that cannot be parsed is moved aside (logged) and a new one returned: its batch, if
    one was created, is found again by the batch metadata lookup, so nothing is uploaded twice.
    """
    from openai_batch.state import Round, ShardState

    path = state_dir / shard_state_file(shard_ref["index"])
    record = read_json_or_set_aside(
        path, "the shard re-attaches to its batch through the batch metadata lookup", _LOG
    )
    if isinstance(record, dict):
        state = ShardState.from_dict(record)
        # A record of other content (the file changed) or of a forced re-run is history, not ours.
        if state.identity == shard_ref["identity"]:
            return state
    return ShardState(
        identity=shard_ref["identity"],
        index=shard_ref["index"],
        endpoint=shard_ref["endpoint"],
        model=shard_ref["model"],
        rounds=[Round(round=0, file=shard_ref["file"], requests=shard_ref["requests"])],
        price_model=str(shard_ref.get("price_model") or ""),
    )


def shard_finished(shard_ref: dict[str, Any]) -> bool:
    """Return True when the shard's record says every request of it has its final outcome."""
    state_dir = to_path(shard_ref["state_dir"])
    if not (state_dir / shard_state_file(shard_ref["index"])).exists():
        return False
    return load_state(state_dir, shard_ref).finished


def save_state(state_dir: ObjectStoragePath, state: ShardState) -> None:
    """Write the shard's state record."""
    write_json(state_dir / shard_state_file(state.index), state.to_dict())
