"""The provider seam: what the submission service needs from a batch API, and nothing more.

:class:`BatchProvider` is the protocol :mod:`openai_batch.service` and
:mod:`openai_batch.results_io` talk to: find a batch by its metadata, upload a request file once,
create a batch once, get, cancel, download a file, and a status lookup that never raises.
:class:`openai_batch.hooks.OpenAIBatchHook` implements it for OpenAI's Batch API; another batch API
plugs in by implementing the same methods (and the objects they return: :class:`BatchRef`,
:class:`FileRef`), without touching the core or the service.

Pure: standard library only.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractContextManager

#: Seconds a lookup back to a recorded intent reaches further back, for clock skew between this
#: machine (which wrote the intent's time) and the API (which stamps ``created_at``).
CLOCK_SKEW_MARGIN = 600.0

#: What :meth:`BatchProvider.batch_status` returns for a batch the API does not know.
NOT_FOUND = "not found"


class Log(Protocol):
    """The two log levels the service writes at (a :class:`logging.Logger` or Airflow's task logger)."""

    def info(self, msg: str, /, *args: Any) -> Any:
        """Log what was done."""
        ...

    def warning(self, msg: str, /, *args: Any) -> Any:
        """Log what went wrong and was worked around."""
        ...


class BatchRef(Protocol):
    """A batch as the provider returns it: its id, status and input file."""

    @property
    def id(self) -> str:
        """The batch's id."""
        ...

    @property
    def status(self) -> str:
        """The batch's status (see :mod:`openai_batch.status`)."""
        ...

    @property
    def input_file_id(self) -> str:
        """The id of the batch's request file."""
        ...


class FileRef(Protocol):
    """An uploaded file as the provider returns it."""

    @property
    def id(self) -> str:
        """The file's id."""
        ...


class BatchProvider(Protocol):
    """Everything the submission service and the result download ask of a batch API."""

    @property
    def log(self) -> Log:
        """Where the service logs what it did."""
        ...

    def find_batch(
        self,
        metadata: Mapping[str, str],
        max_scan: int = ...,
        since: float | None = ...,
        *,
        requests: int | None = ...,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = ...,
        taken: Callable[[str], bool] | None = ...,
    ) -> BatchRef | None:
        """Return the newest live batch whose metadata holds every pair of ``metadata``, or None.

        With ``since`` (epoch seconds) the scan reaches back at least that far. ``requests`` (how
        many the round holds) and ``open_stream`` (its request file) let a provider whose batches
        carry no metadata recognise the batch by its contents instead, leaving out the batches
        ``taken`` says are recorded as another round's.
        """
        ...

    def upload_batch_file_once(
        self,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]],
        filename: str,
        size: int,
        *,
        since: float | None = ...,
        maybe_stored: bool = ...,
    ) -> FileRef:
        """Upload a request file (a FileRef), never leaving two copies: look it up before each new attempt."""
        ...

    def create_batch_once(
        self,
        file_id: str,
        endpoint: str,
        metadata: dict[str, str],
        *,
        output_expires_after: dict[str, Any] | None = ...,
        since: float | None = ...,
        requests: int | None = ...,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]] | None = ...,
        taken: Callable[[str], bool] | None = ...,
    ) -> BatchRef:
        """Create a batch (a BatchRef), never twice: look it up by ``metadata`` before each new attempt.

        ``open_stream`` opens the round's request file, for a provider that takes requests inline.
        """
        ...

    def get_batch(self, batch_id: str) -> BatchRef:
        """Return the batch (a BatchRef with the provider's full answer)."""
        ...

    def cancel_batch(self, batch_id: str) -> Any:
        """Ask the API to cancel the batch."""
        ...

    def download_file(self, file_id: str, out: IO[bytes], chunk_size: int = ...) -> int:
        """Stream a file's content into ``out``; return the bytes written."""
        ...

    def batch_status(self, batch_id: str) -> str | None:
        """Return the status, :data:`NOT_FOUND` if the API does not know the batch, None on failure."""
        ...


def intent_floor(started_at: float | None) -> float | None:
    """Return how far back a lookup for what an intent recorded at ``started_at`` has to reach."""
    return None if started_at is None else started_at - CLOCK_SKEW_MARGIN
