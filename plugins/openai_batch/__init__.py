"""Run OpenAI Batch API workloads on Apache Airflow: hooks, operators, sensors, triggers and pure logic.

The modules ``limits``, ``pricing``, ``prepare``, ``results`` and ``state`` hold the pure logic and
import nothing from Airflow; ``hooks``, ``triggers``, ``operators`` and ``sensors`` adapt them to Airflow.
"""

from openai_batch.secrets import install_log_redaction

# Every process that imports the plugin (workers, the triggerer, the DAG processor) redacts API keys
# from its log records as soon as a hook registers one; see ``openai_batch.secrets``.
install_log_redaction()
