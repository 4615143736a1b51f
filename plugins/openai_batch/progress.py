"""Live batch progress next to the shard's state: what the last poll saw, for the results view.

The trigger writes ``shard-NNNNN.progress.json`` on every poll (batch id, status, request counts,
time), so a page view reads a small file instead of calling the API.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from openai_batch.triggers import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def progress_file(state_dir: str, index: int) -> str:
    """Return the URL or path of the progress record of shard ``index`` in ``state_dir``."""
    return f"{state_dir.rstrip('/')}/shard-{index:05d}.progress.json"


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

    def _log_progress(self, batch: dict[str, Any]) -> None:
        super()._log_progress(batch)
        if self.progress_file:
            self._write_progress(batch)

    def _write_progress(self, batch: dict[str, Any]) -> None:
        from openai_batch.storage import to_path, write_json

        record = {
            "batch_id": batch["id"],
            "status": batch["status"],
            "request_counts": batch.get("request_counts"),
            "polled_at": time.time(),
        }
        try:
            # A few hundred bytes, renamed into place: short enough for the event loop.
            write_json(to_path(str(self.progress_file)), record)
        except OSError as err:  # progress is for display; a failed write must not end the wait
            self.log.warning("Could not record progress in %s: %s", self.progress_file, err)
