"""End to end: image and video batches through ``dag.test()`` against the emulator over real HTTP.

Also the ``endpoint`` param's eight endpoints and the ``output_expires_after`` param, which the DAG
validates with the spec's bounds and passes to every batch it creates.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import openai
import pytest

from tests.dags.conftest import API_KEY, get_dag, read_jsonl

if TYPE_CHECKING:
    from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPEC_ENDPOINTS = {
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
}
WEEK = 7 * 24 * 3600

pytestmark = pytest.mark.usefixtures("airflow_db")


def write_input(path: Path, lines: list[Any]) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def run_dag(conf: dict[str, Any]) -> Any:
    return get_dag().test(run_conf={"poll_interval": 1, "settle_seconds": 0, **conf})


def task_states(dag_run: Any) -> dict[str, str]:
    return {
        ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): ti.state
        for ti in dag_run.get_task_instances()
    }


def outputs_of(results: Path, stem: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    [manifest_path] = [m for m in results.rglob(f"{stem}/manifest.json") if "_history" not in m.parts]
    out = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    return read_jsonl(out / "results.jsonl"), read_jsonl(out / "rejects.jsonl"), manifest


def client_for(emulator: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.base_url, api_key=API_KEY, max_retries=0)


def test_endpoint_param_lists_the_eight_spec_endpoints() -> None:
    dag = get_dag()
    assert set(dag.params.get_param("endpoint").schema["enum"]) == SPEC_ENDPOINTS


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        pytest.param(None, True, id="unset"),
        pytest.param({"anchor": "created_at", "seconds": 3600}, True, id="lowest"),
        pytest.param({"anchor": "created_at", "seconds": 2_592_000}, True, id="highest"),
        pytest.param({"anchor": "created_at", "seconds": 3599}, False, id="too-short"),
        pytest.param({"anchor": "created_at", "seconds": 2_592_001}, False, id="too-long"),
        pytest.param({"anchor": "bogus", "seconds": 3600}, False, id="bogus-anchor"),
        pytest.param({"seconds": 3600}, False, id="no-anchor"),
        pytest.param({"anchor": "created_at"}, False, id="no-seconds"),
        pytest.param({"anchor": "created_at", "seconds": "3600"}, False, id="string-seconds"),
        pytest.param({"anchor": "created_at", "seconds": 3600, "x": 1}, False, id="extra-key"),
    ],
)
def test_output_expires_after_param_follows_the_spec(value: Any, valid: bool) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    from openai_batch.limits import check_output_expires_after

    param = get_dag().params.get_param("output_expires_after")
    if valid:
        assert param.resolve(value=value) == value
        assert check_output_expires_after(value) == value
        return
    with pytest.raises(ParamValidationError):
        param.resolve(value=value)
    with pytest.raises(ValueError, match="output_expires_after"):
        check_output_expires_after(value)


def test_images_end_to_end(pipeline: dict[str, Any]) -> None:
    generate = {"model": "gpt-image-1", "prompt": "A lighthouse at dusk", "n": 2, "quality": "low"}
    edit = {
        "custom_id": "edit-1",
        "method": "POST",
        "url": "/v1/images/edits",
        "body": {
            "model": "gpt-image-1",
            "prompt": "Add a red hat",
            "images": [{"image_url": "https://example.com/cat.png"}],
        },
    }
    lines: list[Any] = [
        generate,  # bare body: the endpoint param applies
        edit,
        {"model": "gpt-image-1", "n": 1},  # no prompt
        {**edit, "custom_id": "edit-2", "body": {"model": "gpt-image-1", "prompt": "x", "images": []}},
        {**generate, "prompt": "A harbour at dawn", "quality": "high"},
    ]
    write_input(pipeline["inbox"] / "images.jsonl", lines)

    dag_run = run_dag(
        {
            "input": "images.jsonl",
            "endpoint": "/v1/images/generations",
            "output_expires_after": {"anchor": "created_at", "seconds": WEEK},
        }
    )

    assert dag_run.state == "success", task_states(dag_run)
    results, rejects, manifest = outputs_of(pipeline["results"], "images")
    assert [r["line"] for r in rejects] == [3, 4]
    assert "prompt" in rejects[0]["reason"]
    assert "images" in rejects[1]["reason"]
    assert [r["custom_id"] for r in results][1] == "edit-1"
    assert len(results) == 3
    assert all(r["status"] == "succeeded" for r in results), results
    images = [image for r in results for image in r["response"]["data"]]
    assert len(images) == 2 + 1 + 2
    for image in images:
        assert base64.b64decode(image["b64_json"], validate=True).startswith(PNG_SIGNATURE)
    assert manifest["counts"]["total"] == len(results) + len(rejects)
    # Generations and edits are two endpoints, so two batches.
    assert len(manifest["batches"]) == 2
    # gpt-image-1 reports token usage (image output tokens) and has a per-token price.
    assert manifest["usage"]["output_tokens"] >= 272 * 2 + 4160 * 2
    assert manifest["estimated_cost_usd"] > 0

    client = client_for(pipeline["emulator"])
    batches = client.batches.list().data
    assert {b.endpoint for b in batches} == {"/v1/images/generations", "/v1/images/edits"}
    for batch in batches:
        output = client.files.retrieve(batch.output_file_id or "")
        assert output.expires_at == pytest.approx(output.created_at + WEEK, abs=2)


def test_videos_end_to_end(pipeline: dict[str, Any]) -> None:
    lines: list[Any] = [
        {"model": "sora-2", "prompt": "Waves on a beach at sunrise", "seconds": "8", "size": "1280x720"},
        {"model": "sora-2", "prompt": "A paper boat on a river"},
        {"model": "sora-2", "seconds": "4"},  # no prompt
        {
            "custom_id": "full-1",
            "method": "POST",
            "url": "/v1/videos",
            "body": {"model": "sora-2", "prompt": "Snow falling on a city street"},
        },
    ]
    write_input(pipeline["inbox"] / "videos.jsonl", lines)

    dag_run = run_dag({"input": "videos.jsonl", "endpoint": "/v1/videos"})

    assert dag_run.state == "success", task_states(dag_run)
    results, rejects, manifest = outputs_of(pipeline["results"], "videos")
    assert [r["line"] for r in rejects] == [3]
    assert "prompt" in rejects[0]["reason"]
    assert len(results) == 3
    assert results[2]["custom_id"] == "full-1"
    assert all(r["status"] == "succeeded" for r in results), results
    videos = [r["response"] for r in results]
    assert [v["object"] for v in videos] == ["video"] * 3
    assert [v["prompt"] for v in videos] == [
        lines[0]["prompt"],
        lines[1]["prompt"],
        lines[3]["body"]["prompt"],
    ]
    assert (videos[0]["seconds"], videos[0]["size"]) == ("8", "1280x720")
    assert len({v["id"] for v in videos}) == 3
    assert manifest["counts"] == {
        "total": 4,
        "succeeded": 3,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
        "rejected": 1,
        "reused": 0,
        "borrowed": 0,
        "from_cache": 0,
    }
    # Sora is priced per second of video, not per token: the cost is unknown, not zero.
    assert manifest["estimated_cost_usd"] is None
    client = client_for(pipeline["emulator"])
    [batch] = client.batches.list().data
    assert batch.endpoint == "/v1/videos"
    # Without the param, output files keep the service's default (no expiry set by us).
    assert client.files.retrieve(batch.output_file_id or "").expires_at is None


def test_follow_up_rounds_keep_output_expiry(pipeline: dict[str, Any]) -> None:
    emulator = pipeline["emulator"]
    emulator.set_faults(expire_after_requests=1)  # every batch expires after its first request
    prompts = ["A red kite", "A blue kite", "A green kite"]
    write_input(pipeline["inbox"] / "kites.jsonl", [{"model": "sora-2", "prompt": p} for p in prompts])

    dag_run = run_dag(
        {
            "input": "kites.jsonl",
            "endpoint": "/v1/videos",
            "output_expires_after": {"anchor": "created_at", "seconds": WEEK},
        }
    )

    assert dag_run.state == "success", task_states(dag_run)
    results, _, manifest = outputs_of(pipeline["results"], "kites")
    assert [r["response"]["prompt"] for r in results] == prompts
    # One request per round: the first batch and two follow-up rounds the sensor submitted.
    batches = client_for(emulator).batches.list().data
    assert len(batches) == 3
    assert [b["status"] for b in manifest["batches"]] == ["expired"] * 3
    for batch in batches:
        output = client_for(emulator).files.retrieve(batch.output_file_id or "")
        assert output.expires_at == pytest.approx(output.created_at + WEEK, abs=2)
