"""The results view: a page per run and per DAG, served by the Airflow API server."""
