"""The request is the unit of "already paid": overlapping runs with other split settings, growing files.

Real parts: two ``airflow dags test`` processes at once against the HTTP emulator, which holds its
batches in progress (``hold_in_progress``) until the test lets them go, so both runs are in flight
together whatever the timing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from tests.reliability.support import ROOT, batches_created, chat_line, read_jsonl, sent_ids, write_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

RUN_TIMEOUT = 420.0


def _start(conf: dict[str, Any], date: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``airflow dags test openai_batch`` for ``date`` in its own process."""
    run_conf = json.dumps({"poll_interval": 1, "settle_seconds": 0, **conf})
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", "openai_batch", date, "-c", run_conf],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _until(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    while not check():
        assert all(p.poll() is None for p in procs), f"a run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _finish(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, log.read_text()[-4000:]


def _merged(state_dir: Path) -> list[dict[str, Any]]:
    """Return the results one state folder's run merges (what its write_results writes)."""
    from openai_batch.operators import load_state
    from openai_batch.results_io import merge_shards
    from openai_batch.storage import to_path

    folder = to_path(str(state_dir))
    plan = json.loads((state_dir / "plan.json").read_text())
    states = [load_state(folder, shard) for shard in plan["shards"]]
    out = io.BytesIO()
    merge_shards(folder, states, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _plans(results: Path) -> list[Path]:
    return [p.parent for p in results.rglob("plan.json") if p.parent.name != "_ledger"]


def test_two_runs_with_other_split_settings_at_once_send_each_request_once(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: Any
) -> None:
    server = pipeline["emulator"]
    # A claim TTL far below the batch's run time: the owner's requests are `sent` once its batch
    # exists, never stale claims another run may take over while the batch runs.
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__CLAIM_STALE_AFTER", "1")
    ids = [f"r-{i}" for i in range(6)]
    source = write_input(pipeline["inbox"] / "six.jsonl", [chat_line(i, f"say {i}") for i in ids])
    server.set_faults(hold_in_progress=True)
    logs = [tmp_path / "run-default.log", tmp_path / "run-by-2.log"]
    first = _start({"input": str(source)}, "2024-06-01", logs[0])
    procs = [first]
    try:
        _until("the first run's batch", lambda: batches_created(server) >= 1, procs)
        procs.append(_start({"input": str(source), "max_requests_per_batch": 2}, "2024-06-02", logs[1]))
        _until("the second run's plan", lambda: len(_plans(pipeline["results"])) == 2, procs)
        time.sleep(3)  # the second run goes on to wait for the first one's batch
        assert batches_created(server) == 1
    finally:
        server.set_faults(hold_in_progress=False)
        _finish(procs, logs)

    sent = sent_ids(server)
    assert sorted(sent) == ids, sent  # each request paid once, across both runs
    assert batches_created(server) == 1
    for state_dir in _plans(pipeline["results"]):
        merged = _merged(state_dir)
        assert [r["custom_id"] for r in merged] == ids
        assert {r["status"] for r in merged} == {"succeeded"}
    (out,) = [m.parent for m in pipeline["results"].rglob("manifest.json") if "_history" not in m.parts]
    assert [r["custom_id"] for r in read_jsonl(out / "results.jsonl")] == ids
    # The borrower's waits read each borrowed file's digests from the digests file kept beside it.
    borrowed = sorted(p for d in _plans(pipeline["results"]) for p in d.glob("borrowed-*.jsonl"))
    assert borrowed, "the second run borrowed nothing"
    for path in borrowed:
        kept = json.loads(path.with_name(path.stem + ".digests.json").read_text())
        lines = path.read_bytes().splitlines(keepends=True)
        assert kept["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert kept["count"] == len(lines) == len(kept["ids"])
        assert sorted(kept["ids"]) == sorted(json.loads(line)["custom_id"] for line in lines)


def test_a_file_that_grows_while_its_batch_runs_sends_only_the_new_line(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    server = pipeline["emulator"]
    lines = [chat_line(f"g-{i}", f"grow {i}") for i in range(4)]
    source = write_input(pipeline["inbox"] / "grows.jsonl", lines[:3])
    server.set_faults(hold_in_progress=True)
    logs = [tmp_path / "run-a.log", tmp_path / "run-b.log"]
    procs = [_start({"input": str(source)}, "2024-06-01", logs[0])]
    try:
        _until("run A's batch", lambda: batches_created(server) >= 1, procs)
        write_input(source, lines)  # a 4th line lands while run A's batch is in flight
        procs.append(_start({"input": str(source)}, "2024-06-02", logs[1]))
        _until("run B's batch", lambda: batches_created(server) >= 2, procs)
    finally:
        server.set_faults(hold_in_progress=False)
        _finish(procs, logs)

    sent = sent_ids(server)
    assert sorted(sent) == ["g-0", "g-1", "g-2", "g-3"], sent
    new_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    manifests = pipeline["results"].rglob("manifest.json")
    (manifest,) = [m for m in manifests if json.loads(m.read_text())["input_sha256"] == new_sha]
    results = read_jsonl(manifest.parent / "results.jsonl")
    assert [r["custom_id"] for r in results] == ["g-0", "g-1", "g-2", "g-3"]
    assert {r["status"] for r in results} == {"succeeded"}
    assert json.loads(manifest.read_text())["counts"]["borrowed"] == 3


def test_requests_the_owner_gives_up_are_taken_over_and_sent_once_more(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    """The owner's batch expires before its last request and no retry round is left: the borrower sends it."""
    server = pipeline["emulator"]
    ids = ["t-0", "t-1", "t-2"]
    source = write_input(pipeline["inbox"] / "three.jsonl", [chat_line(i, f"take {i}") for i in ids])
    server.set_faults(hold_in_progress=True, expire_after_requests=2)
    logs = [tmp_path / "owner.log", tmp_path / "borrower.log"]
    procs = [_start({"input": str(source), "max_retry_rounds": 0}, "2024-06-01", logs[0])]
    try:
        _until("the owner's batch", lambda: batches_created(server) >= 1, procs)
        procs.append(_start({"input": str(source), "max_requests_per_batch": 1}, "2024-06-02", logs[1]))
        _until("the borrower's plan", lambda: len(_plans(pipeline["results"])) == 2, procs)
    finally:
        server.set_faults(hold_in_progress=False)
        _finish(procs, logs)

    sent = sent_ids(server)
    assert sorted(sent) == ["t-0", "t-1", "t-2", "t-2"], sent  # only the unanswered one again
    owner, borrower = sorted(
        _plans(pipeline["results"]), key=lambda d: "borrowed" in (d / "plan.json").read_text()
    )
    assert [r["status"] for r in _merged(owner)] == ["succeeded", "succeeded", "expired"]
    merged = _merged(borrower)
    assert [r["custom_id"] for r in merged] == ids
    assert [r["status"] for r in merged] == ["succeeded"] * 3


def test_requests_claimed_and_never_sent_are_taken_over_once_stale(
    pipeline: dict[str, Any], monkeypatch: Any
) -> None:
    """A run claimed the requests and died before its submit: past the claim TTL another run sends them."""
    from openai_batch.operators import OpenAIBatchPrepareOperator
    from tests.reliability.support import run_dag

    server = pipeline["emulator"]
    ids = ["s-0", "s-1"]
    source = write_input(pipeline["inbox"] / "stale.jsonl", [chat_line(i, f"stale {i}") for i in ids])
    ledger = pipeline["results"] / "_ledger"
    crashed = OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=str(source),
        inbox=str(pipeline["inbox"]),
        results_root=str(pipeline["results"]),
        max_requests_per_batch=1,
        ledger_dir=str(ledger),
        partition="2024-06-01",
    ).execute({"run_id": "manual__crashed"})  # type: ignore[arg-type]
    assert [s["requests"] for s in crashed["shards"]] == [1, 1]  # claimed; never submitted
    monkeypatch.setenv("AIRFLOW__OPENAI_BATCH__CLAIM_STALE_AFTER", "2")

    dag_run = run_dag({"input": str(source)})

    assert dag_run.state == "success"
    assert sorted(sent_ids(server)) == ids
    (out,) = [m.parent for m in pipeline["results"].rglob("manifest.json") if "_history" not in m.parts]
    results = read_jsonl(out / "results.jsonl")
    assert [(r["custom_id"], r["status"]) for r in results] == [(i, "succeeded") for i in ids]
    # The run that took them over is their owner now, and the record holds their answers.
    from openai_batch.records import RequestRecord
    from openai_batch.reuse import request_digest

    digests = [request_digest(line) for line in source.read_bytes().splitlines()]
    entries = RequestRecord(ledger / "requests.sqlite").entries(digests).values()
    owner = json.loads((out / "manifest.json").read_text())["state_dir"]
    assert {(e.owner, e.state) for e in entries} == {(owner, "succeeded")}


def _to_first_layout(path: Path) -> None:
    """Rewrite the record as a deployment of the first layout wrote it (owner and batch id in full)."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "CREATE TABLE old (digest BLOB PRIMARY KEY, custom_id TEXT NOT NULL, owner TEXT NOT NULL,"
        " shard INTEGER NOT NULL, state TEXT NOT NULL, batch_id TEXT, updated REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO old SELECT r.digest, r.custom_id, o.name, r.shard, r.state, b.name, r.updated"
        " FROM requests r JOIN owners o ON o.id = r.owner LEFT JOIN batches b ON b.id = r.batch"
    )
    for table in ("requests", "owners", "batches"):
        db.execute(f"DROP TABLE {table}")
    db.execute("ALTER TABLE old RENAME TO requests")
    db.execute("PRAGMA user_version = 0")
    db.execute("COMMIT")
    db.close()


def test_answers_in_a_record_of_the_first_layout_are_borrowed_after_the_upgrade(
    pipeline: dict[str, Any],
) -> None:
    """A deployment upgrades with its record of the first layout: the requests it paid for stay paid."""
    from tests.reliability.support import run_dag

    server = pipeline["emulator"]
    ids = ["u-0", "u-1", "u-2"]
    lines = [chat_line(i, f"upgrade {i}") for i in ids]
    first = write_input(pipeline["inbox"] / "before.jsonl", lines)
    assert run_dag({"input": str(first)}).state == "success"
    record = pipeline["results"] / "_ledger" / "requests.sqlite"
    _to_first_layout(record)
    # The same requests in another file (other content, so not skipped as done): all borrowed.
    again = write_input(pipeline["inbox"] / "after.jsonl", lines[::-1])

    assert run_dag({"input": str(again)}).state == "success"

    assert sorted(sent_ids(server)) == ids  # each request sent once, by the first run only
    (manifest,) = [m for m in pipeline["results"].rglob("after/manifest.json")]
    assert json.loads(manifest.read_text())["counts"]["borrowed"] == 3
    results = read_jsonl(manifest.parent / "results.jsonl")
    assert [(r["custom_id"], r["status"]) for r in results] == [(i, "succeeded") for i in ids[::-1]]
    import sqlite3

    db = sqlite3.connect(record)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
