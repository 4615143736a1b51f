"""The DAG over many files or many shards, run by ``dag.test()`` against the emulator.

Run: ``.venv/bin/python -m bench.many_inputs --files 1000`` (that many 3-line files in the inbox) or
``--shards 2000`` (one file split into that many shards, one request each), with
``--max-map-length`` (default 1,024, Airflow's) and ``--pack-from`` (``[openai_batch]
pack_from_files``: small files are packed from that many per run; 0: never; default: the DAG's).
A child process with its own metadata database runs the DAG over the inbox's root again and again
until every file has its results (a run takes at most ``max_files`` files and maps at most
``max_map_length`` shards; the rest go to the next run), then checks that every request has exactly
one result and was sent exactly once. Printed: runs, seconds in all and per run, seconds per task
instance, batches created, pack contents, and the child's peak RSS. Not part of ``make bench``:
10,000 small files take about 3 minutes (packed), 1,000 unpacked about 45.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.common import run_script

_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
sys.path[:0] = ["plugins", "."]
base, files, shards = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
inbox, results = base / "inbox", base / "results"
inbox.mkdir(parents=True)
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
line = json.dumps({"custom_id": "%s", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
expected = []
if shards:
    ids = [f"s-{i:06d}" for i in range(shards)]
    (inbox / "big.jsonl").write_text("".join(line % i for i in ids))
    expected += ids
for n in range(files):
    ids = [f"f{n:06d}-{i}" for i in range(3)]
    (inbox / f"f{n:06d}.jsonl").write_text("".join(line % i for i in ids))
    expected += ids
old = time.time() - 3600
for path in inbox.iterdir():
    os.utime(path, (old, old))

import subprocess
subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
from openai_emulator.testing import EmulatorServer
from airflow.dag_processing.dagbag import DagBag

out = {"files": files + (1 if shards else 0), "requests": len(expected), "runs": 0, "task_instances": 0}
with EmulatorServer(base / "emulator", validating_seconds=0.1, finalizing_seconds=0.1) as server:
    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = json.dumps(
        {"conn_type": "openai", "password": "sk-bench", "host": server.base_url}
    )
    dag = DagBag(dag_folder="dags").get_dag("openai_batch")
    conf = {"input": "*.jsonl", "poll_interval": 1, "settle_seconds": 0}
    conf["max_requests_per_batch"] = 1 if shards else 50000
    started = time.perf_counter()
    def done():
        found = results.rglob("manifest.json")
        return sum(1 for p in found if "_history" not in p.parts and "_state" not in p.parts)
    profile_to = os.environ.get("BENCH_PROFILE_FILE")
    if profile_to:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    while done() < out["files"] and out["runs"] < 60:
        run = dag.test(run_conf=conf)
        out["runs"] += 1
        out["task_instances"] += len(run.get_task_instances())
        if run.state != "success":
            tis = run.get_task_instances()
            out["failed_run"] = {ti.task_id: ti.state for ti in tis if ti.state != "success"}
            break
    out["seconds"] = round(time.perf_counter() - started, 1)
    packs = results / "_packs" / "_state"
    out["pack_contents"] = sum(1 for _ in packs.iterdir()) if packs.exists() else 0
    if profile_to:
        profiler.disable()
        profiler.dump_stats(profile_to)
    got = []
    for path in sorted(results.rglob("results.jsonl")):
        if "_history" in path.parts or "_state" in path.parts:
            continue
        got += [json.loads(l)["custom_id"] for l in path.read_text().splitlines() if l.strip()]
    out["results"] = len(got)
    out["results_match"] = sorted(got) == sorted(expected)
    out["batches_created"] = int(server.stats().get("batches_created", 0))
    import openai
    client = openai.OpenAI(api_key="sk-bench", base_url=server.base_url)
    sent = []
    for batch in client.batches.list(limit=100):
        text = client.files.content(batch.input_file_id).text
        sent += [json.loads(l)["custom_id"] for l in text.splitlines() if l.strip()]
    out["each_sent_once"] = sorted(sent) == sorted(expected)
out["seconds_per_run"] = round(out["seconds"] / max(1, out["runs"]), 1)
out["seconds_per_task_instance"] = round(out["seconds"] / max(1, out["task_instances"]), 3)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=0, help="3-line files in the inbox")
    parser.add_argument("--shards", type=int, default=0, help="shards of one more file (one request each)")
    parser.add_argument("--max-map-length", type=int, default=1024)
    parser.add_argument("--pack-from", type=int, help="pack small files from this many per run (0: never)")
    parser.add_argument("--log", help="write the child's output (the task logs) to this file")
    parser.add_argument("--profile", help="write a cProfile of the child's runs to this file")
    args = parser.parse_args(argv)
    if not args.files and not args.shards:
        parser.error("give --files or --shards")
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="many-inputs-bench-") as tmp:
        env = {
            **os.environ,
            "AIRFLOW_HOME": f"{tmp}/airflow",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp}/airflow/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(args.max_map_length),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW_VAR_OPENAI_BATCH_INBOX": f"{tmp}/inbox",
            "AIRFLOW_VAR_OPENAI_BATCH_RESULTS": f"{tmp}/results",
            "PYTHONPATH": f"{root / 'plugins'}:{root}",
        }
        env.pop("OPENAI_API_KEY", None)
        if args.pack_from is not None:
            env["AIRFLOW__OPENAI_BATCH__PACK_FROM_FILES"] = str(args.pack_from)
        if args.profile:
            env["BENCH_PROFILE_FILE"] = str(Path(args.profile).resolve())
        done, result = run_script(_CHILD, [tmp, str(args.files), str(args.shards)], env)
        if args.log:
            Path(args.log).write_text(done.stdout + done.stderr)
        if result is None:
            print(done.stderr[-5000:], file=sys.stderr)
            return done.returncode or 1
        print(json.dumps(result))
        if not (result["results_match"] and result["each_sent_once"]) or "failed_run" in result:
            print("not every request has exactly one result, sent once", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
