"""The spec's eight batch endpoints in request preparation, pricing and the ``output_expires_after`` check."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch.limits import SUPPORTED_ENDPOINTS, check_output_expires_after
from openai_batch.prepare import prepare_requests
from openai_batch.pricing import estimate_cost_usd

if TYPE_CHECKING:
    from pathlib import Path

IMAGES = "/v1/images/generations"
EDITS = "/v1/images/edits"
VIDEOS = "/v1/videos"


def run(lines: list[Any], tmp_path: Path, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    result = prepare_requests([data], source_name="in.jsonl", work_dir=tmp_path / "work", endpoint=endpoint)
    sent = [json.loads(x) for s in result.shards for x in open(s.path, encoding="utf-8").read().splitlines()]
    rejects = [json.loads(x) for x in (tmp_path / "work" / "rejects.jsonl").read_text().splitlines()]
    return sent, rejects


def test_eight_endpoints() -> None:
    assert set(SUPPORTED_ENDPOINTS) == {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        IMAGES,
        EDITS,
        VIDEOS,
    }


@pytest.mark.parametrize(
    ("endpoint", "body", "reason"),
    [
        pytest.param(IMAGES, {"prompt": "a cat"}, None, id="image-default-model"),
        pytest.param(IMAGES, {"model": "gpt-image-1", "prompt": "a cat", "n": 2}, None, id="image"),
        pytest.param(IMAGES, {"model": "gpt-image-1"}, "body.prompt is missing", id="image-no-prompt"),
        pytest.param(IMAGES, {"prompt": "a cat", "stream": True}, "streaming", id="image-stream"),
        pytest.param(EDITS, {"prompt": "hat", "images": [{"file_id": "f1"}]}, None, id="edit"),
        pytest.param(EDITS, {"prompt": "hat"}, "body.images is missing", id="edit-no-images"),
        pytest.param(EDITS, {"prompt": "hat", "images": []}, "non-empty list", id="edit-empty"),
        pytest.param(EDITS, {"images": [{"file_id": "f1"}]}, "body.prompt is missing", id="edit-no-prompt"),
        pytest.param(VIDEOS, {"model": "sora-2", "prompt": "waves"}, None, id="video"),
        pytest.param(VIDEOS, {"seconds": "4"}, "body.prompt is missing", id="video-no-prompt"),
        pytest.param(VIDEOS, {"model": 7, "prompt": "waves"}, "body.model must be", id="video-bad-model"),
    ],
)
def test_body_validation_per_endpoint(
    tmp_path: Path, endpoint: str, body: dict[str, Any], reason: str | None
) -> None:
    valid = {"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": "f"}]}
    keep = {IMAGES: ("model", "prompt"), EDITS: ("model", "prompt", "images"), VIDEOS: ("prompt",)}[endpoint]
    good = {k: v for k, v in valid.items() if k in keep}
    # Bare body (endpoint from the param) and full line (endpoint from its url) take the same path.
    sent, rejects = run([good, body, {"custom_id": "f", "url": endpoint, "body": body}], tmp_path, endpoint)
    if reason is None:
        assert [line["body"] for line in sent] == [good, body, body]
        assert {line["url"] for line in sent} == {endpoint}
        assert rejects == []
    else:
        assert [line["body"] for line in sent] == [good]
        assert [r["line"] for r in rejects] == [2, 3]
        assert all(reason in r["reason"] for r in rejects), rejects


@pytest.mark.parametrize(
    ("model", "priced"),
    [
        pytest.param("gpt-image-1", True, id="gpt-image-1"),
        pytest.param("gpt-image-1-mini", True, id="gpt-image-1-mini"),
        pytest.param("dall-e-3", False, id="dall-e-per-image"),
        pytest.param("sora-2", False, id="sora-per-second"),
    ],
)
def test_media_prices(model: str, priced: bool) -> None:
    cost = estimate_cost_usd(model, 1000, 1_000_000)
    assert (cost is not None) == priced
    if model == "gpt-image-1":
        assert cost == pytest.approx((1000 * 5.00 + 1_000_000 * 40.00) / 1e6 * 0.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param({}, None, id="empty"),
        pytest.param({"anchor": "created_at", "seconds": 3600}, 3600, id="lowest"),
        pytest.param({"anchor": "created_at", "seconds": 2_592_000}, 2_592_000, id="highest"),
        pytest.param({"anchor": "created_at", "seconds": 3599}, ValueError, id="too-short"),
        pytest.param({"anchor": "created_at", "seconds": 2_592_001}, ValueError, id="too-long"),
        pytest.param({"anchor": "created_at", "seconds": True}, ValueError, id="bool"),
        pytest.param({"anchor": "created_at", "seconds": 3600.0}, ValueError, id="float"),
        pytest.param({"anchor": "bogus", "seconds": 3600}, ValueError, id="bogus-anchor"),
        pytest.param({"seconds": 3600}, ValueError, id="no-anchor"),
        pytest.param({"anchor": "created_at"}, ValueError, id="no-seconds"),
        pytest.param("3600", ValueError, id="not-an-object"),
    ],
)
def test_check_output_expires_after(value: Any, expected: Any) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError, match="output_expires_after"):
            check_output_expires_after(value)
    elif expected is None:
        assert check_output_expires_after(value) is None
    else:
        assert check_output_expires_after(value) == {"anchor": "created_at", "seconds": expected}


@pytest.mark.parametrize(
    ("provider", "seconds", "ok"),
    [
        pytest.param("openai", 3600, True, id="openai-hour"),
        pytest.param("azure", 3600, False, id="azure-hour"),
        pytest.param("azure", 1_209_600, True, id="azure-14-days"),
        pytest.param("azure", 2_592_001, False, id="azure-too-long"),
        pytest.param("anthropic", 2_592_000, False, id="anthropic-none"),
    ],
)
def test_output_expiry_bounds_per_provider(provider: str, seconds: int, ok: bool) -> None:
    value = {"anchor": "created_at", "seconds": seconds}
    if ok:
        assert check_output_expires_after(value, provider) == value
    else:
        with pytest.raises(ValueError, match="output_expires_after"):
            check_output_expires_after(value, provider)
    assert check_output_expires_after(None, provider) is None
