"""Files API: upload, retrieve, content, delete, list pagination and the size limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai
import pytest
from emulator_support import chat_file

from openai_emulator.testing import EmulatorServer

if TYPE_CHECKING:
    from pathlib import Path


def test_file_round_trip(client: openai.OpenAI) -> None:
    content = chat_file(3)
    created = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename, created.purpose) == (
        "file",
        len(content),
        "in.jsonl",
        "batch",
    )
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == content
    with client.files.with_streaming_response.content(created.id) as response:
        assert list(response.iter_lines()) == content.decode().splitlines()
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_expires_after(client: openai.OpenAI) -> None:
    created = client.files.create(
        file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert created.expires_at == created.created_at + 3600


def test_bad_purpose_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.param == "purpose"


def test_list_pagination(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    client.files.create(file=("other.txt", b"x"), purpose="user_data")
    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2]
    assert page.has_more is True
    rest = client.files.list(purpose="batch", limit=10, after=page.data[-1].id)
    assert [f.id for f in rest.data] == ids[::-1][2:]
    assert rest.has_more is False
    ascending = client.files.list(purpose="batch", order="asc", limit=3)
    assert [f.id for f in ascending.data] == ids[:3]
    assert [f.id for f in client.files.list(purpose="batch", limit=2)] == ids[::-1]  # auto-pagination
    assert len(client.files.list().data) == 6


def test_batch_input_over_limit_is_rejected(tmp_path: Path) -> None:
    with EmulatorServer(tmp_path, max_input_file_bytes=1000) as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
        assert info.value.param == "file"
        assert client.files.list().data == []
        content = b'{"custom_id": "a"}' + b" " * 981 + b"\n"
        assert client.files.create(file=("ok.jsonl", content), purpose="batch").bytes == 1000
