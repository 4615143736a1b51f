"""Input and results on ``s3://`` through ObjectStoragePath and the Amazon provider, against moto's server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.dags.conftest import get_dag

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("s3fs", reason="s3fs (ObjectStoragePath's s3 file system) is not installed")

BUCKET = "openai-batch-test"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run moto's S3 on a free port, point ``aws_default`` at it and return a boto3 client."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWS_DEFAULT",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        )
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def read_object(client: Any, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def request_line(custom_id: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def test_input_and_results_on_s3(pipeline: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    content = "\n".join([request_line("a", "hello"), "{broken", request_line("b", "bonjour")]) + "\n"
    s3.put_object(Bucket=BUCKET, Key="inbox/x.jsonl", Body=content.encode())
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_INBOX", f"s3://{BUCKET}/inbox")
    monkeypatch.setenv("AIRFLOW_VAR_OPENAI_BATCH_RESULTS", f"s3://{BUCKET}/results")

    dag_run = get_dag().test(
        run_conf={
            "poll_interval": 1,
            "settle_seconds": 0,
            "input_timeout": 60,
            "input": f"s3://{BUCKET}/inbox/x.jsonl",
        }
    )

    states = {f"{ti.task_id}[{ti.map_index}]": ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")["Contents"])
    manifests = [k for k in keys if k.endswith("/x/manifest.json")]
    assert len(manifests) == 1, keys
    out = manifests[0].rsplit("/", 1)[0]
    assert out.startswith("results/"), out
    assert out == "results/x", out  # <results>/<path of the file in the inbox, without .jsonl>

    results = [json.loads(x) for x in read_object(s3, f"{out}/results.jsonl").splitlines()]
    rejects = [json.loads(x) for x in read_object(s3, f"{out}/rejects.jsonl").splitlines()]
    manifest = json.loads(read_object(s3, f"{out}/manifest.json"))
    assert [r["custom_id"] for r in results] == ["a", "b"]
    assert all(r["status"] == "succeeded" for r in results)
    assert "hello" in json.dumps(results[0]["response"])
    assert [(r["line"], r["raw"]) for r in rejects] == [(2, "{broken")]
    assert manifest["counts"]["total"] == 3
    assert manifest["counts"]["succeeded"] == 2
    assert manifest["counts"]["rejected"] == 1
    assert manifest["input"] == f"s3://{BUCKET}/inbox/x.jsonl"

    # Paths recorded for downstream use are plain URLs that resolve back to the same objects.
    write_results = [ti for ti in dag_run.get_task_instances() if ti.task_id == "write_results"]
    summary = write_results[0].xcom_pull(task_ids="write_results", map_indexes=0)
    assert summary["results"] == f"s3://{BUCKET}/{out}/results.jsonl"
    assert pipeline["emulator"].stats()["batches_created"] == 1

    # The same content again: skipped, nothing new submitted, results unchanged.
    again = get_dag().test(
        run_conf={
            "poll_interval": 1,
            "settle_seconds": 0,
            "input_timeout": 60,
            "input": f"s3://{BUCKET}/inbox/x.jsonl",
        }
    )
    assert again.state == "success"
    assert pipeline["emulator"].stats()["batches_created"] == 1
    assert json.loads(read_object(s3, f"{out}/manifest.json")) == manifest
