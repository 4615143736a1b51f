"""Airflow plugin: the OpenAI Batch results view (a tab on each run, a page per DAG) and its links."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from openai_batch.ui.app import PREFIX, app
from openai_batch.ui.links import OpenAIBatchResultsLink


class OpenAIBatchUIPlugin(AirflowPlugin):
    """Serve the results view from the API server and add it to the run and DAG pages."""

    name = "openai_batch_ui"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "OpenAI Batch results"}]
    external_views = [
        {
            "name": "Batch results",
            "href": "openai-batch/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "openai-batch-results",
        },
        {
            "name": "Batch runs",
            "href": "openai-batch/dags/{DAG_ID}",
            "destination": "dag",
            "url_route": "openai-batch-runs",
        },
    ]
    operator_extra_links = [OpenAIBatchResultsLink()]
