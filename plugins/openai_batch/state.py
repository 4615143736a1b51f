"""The state record kept next to the results for each shard: which batches were created for it.

Pure data, no Airflow imports. The record is what makes submission idempotent: a retried, cleared
or restarted task reads it (or finds the batch by the same identity in its metadata) and re-attaches
instead of creating a second billable batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Metadata keys written on every batch this project creates.
META_SHARD = "openai_batch_shard"
META_ROUND = "openai_batch_round"
META_ATTEMPT = "openai_batch_attempt"
META_SOURCE = "openai_batch_source"


def shard_identity(input_sha256: str, shard_sha256: str, shard_index: int, salt: str = "") -> str:
    """
    Return the identity of one shard: input content hash, shard content hash and shard index.

    The shard hash covers the custom_ids too, so a re-attached batch always answers the same ids.
    ``salt`` (set by ``force``) makes a deliberate re-run a new identity.
    """
    return f"{input_sha256[:32]}-{shard_sha256[:16]}-{shard_index:05d}{salt}"


def batch_metadata(identity: str, round_no: int, attempt: int, source: str) -> dict[str, str]:
    """Return the batch metadata that identifies a submission (all values are strings, <= 512 chars)."""
    return {
        META_SHARD: identity,
        META_ROUND: str(round_no),
        META_ATTEMPT: str(attempt),
        META_SOURCE: source[-512:],
    }


@dataclass
class Round:
    """One submission of (part of) a shard: the first round sends the whole shard, later ones retries.

    :param round: 0 for the first submission, then 1, 2, ... for follow-up rounds.
    :param file: Name of the request file in the state directory.
    :param requests: Number of requests in ``file``.
    :param attempt: Resubmissions of the same round after a ``token_limit_exceeded`` failure.
    :param upload_started_at: When (epoch seconds) the first upload of ``file`` was about to start;
        set before the upload so that after a crash the stored file is looked up, not sent again.
    :param upload_filename: The name the request file is uploaded under (looked up by it and size).
    :param create_started_at: When (epoch seconds) the first batch create was about to start; the
        lookup after a crash scans the batch listing back to it, however many batches came since.
    """

    round: int
    file: str
    requests: int
    attempt: int = 0
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    request_counts: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    collected: bool = False
    ended_at: float | None = None
    upload_started_at: float | None = None
    upload_filename: str | None = None
    create_started_at: float | None = None


@dataclass
class ShardState:
    """Everything submitted for one shard, in order.

    :param identity: ``shard_identity()`` of the shard.
    :param index: The shard's index within its input file.
    :param endpoint: The endpoint of every request in the shard.
    :param model: The model of every request in the shard.
    :param rounds: The submissions so far.
    :param finished: Every request of the shard has its final outcome (the wait task returned); a
        later run that takes the same content again does not map the shard again.
    :param price_model: The model whose price applies ("": ``model``'s own; see ``prepare.Shard``).
    """

    identity: str
    index: int
    endpoint: str
    model: str
    rounds: list[Round] = field(default_factory=list)
    finished: bool = False
    price_model: str = ""

    @property
    def priced_as(self) -> str:
        """Return the model whose price applies to the shard."""
        return self.price_model or self.model

    @property
    def current(self) -> Round:
        """Return the latest round."""
        return self.rounds[-1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardState:
        """Build a state from ``to_dict()`` output."""
        rounds = [Round(**r) for r in data.get("rounds", [])]
        return cls(
            identity=data["identity"],
            index=data["index"],
            endpoint=data["endpoint"],
            model=data["model"],
            rounds=rounds,
            finished=bool(data.get("finished", False)),
            price_model=str(data.get("price_model") or ""),
        )
