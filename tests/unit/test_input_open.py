"""The prepare step reads the file it checked: one descriptor, no link followed, regular files only."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from openai_batch.operators import OpenAIBatchPrepareOperator, OpenAIBatchWriteResultsOperator

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SECRET = "sk-fake-secret-4f1d2c0b9e8a7"


def chat_line(custom_id: str, text: str) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    inbox, results, outside = tmp_path / "inbox", tmp_path / "results", tmp_path / "outside"
    for d in (inbox, results, outside):
        d.mkdir()
    (outside / "environ").write_text(f"OPENAI_API_KEY={SECRET}\n")
    return {"inbox": inbox, "results": results, "outside": outside}


def operator(dirs: dict[str, Path], name: str) -> OpenAIBatchPrepareOperator:
    return OpenAIBatchPrepareOperator(
        task_id="prepare",
        source=str(dirs["inbox"] / name),
        inbox=str(dirs["inbox"]),
        results_root=str(dirs["results"]),
        partition="2024-06-01",
    )


def swap_after_check(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run ``swap`` right after the containment check, before the file is opened."""
    checked = OpenAIBatchPrepareOperator.input_ref

    def input_ref(self: OpenAIBatchPrepareOperator, source: Any) -> Any:
        ref = checked(self, source)
        swap()
        return ref

    monkeypatch.setattr(OpenAIBatchPrepareOperator, "input_ref", input_ref)


def write(plan: dict[str, Any], match: str = "cannot be read") -> None:
    with pytest.raises(AirflowFailException, match=match):
        OpenAIBatchWriteResultsOperator(task_id="write_results", plan=plan).execute({"run_id": "r"})  # type: ignore[arg-type]


def all_output(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_a_link_swapped_in_after_the_check_is_never_read(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = dirs["inbox"] / name
    data = (chat_line("a-0", "hello") + "\n").encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    secret = dirs["outside"] / "environ"
    if name.endswith(".gz"):
        secret.write_bytes(gzip.compress(secret.read_bytes()))

    def swap() -> None:
        path.unlink()
        path.symlink_to(secret)

    swap_after_check(monkeypatch, swap)
    plan = operator(dirs, name).execute({"run_id": "manual__1"})  # type: ignore[arg-type]

    assert plan["shards"] == []
    assert "replaced by a link" in plan["error"], plan["error"]
    write(plan)
    manifest = json.loads(next(dirs["results"].rglob("manifest.json")).read_text())
    assert manifest["error"] == plan["error"]
    assert SECRET.encode() not in all_output(dirs["results"])


def test_a_fifo_swapped_in_after_the_check_ends_promptly_with_an_error_plan(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = dirs["inbox"] / "a.jsonl"
    path.write_text(chat_line("a-0", "hello") + "\n")

    def swap() -> None:
        path.unlink()
        os.mkfifo(path)

    swap_after_check(monkeypatch, swap)
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(operator(dirs, "a.jsonl").execute({"run_id": "r"})))  # type: ignore[arg-type]
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # stuck in open(): give it a writer so the thread can end, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=20)
        pytest.fail("prepare blocked opening a FIFO")
    assert "a.jsonl" in out["error"]
    assert "FIFO" in out["error"], out["error"]
    write(out)
    assert (dirs["results"] / "a" / "manifest.json").exists()


def test_the_skip_digest_and_the_prepare_pass_read_the_same_descriptor(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced after it was opened is not read again by name: the plan is of the opened file."""
    import openai_batch.operators as operators_module

    path = dirs["inbox"] / "a.jsonl"
    path.write_text(chat_line("a-0", "hello") + "\n")
    first = operator(dirs, "a.jsonl").execute({"run_id": "r"})  # type: ignore[arg-type]
    opened = operators_module.OpenAIBatchPrepareOperator._prepare

    def prepare(self: Any, *args: Any, **kwargs: Any) -> Any:
        path.unlink()  # after the open: the descriptor keeps the original content
        path.symlink_to(dirs["outside"] / "environ")
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(OpenAIBatchPrepareOperator, "_prepare", prepare)
    again = operator(dirs, "a.jsonl").execute({"run_id": "r"})  # type: ignore[arg-type]
    assert again["input_sha256"] == first["input_sha256"]
    assert again.get("error") is None
    assert SECRET.encode() not in all_output(dirs["results"])


def test_a_gz_is_done_by_its_stat_identity_without_being_read(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_batch.storage import InputFile

    path = dirs["inbox"] / "z.jsonl.gz"
    path.write_bytes(gzip.compress(b"nope\n"))  # no valid line: its manifest is written all the same
    write(operator(dirs, "z.jsonl.gz").execute({"run_id": "r"}), match="no valid request")  # type: ignore[arg-type]
    manifest = json.loads(next(dirs["results"].rglob("manifest.json")).read_text())
    assert manifest["input_stat"]["ino"] == path.stat().st_ino
    assert manifest["input_raw_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    def never(self: InputFile, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the input was read again")

    monkeypatch.setattr(InputFile, "content", never)
    again = operator(dirs, "z.jsonl.gz").execute({"run_id": "r"})  # type: ignore[arg-type]
    assert again["skipped"] is True
    assert again["input_sha256"] == manifest["input_sha256"]


def test_a_touched_gz_is_done_by_its_content_digest(dirs: dict[str, Path]) -> None:
    path = dirs["inbox"] / "z.jsonl.gz"
    path.write_bytes(gzip.compress(b"nope\n"))
    write(operator(dirs, "z.jsonl.gz").execute({"run_id": "r"}), match="no valid request")  # type: ignore[arg-type]
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # new stat identity, same content

    again = operator(dirs, "z.jsonl.gz").execute({"run_id": "r"})  # type: ignore[arg-type]

    assert again["skipped"] is True
    assert again["input_sha256"] == hashlib.sha256(b"nope\n").hexdigest()


def test_a_gz_that_expands_past_the_cap_gets_an_error_plan(dirs: dict[str, Path]) -> None:
    path = dirs["inbox"] / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress((chat_line("b-0", "x" * 5000) + "\n").encode() * 50))
    op = operator(dirs, "bomb.jsonl.gz")
    op.max_input_bytes = 100_000

    plan = op.execute({"run_id": "r"})  # type: ignore[arg-type]

    assert plan["shards"] == []
    assert "bomb.jsonl.gz" in plan["error"]
    assert "100,000 bytes" in plan["error"]
    assert "openai_batch_max_input_bytes" in plan["error"]
    assert operator(dirs, "bomb.jsonl.gz").execute({"run_id": "r"}).get("error") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("swap", "said"),
    [
        pytest.param(lambda p: p.unlink(), "it is gone", id="removed"),
        pytest.param(lambda p: (p.unlink(), p.mkdir()), "is a folder", id="folder"),
    ],
)
def test_a_file_gone_or_turned_into_a_folder_after_the_check_gets_an_error_plan(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], Any], said: str
) -> None:
    path = dirs["inbox"] / "a.jsonl"
    path.write_text(chat_line("a-0", "hello") + "\n")
    swap_after_check(monkeypatch, lambda: swap(path))

    plan = operator(dirs, "a.jsonl").execute({"run_id": "r"})  # type: ignore[arg-type]

    assert said in plan["error"], plan["error"]
    assert plan["error"].startswith("a.jsonl: cannot be read")
    write(plan)
    assert json.loads((dirs["results"] / "a" / "manifest.json").read_text())["error"] == plan["error"]
