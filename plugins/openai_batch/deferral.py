"""Deferring a task until its round fits under the enqueued-token limit (shared by submit and wait)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

    from openai_batch.budget import NoCapacityError

__all__ = ["too_big_message", "wait_for_capacity"]


def too_big_message(err: NoCapacityError) -> str:
    """Return why a shard that is alone above its model's limit fails, and what to change."""
    return (
        f"{err}: the shard alone is above the model's enqueued-token limit; raise the limit in the "
        "Variable openai_batch_token_limits or lower max_requests_per_batch"
    )


def wait_for_capacity(
    task: BaseOperator, err: NoCapacityError, poll: float, method_name: str, ledger_dir: str
) -> NoReturn:
    """
    Defer ``task`` until the round fits (no worker slot held), or fail if it can never fit.

    The capacity trigger checks the ledger every ``poll`` seconds and resumes ``method_name``
    once the round fits, not sooner than ``MIN_FIRE_AFTER_DEFERRAL`` seconds from now.
    """
    import time

    from openai_batch.providers import provider_of
    from openai_batch.triggers import MIN_FIRE_AFTER_DEFERRAL, OpenAIBatchCapacityTrigger

    conn_id = getattr(task, "conn_id", None)

    if not err.ever_fits:
        raise AirflowFailException(too_big_message(err))
    task.log.info("Capacity: %s; checking again every %.0f s (deferred)", err, poll)
    task.defer(
        trigger=OpenAIBatchCapacityTrigger(
            ledger_dir=ledger_dir,
            conn_id=conn_id,
            provider=provider_of(conn_id) if conn_id else "openai",
            key=err.key,
            model=err.model,
            tokens=err.tokens,
            limit=err.limit,
            label=err.label,
            poll_interval=poll,
            not_before=time.time() + max(MIN_FIRE_AFTER_DEFERRAL, poll),
        ),
        method_name=method_name,
    )
    raise AssertionError("unreachable")  # defer() raises
