"""The shapes of what crosses a task boundary: plans, shard references, trigger events, the manifest.

Each is a ``TypedDict`` describing the JSON as it is written today (XCom, ``plan.json``,
``manifest.json``, trigger events stored in the metadata database). They add no checks at run time;
``tests/unit/test_payloads.py`` holds them against the shapes frozen in ``tests/golden/layout.json``,
so a key added to a payload without its type here (or the other way round) fails a test.

Pure: standard library only. No ``from __future__ import annotations`` here: ``NotRequired`` must be
seen at class creation for ``__required_keys__`` to be right.
"""

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BatchEndEvent",
    "BorrowedRef",
    "Counts",
    "FilePlan",
    "Manifest",
    "ShardRef",
    "StatePlan",
    "TokenCost",
]


class ShardRef(TypedDict):
    """One shard of one input file, as ``list_shards`` maps ``submit`` and ``wait_for_batch`` over it."""

    source: str  # the input file (path or URL)
    key: str  # its display name (relative to its root)
    state_dir: str  # URL of the input's state folder
    index: int  # 0-based; the UI shows index + 1
    count: int  # shards of the input file
    identity: str  # shard_identity(): names the batch's metadata and the ledger entries
    file: str  # the request file's name in the state folder
    endpoint: str
    model: str
    price_model: str  # the model whose price applies: an Azure deployment's model, else ``model``
    requests: int
    estimated_input_tokens: int
    estimated_output_tokens: int
    enqueued_tokens: int
    kind: NotRequired[Literal["borrowed"]]
    output_expires_after: NotRequired[dict[str, Any] | None]  # set by submit from the params
    rounds: NotRequired[list[dict[str, Any]]]  # set by wait_for_batch when it is finished


class BorrowedRef(ShardRef):
    """A plan entry for requests answered by another state folder's batch (``kind: borrowed``)."""

    owner_state_dir: str
    owner_shard: int


class StatePlan(TypedDict):
    """``plan.json`` in a state folder: written last, its presence means the folder is complete."""

    state_dir: str
    input_sha256: str
    lines: int
    valid: int
    rejected: int
    estimated_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_usd: float | None
    estimated_total_cost_usd: float | None
    reused: NotRequired[int]  # reused, borrowed, cached: absent from an error plan
    borrowed: NotRequired[int]
    cached: NotRequired[int]
    unpriced_models: list[str]
    shards: list[ShardRef]
    unclaimed: NotRequired[bool]  # a plan-only (dry) run claimed nothing
    error: NotRequired[str]  # the file cannot be sent (see plans.error_plan)
    packed_in: NotRequired[str]  # a packed file: the state folder of the pack content sending it


class FilePlan(StatePlan, total=False):
    """What ``prepare`` returns for one input file (XCom): the state plan and where the file stands."""

    source: str
    key: str
    partition: str | None
    shard_map_start: int  # set by check_budget: the map index of its first mapped shard (plans.numbered)
    mapped_shards: list[int]  # set by check_budget: the positions in shards of those this run maps
    postponed: int  # set by check_budget: unfinished shards left to the next run (max_map_length)
    out_dir: str
    size: int | None
    mtime: float | None
    input_stat: dict[str, int] | None
    input_raw_sha256: str | None
    provider: str  # the connection's provider: openai, azure or anthropic (see openai_batch.providers)
    skipped: bool
    dry_run: bool
    # A pack's plan (see openai_batch.packs): its files' plans, and the contents that send their
    # requests (a pack content's plan, or a file's own); ``shards`` holds every content's shards.
    members: list[dict[str, Any]]
    units: list[dict[str, Any]]


class BatchEndEvent(TypedDict):
    """The event that ends a shard's wait (see :func:`openai_batch.rounds.on_wait_end`)."""

    batch_id: str | None
    status: str  # a batch status of openai_batch.status.ENDED, or "error" / "timeout"
    message: NotRequired[str]  # error and timeout only
    output_file_id: NotRequired[str | None]
    error_file_id: NotRequired[str | None]
    request_counts: NotRequired[dict[str, int] | None]
    usage: NotRequired[dict[str, Any] | None]
    errors: NotRequired[list[dict[str, Any]]]


class TokenCost(TypedDict):
    """Tokens and their cost, estimated before sending or counted after."""

    cost_usd: float | None
    input_tokens: int
    output_tokens: int


class Counts(TypedDict):
    """How every input line of a file ended."""

    total: int
    succeeded: int
    failed: int
    expired: int
    cancelled: int
    rejected: int
    reused: int
    borrowed: int
    from_cache: int


class Manifest(TypedDict):
    """``manifest.json`` in each input file's result folder."""

    manifest_version: int  # 2 (see results_io.MANIFEST_VERSION); absent: 1
    run_id: str
    run_type: str  # manual, scheduled, backfill, asset_triggered
    cost_unknown_reason: str | None
    input: str
    input_key: str
    provider: str  # openai, azure or anthropic: the API the batches went to (see openai_batch.providers)
    input_sha256: str
    input_raw_sha256: str | None
    input_stat: dict[str, int] | None
    input_changed_after_taken: bool
    partition: str | None  # the run's day (scheduled, backfill) or the file's day folder, else null
    state_dir: str
    counts: Counts
    estimate: TokenCost
    estimated_cost_usd: float | None  # the actual cost, kept under its first name (see docs)
    actual: TokenCost
    usage: dict[str, int]
    unpriced_models: list[str]
    rounds: int
    batches: list[dict[str, Any]]  # model (an Azure deployment's name) and priced_as (its model) per round
    service_anomalies: dict[str, int]
    by_model: dict[str, dict[str, Any]]  # {model: {input_tokens, output_tokens, cost_usd}} of its batches
    from_cache: list[str]
    results_sha256: str
    results_bytes: int
    rejects_sha256: str
    error: str | None
