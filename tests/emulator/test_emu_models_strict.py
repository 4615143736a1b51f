"""Models: the default list covers the price table and the samples; ``make run``'s emulator refuses a typo.

The service fails a batch whose model its Batch API does not know (``errors.data`` with
``model_not_found`` on ``body.model``), so a misspelt ``gpt-4o-mnii`` must not get echo answers
from the emulator ``make run`` starts. The test starts that emulator from the very command line
``scripts/run_local.py`` builds.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import FAST, chat_line, jsonl, read_lines, upload, wait_for

from openai_batch.pricing import PRICES
from openai_emulator.settings import DEFAULT_MODELS, EmulatorSettings, settings_from_args
from openai_emulator.testing import EmulatorServer, free_port
from scripts.run_local import ROOT, emulator_command

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SAMPLES = sorted((ROOT / "samples").glob("*.jsonl"))
TYPO = "gpt-4o-mnii"


def _sample_models() -> set[str]:
    """Every ``"model"`` value in samples/, found in the text so multi-line or broken lines count too."""
    return {m for path in SAMPLES for m in re.findall(r'"model"\s*:\s*"([^"]+)"', path.read_text())}


def test_default_models_cover_the_price_table() -> None:
    # Claude models are the Message Batches API's: test_emu_anthropic.py checks them against CLAUDE_MODELS.
    assert {m for m in PRICES if not m.startswith("claude-")} - set(DEFAULT_MODELS) == set()


def test_default_models_cover_the_samples() -> None:
    models = _sample_models()
    assert "gpt-4-turbo" in models  # samples/seed.jsonl
    assert models - set(DEFAULT_MODELS) == set()


def test_make_run_starts_the_emulator_strict(tmp_path: Path) -> None:
    argv = emulator_command(8800, tmp_path)
    assert argv[1:3] == ["-m", "openai_emulator"]
    settings = settings_from_args(argv[3:])
    assert settings.strict_models is True
    assert settings.models == list(DEFAULT_MODELS)
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8800, tmp_path)


@contextmanager
def _make_run_emulator(data_dir: Path) -> Iterator[str]:
    """Run the emulator exactly as ``make run`` does (its argv), on a free port; yield the base URL."""
    port = free_port()
    data_dir.mkdir(parents=True)
    with (data_dir.parent / "emulator.log").open("ab") as log:
        process = subprocess.Popen(emulator_command(port, data_dir), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (data_dir.parent / "emulator.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/_emulator/health", timeout=1):  # noqa: S310 - local URL
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "the emulator did not become healthy"
                time.sleep(0.05)
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def make_run_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with _make_run_emulator(tmp_path_factory.mktemp("make-run") / "emulator") as base_url:
        yield openai.OpenAI(base_url=base_url, api_key="local-emulator-key", max_retries=0)


def _run(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint="/v1/chat/completions", completion_window="24h"
    )
    return wait_for(client, batch.id)


def test_a_typo_model_fails_under_make_run(make_run_client: openai.OpenAI) -> None:
    done = _run(make_run_client, [chat_line("a", model=TYPO), chat_line("b", model=TYPO)])
    assert done.status == "failed"
    assert (done.output_file_id, done.error_file_id) == (None, None)
    assert done.errors is not None
    error = done.errors.data[0]
    assert (error.code, error.param, error.line) == ("model_not_found", "body.model", 1)
    assert error.message == f"The provided model '{TYPO}' is not supported by the Batch API."


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("gpt-4o-mini", id="listed"),
        pytest.param("gpt-4o-mini-2024-07-18", id="dated-snapshot"),
        pytest.param("gpt-3.5-turbo-0125", id="short-snapshot"),
    ],
)
def test_known_models_still_answer_under_make_run(make_run_client: openai.OpenAI, model: str) -> None:
    done = _run(make_run_client, [chat_line("a", model=model)])
    assert done.status == "completed", done.errors
    assert read_lines(make_run_client, done.output_file_id)[0]["response"]["status_code"] == 200


@pytest.mark.parametrize(
    "model", [pytest.param(TYPO, id="typo"), pytest.param(f"{TYPO}-2024-07-18", id="typo-snapshot")]
)
def test_snapshot_of_an_unknown_model_is_unknown(tmp_path: Path, model: str) -> None:
    with EmulatorServer(tmp_path, strict_models=True, **FAST) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        done = _run(client, [chat_line("a", model=model)])
        assert done.status == "failed"
        assert done.errors is not None
        assert done.errors.data[0].code == "model_not_found"


@pytest.mark.parametrize("sample", [pytest.param(path, id=path.name) for path in SAMPLES])
def test_every_sample_request_answers_under_make_run(make_run_client: openai.OpenAI, sample: Path) -> None:
    """Each parseable sample line, wrapped as the pipeline sends it, one batch per model."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for number, text in enumerate(sample.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            continue  # a line the pipeline rejects before sending
        body = line.get("body", line) if isinstance(line, dict) else None
        if not isinstance(body, dict) or body.get("stream") is True:
            continue  # rejected before sending as well
        wrapped = {
            "custom_id": f"line-{number}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
        by_model.setdefault(str(body.get("model")), []).append(wrapped)
    assert by_model
    for model, lines in by_model.items():
        done = _run(make_run_client, lines)
        assert done.status == "completed", (model, done.errors)


def test_the_emulator_default_stays_lenient_for_local_models() -> None:
    """Without the flag any model passes: the proxy backend fronts local servers with models of their own."""
    assert EmulatorSettings().strict_models is False
