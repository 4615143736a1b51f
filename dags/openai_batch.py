"""
### openai_batch

Send JSONL request files to the OpenAI Batch API and store the results joined to their requests.

Files are picked up three ways. A file that lands and settles anywhere in the inbox starts a run
by itself (the inbox watcher, an asset watcher on the triggerer), which takes the files announced.
The scheduled run for day D starts once D has ended and takes `<inbox>/D/*.jsonl` (backfill runs
too). A run a person triggers (UI, REST, CLI) takes the `input` param (default `<inbox>/*.jsonl`),
whatever logical date the form pre-fills. A file whose results exist for its content is skipped.
Each file is validated and split, each shard is uploaded and submitted once (retries re-attach),
the wait is deferred, unfinished requests are resubmitted for a few rounds, and `results.jsonl`,
`rejects.jsonl` and `manifest.json` land in `<results>/<path of the file in the inbox>/`
(`<inbox>/D/reviews.jsonl` -> `<results>/D/reviews/`). A run of 20 or more small files sends them
in packs (one prepare, batch and write per pack), each file still written on its own.

Variables: `openai_batch_inbox`, `openai_batch_results`, `openai_batch_allowed_roots`,
`openai_batch_max_input_bytes` (cap on a `.jsonl.gz`'s decompressed size, default 100 GiB);
cost and capacity: `openai_batch_daily_budget_usd`, `openai_batch_token_limits`,
`openai_batch_ledger_dir`, `openai_batch_capacity_poll`, `openai_batch_reuse_identical` (true:
answer an identical request from an earlier answer instead of paying again; off by default),
`openai_batch_watch_inbox` (false: a file that lands starts no run).
Connection: the `conn_id` param, default `openai_default`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param, dag, task

from openai_batch import settings
from openai_batch.assets import RESULTS_ASSET, inbox_asset
from openai_batch.limits import MAX_REQUESTS_PER_BATCH, OUTPUT_EXPIRY_SECONDS, SUPPORTED_ENDPOINTS
from openai_batch.operators import (
    OpenAIBatchPrepareOperator,
    OpenAIBatchSubmitOperator,
    OpenAIBatchWriteResultsOperator,
)
from openai_batch.sensors import OpenAIBatchInputSensor, OpenAIBatchSensor

INBOX = settings.template(settings.INBOX)
RESULTS = settings.template(settings.RESULTS)
ALLOWED_ROOTS = settings.template(settings.ALLOWED_ROOTS)
# Cost and capacity: see docs/cost-and-capacity.md and openai_batch.budget.
LEDGER = settings.ledger_template()
TOKEN_LIMITS = settings.template(settings.TOKEN_LIMITS)
DAILY_BUDGET = settings.template(settings.DAILY_BUDGET)
CAPACITY_POLL = settings.template(settings.CAPACITY_POLL)
# Opt-in answer cache: an identical request (same endpoint and body) answered before is not paid again.
REUSE_IDENTICAL = settings.template(settings.REUSE_IDENTICAL)
# Cap on the decompressed size of a .jsonl.gz input (bytes); empty: 100 GiB.
MAX_INPUT_BYTES = settings.template(settings.MAX_INPUT_BYTES)

#: The JSON Schema dialect every param declares. Airflow checks a param's schema against its
#: dialect's meta-schema each time it resolves the param (every task start resolves them all, and
#: so does every serialisation of the DAG). Against draft 7's meta-schema the 13 resolve in about
#: 4 ms instead of 7 ms against the default (2020-12) one; every keyword below means the same in both.
PARAM_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def _param(default: object, **schema: object) -> Param:
    """A DAG param whose JSON schema ``schema`` declares :data:`PARAM_SCHEMA_DIALECT`."""
    return Param(default, **{"$schema": PARAM_SCHEMA_DIALECT}, **schema)


# Every task that reads, writes or waits on I/O ends within these bounds (sensors have their own
# timeout). Generous: prepare and write_results stream files of tens of GB; submit uploads shard
# files of up to 200 MB, each retried with backoff by the SDK.
PREPARE_TIMEOUT = timedelta(hours=6)
SUBMIT_TIMEOUT = timedelta(hours=2)
WRITE_TIMEOUT = timedelta(hours=6)
BUDGET_TIMEOUT = timedelta(minutes=30)


@dag(
    dag_id="openai_batch",
    # A run per day D, started once D has ended (a data-interval timetable: logical date D, run
    # after D + 1 day), and a run for every batch of files the inbox watcher announces.
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"), assets=inbox_asset()
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    render_template_as_native_obj=True,
    tags=["openai", "batch"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "input": _param(
            None,
            type=["null", "string"],
            title="Input",
            description="Path or glob of the JSONL files to send, relative to the inbox, absolute, or a URL "
            "(s3://...). Empty: <inbox>/YYYY-MM-DD/*.jsonl for scheduled runs, <inbox>/*.jsonl otherwise.",
        ),
        "conn_id": _param(
            "openai_default",
            type="string",
            minLength=1,
            pattern="^[A-Za-z0-9_.-]+$",
            title="Connection",
            description="The Airflow connection; its type picks the API. openai: OpenAI's Batch API (API key "
            "in the password, base URL in the host). anthropic: Anthropic's Message Batches (key in the "
            "password; lines {custom_id, params} or bare Messages bodies).",
        ),
        "endpoint": _param(
            "/v1/chat/completions",
            type="string",
            enum=list(SUPPORTED_ENDPOINTS),
            title="Endpoint",
            description="Endpoint for short lines (bare request bodies) and lines without a url. On an "
            "anthropic connection the default means Anthropic's Messages API.",
        ),
        "model": _param(
            None,
            type=["null", "string"],
            title="Model override",
            description="When set, replaces the model of every request.",
        ),
        "max_requests_per_batch": _param(
            MAX_REQUESTS_PER_BATCH,
            type="integer",
            minimum=1,
            maximum=MAX_REQUESTS_PER_BATCH,
            title="Max requests per batch",
            description="Files are split into batches of at most this many requests (and 200 MB).",
        ),
        "poll_interval": _param(
            60,
            type="integer",
            minimum=1,
            maximum=3600,
            title="Poll interval (s)",
            description=(
                "Seconds between two status checks of a waiting batch. With webhooks on, a batch's "
                "end wakes its wait within seconds and this is the net for a lost delivery (600 is "
                "plenty). The inbox is listed at least every 10 s."
            ),
        ),
        "max_retry_rounds": _param(
            2,
            type="integer",
            minimum=0,
            maximum=10,
            title="Retry rounds",
            description="Follow-up batches for requests that expired, were cancelled or failed with 429/5xx.",
        ),
        "input_timeout": _param(
            21600,
            type="integer",
            minimum=1,
            title="Input wait (s)",
            description="How long to wait for input files; with none by then the run ends skipped.",
        ),
        "output_expires_after": _param(
            None,
            type=["null", "object"],
            properties={
                "anchor": {"type": "string", "enum": ["created_at"]},
                "seconds": {
                    "type": "integer",
                    "minimum": OUTPUT_EXPIRY_SECONDS[0],
                    "maximum": OUTPUT_EXPIRY_SECONDS[1],
                },
            },
            required=["anchor", "seconds"],
            additionalProperties=False,
            title="Output files expire after",
            description='Optional, e.g. {"anchor": "created_at", "seconds": 604800}: the batches\' output '
            "and error files expire that many seconds (3600 to 2592000) after they are created.",
        ),
        "settle_seconds": _param(
            30,
            type="integer",
            minimum=0,
            maximum=86400,
            title="Settle time (s)",
            description="A file is taken only once its size and modification time have not changed "
            "for this long. Write big files as *.tmp or *.part and rename them when complete.",
        ),
        "dry_run": _param(
            False,
            type="boolean",
            title="Dry run",
            description="Validate and plan only: write plan.json and rejects.jsonl, upload nothing.",
        ),
        "max_cost_usd": _param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Max cost (USD)",
            description="The run fails before anything is uploaded when its estimated cost (input tokens, "
            "plus max_tokens or 1000 output tokens per request) is above this. Empty: no cap.",
        ),
        "force": _param(
            False,
            type="boolean",
            title="Force",
            description="Process files again even when results exist for the same content.",
        ),
    },
)
def openai_batch() -> None:
    """Wire the pipeline: sense, prepare, submit, wait, write."""
    files = OpenAIBatchInputSensor(
        task_id="wait_for_input",
        inbox=INBOX,
        input="{{ params.input }}",
        allowed_roots=ALLOWED_ROOTS,
        poll_interval="{{ params.poll_interval }}",
        input_timeout="{{ params.input_timeout }}",
        settle_seconds="{{ params.settle_seconds }}",
        ledger_dir=LEDGER,
    )
    plans = OpenAIBatchPrepareOperator.partial(
        task_id="prepare",
        map_index_template="{{ task.source['key'] }}",
        inbox=INBOX,
        allowed_roots=ALLOWED_ROOTS,
        results_root=RESULTS,
        endpoint="{{ params.endpoint }}",
        conn_id="{{ params.conn_id }}",
        model="{{ params.model }}",
        max_requests_per_batch="{{ params.max_requests_per_batch }}",
        plan_only="{{ params.dry_run }}",
        force="{{ params.force }}",
        max_input_bytes=MAX_INPUT_BYTES,
        execution_timeout=PREPARE_TIMEOUT,
        ledger_dir=LEDGER,
        reuse_identical=REUSE_IDENTICAL,
    ).expand(source=files.output)

    # all_done_min_one_success: a prepare that still fails (storage trouble after its retries)
    # holds back neither the budget check nor the other files. Airflow 3 hands this task the
    # plans of the prepares that succeeded only (a failed map index pushed no XCom; the lazy
    # sequence skips it), so the failed file costs nothing here. When every prepare failed the
    # task is upstream_failed; when the input sensor skipped (no input), it is skipped.
    @task(trigger_rule="all_done_min_one_success", execution_timeout=BUDGET_TIMEOUT)
    def check_budget(
        all_plans: list[dict],
        max_cost_usd: object,
        daily_budget_usd: object,
        ledger_dir: str,
        run_id: str | None = None,
    ) -> list[dict]:
        """Fail before any upload when the run's estimate is above max_cost_usd or the day's budget."""
        from airflow.sdk import conf
        from airflow.sdk.exceptions import AirflowFailException

        from openai_batch.budget import BudgetError, check_run_budget
        from openai_batch.plans import contents, numbered
        from openai_batch.state_store import shard_finished

        # Airflow maps at most [core] max_map_length shards: the run maps the first that many that
        # have not finished; a file with more is postponed, and the next run sends the rest.
        limit = conf.getint("core", "max_map_length", fallback=1024)
        plans_list = numbered(all_plans, limit, shard_finished)  # type: ignore[arg-type]
        for plan in plans_list:
            if plan.get("postponed"):
                print(
                    f"{plan['key']}: {plan['postponed']} shard(s) left for the next run "
                    f"([core] max_map_length {limit}); its finished shards are kept"
                )
        try:
            line = check_run_budget(
                contents(plans_list),
                run_id=str(run_id),
                max_cost_usd=max_cost_usd,
                daily_budget_usd=daily_budget_usd,
                ledger_dir=ledger_dir,
            )
        except BudgetError as err:
            raise AirflowFailException(str(err)) from err
        print(f"Budget: {line}")
        return plans_list

    @task
    def list_shards(all_plans: list[dict]) -> list[dict]:
        """Flatten the shards the run maps (check_budget chose them) into one list to map over."""
        from openai_batch.plans import flat_shards

        return flat_shards(all_plans)  # type: ignore[arg-type,return-value]

    budgeted = check_budget(plans.output, "{{ params.max_cost_usd }}", DAILY_BUDGET, LEDGER)  # type: ignore[arg-type]
    shards = list_shards(budgeted)
    shard_label = "{{ task.shard['key'] }} #{{ task.shard['index'] + 1 }}/{{ task.shard['count'] }}"
    submitted = OpenAIBatchSubmitOperator.partial(
        task_id="submit",
        conn_id="{{ params.conn_id }}",
        execution_timeout=SUBMIT_TIMEOUT,
        map_index_template=shard_label,
        output_expires_after="{{ params.output_expires_after }}",
        ledger_dir=LEDGER,
        token_limits=TOKEN_LIMITS,
        capacity_poll=CAPACITY_POLL,
    ).expand(shard=shards)
    waited = OpenAIBatchSensor.partial(
        task_id="wait_for_batch",
        conn_id="{{ params.conn_id }}",
        map_index_template=shard_label,
        poll_interval="{{ params.poll_interval }}",
        max_retry_rounds="{{ params.max_retry_rounds }}",
        ledger_dir=LEDGER,
        reuse_identical=REUSE_IDENTICAL,
        token_limits=TOKEN_LIMITS,
        capacity_poll=CAPACITY_POLL,
    ).expand(shard=submitted.output)
    written = OpenAIBatchWriteResultsOperator.partial(
        task_id="write_results",
        trigger_rule="none_failed",
        execution_timeout=WRITE_TIMEOUT,
        outlets=[RESULTS_ASSET],
        map_index_template="{{ task.plan['key'] }}",
        ledger_dir=LEDGER,
        # Each file finishes on its own: not downstream of the waits, the write waits (deferred)
        # for its own shards' wait_for_batch instances only, so a small file's results and Asset
        # event never wait for another file's 24-hour batch; a failed wait of its file fails it.
        wait_task_id=waited.task_id,
        poll_interval="{{ params.poll_interval }}",
        # Mapped over the plans check_budget passed on, not over prepare's: a prepare that failed
        # then leaves the other files' writes alone (none_failed sees check_budget, which ran).
    ).expand(plan=budgeted)
    shards >> written  # a run whose shards cannot be mapped writes nothing


openai_batch()
