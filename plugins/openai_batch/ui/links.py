"""Extra link from a task to its run's results view."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class OpenAIBatchResultsLink(BaseOperatorLink):
    """Link to the results view of the task's run (the page the run's "Batch results" tab shows)."""

    name = "Batch results"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the results view's address, relative to the Airflow UI's base."""
        return f"/openai-batch/runs/{quote(ti_key.dag_id, safe='')}/{quote(ti_key.run_id, safe='')}"
