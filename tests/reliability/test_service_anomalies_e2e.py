"""A batch whose output file does not match its requests: counted, logged, and the gap resubmitted."""

from __future__ import annotations

import json
import logging
from typing import Any

from tests.reliability.support import chat_line, read_jsonl, result_dir, run_dag, task_states, write_input


class _Collect(logging.Handler):
    """Keep every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_corrupted_output_file_is_counted_and_its_missing_request_resubmitted(
    pipeline: dict[str, Any],
) -> None:
    server = pipeline["emulator"]
    # The first batch's output: one answer left out, one twice, one for an id never sent, one id-less.
    server.set_faults(
        output_corruption=["drop", "duplicate", "foreign", "without_id"], output_corruption_batches=1
    )
    write_input(pipeline["inbox"] / "stray.jsonl", [chat_line(f"req-{i}", f"question {i}") for i in range(6)])

    # A handler on the module's own logger: the task's logging setup replaces the root's handlers.
    seen = _Collect()
    logger = logging.getLogger("openai_batch.results_io")
    logger.addHandler(seen)
    try:
        dag_run = run_dag({"input": "stray.jsonl"})
    finally:
        logger.removeHandler(seen)

    assert dag_run.state == "success", task_states(dag_run)
    assert server.stats()["outputs_corrupted"] == 1
    out = result_dir(pipeline["results"], "stray")
    results = read_jsonl(out / "results.jsonl")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(6)]
    assert all(r["status"] == "succeeded" for r in results), results

    first, second = manifest["batches"]
    expected = {"missing": 1, "duplicate": 1, "foreign": 1, "without_id": 1, "unparseable": 0}
    assert first["service_anomalies"] == expected
    assert (first["round"], first["status"], first["request_counts"]["completed"]) == (0, "completed", 6)
    # The request the output left out went again, alone, in a follow-up round, and succeeded there.
    assert (second["round"], second["status"], second["requests"]) == (1, "completed", 1)
    assert second["service_anomalies"] == dict.fromkeys(expected, 0)
    assert manifest["service_anomalies"] == expected
    assert manifest["counts"]["succeeded"] == 6
    resubmitted = [r for r in results if r["batch_id"] == second["batch_id"]]
    assert len(resubmitted) == 1

    # The task log warns with the counts and a few examples.
    warnings = [r.getMessage() for r in seen.records if r.levelno == logging.WARNING]
    assert any(
        first["batch_id"] in line
        and "1 missing, 1 duplicate, 1 foreign, 1 without custom_id, 0 unparseable" in line
        and "foreign: foreign-" in line
        for line in warnings
    ), warnings
