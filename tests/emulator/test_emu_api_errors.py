"""HTTP-level errors: 400 at create time, 401, 404, 409, in OpenAI's envelope and SDK exception types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest
from emulator_support import chat_file, create_batch, upload, wait_for

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path


def test_missing_key_is_401(server: EmulatorServer) -> None:
    client = openai.OpenAI(
        base_url=server.base_url,
        api_key="test",
        max_retries=0,
        default_headers={"Authorization": "Basic dGVzdA=="},
    )
    with pytest.raises(openai.AuthenticationError) as info:
        client.batches.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert set(info.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


def test_exact_api_key_is_enforced(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, api_key="sekret") as emulator:
        wrong = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=emulator.base_url, api_key="sekret", max_retries=0)
        assert "gpt-4o-mini" in [m.id for m in right.models.list()]


def test_models_for_connection_checks(client: openai.OpenAI) -> None:
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        pytest.param(
            {"endpoint": "/v1/audio/speech"}, "endpoint", "invalid_value", id="unsupported-endpoint"
        ),
        pytest.param({"completion_window": "1h"}, "completion_window", "invalid_value", id="bad-window"),
        pytest.param(
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "invalid_value",
            id="metadata-17-pairs",
        ),
        pytest.param({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value", id="metadata-long-key"),
        pytest.param({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value", id="metadata-long-value"),
        pytest.param({"metadata": {"k": 1}}, "metadata", "invalid_type", id="metadata-non-string"),
    ],
)
def test_create_time_400(client: openai.OpenAI, changes: dict[str, Any], param: str, code: str) -> None:
    file_id = upload(client, chat_file(1))
    arguments: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **changes,
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(**arguments)
    assert info.value.param == param
    assert info.value.code == code
    assert client.batches.list().data == []


def test_metadata_at_limits_is_accepted(client: openai.OpenAI) -> None:
    metadata = {f"{i:0>64}": "v" * 512 for i in range(16)}
    batch = create_batch(client, chat_file(1), metadata=metadata)
    assert batch.metadata == metadata


def test_unknown_ids_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        client.files.delete("file-nope")


def test_unknown_input_file_fails_the_batch(client: openai.OpenAI) -> None:
    """As the reference table says: the batch is created, then fails with invalid_request on file_id."""
    batch = client.batches.create(
        input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_for(client, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.code, e.param) for e in batch.errors.data] == [("invalid_request", "file_id")]


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_cancel_finished_batch_is_409(client: openai.OpenAI, final: str) -> None:
    content = chat_file(2) if final == "completed" else b"{not json\n"
    batch = wait_for(client, create_batch(client, content).id)
    assert batch.status == final
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
