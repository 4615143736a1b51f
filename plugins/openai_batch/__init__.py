"""Run OpenAI Batch API workloads on Apache Airflow: hooks, operators, sensors, triggers and pure logic.

The modules ``limits``, ``pricing``, ``prepare``, ``results`` and ``state`` hold the pure logic and
import nothing from Airflow; ``hooks``, ``triggers``, ``operators`` and ``sensors`` adapt them to Airflow.
"""
