"""Live batch progress next to the shard's state: what the last poll saw, for the results view.

The trigger writes ``shard-NNNNN.progress.json`` on every poll (batch id, status, request counts,
time), so a page view reads a small file instead of calling the API.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from openai_batch.layout import progress_file_name
from openai_batch.triggers import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def progress_file(state_dir: str, index: int) -> str:
    """Return the URL or path of the progress record of shard ``index`` in ``state_dir``."""
    return f"{state_dir.rstrip('/')}/{progress_file_name(index)}"


def read_progress(path: ObjectStoragePath) -> dict[str, Any] | None:
    """Return the progress record at ``path``, or None when there is none or it cannot be read."""
    from openai_batch.storage import read_json

    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class OpenAIBatchProgressTrigger(OpenAIBatchTrigger):
    """
    Poll a batch like ``OpenAIBatchTrigger`` and also record each poll's request counts.

    :param progress_file: Where to write the latest poll (see :func:`progress_file`), or None.
    :param kwargs: The arguments of ``OpenAIBatchTrigger``.
    """

    def __init__(self, progress_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.progress_file = progress_file

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize the trigger's class path and arguments."""
        path, kwargs = super().serialize()
        return path, {**kwargs, "progress_file": self.progress_file}

    async def _on_poll(self, batch: dict[str, Any]) -> None:
        await super()._on_poll(batch)
        if self.progress_file:
            # Off the event loop: with an object-storage results root each write is a PUT, and a
            # thousand waits share the triggerer's loop.
            await asyncio.to_thread(self._write_progress, batch)

    def _write_progress(self, batch: dict[str, Any]) -> None:
        from openai_batch.storage import to_path, write_json

        record = {
            "batch_id": batch["id"],
            "status": batch["status"],
            "request_counts": batch.get("request_counts"),
            "polled_at": time.time(),
        }
        try:
            write_json(to_path(str(self.progress_file)), record)
        except OSError as err:  # progress is for display; a failed write must not end the wait
            self.log.warning("Could not record progress in %s: %s", self.progress_file, err)
