from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from openai_batch import prepare as prepare_module
from openai_batch.layout import ORDER_LINES_FILE
from openai_batch.limits import DEFAULT_LIMITS, BatchLimits
from openai_batch.prepare import (
    NoValidRequestsError,
    PrepareResult,
    default_id_prefix,
    prepare_requests,
)
from openai_batch.results import read_order_lines

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def chat_body(text: str = "hi", model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def full(custom_id: str, body: dict[str, Any] | None = None, url: str = CHAT, **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body or chat_body(), **extra}


def jl(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


def run(data: bytes, tmp_path: Path, name: str = "data/inbox/a.jsonl", **kwargs: Any) -> PrepareResult:
    return prepare_requests([data], source_name=name, work_dir=tmp_path / "work", **kwargs)


def read_jsonl(path: str | Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def shard_lines(result: PrepareResult) -> list[dict[str, Any]]:
    return [line for shard in result.shards for line in read_jsonl(shard.path)]


# --- rejects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b'{"model": "gpt-4o", "messages": [', "invalid JSON", id="invalid-json"),
        pytest.param(b'{"model": NaN, "messages": []}', "invalid JSON", id="nan-constant"),
        pytest.param(b"[1, 2]", "expected a JSON object, got an array", id="array"),
        pytest.param(b'"text"', "expected a JSON object, got a string", id="string"),
        pytest.param(b'{"model": "gpt-4o", "messages": "\xff\xfe"}', "not valid UTF-8", id="bad-utf8"),
        pytest.param(
            jl({"method": "POST", "url": CHAT, "body": chat_body()}), "custom_id is missing", id="no-id"
        ),
        pytest.param(jl(full("")), "custom_id must be a non-empty string", id="empty-id"),
        pytest.param(jl(full(7)), "custom_id must be a non-empty string", id="int-id"),  # type: ignore[arg-type]
        pytest.param(jl({"custom_id": "a", "url": CHAT}), "body is missing", id="no-body"),
        pytest.param(jl(full("a", body=[1])), "body must be a JSON object", id="body-not-object"),  # type: ignore[arg-type]
        pytest.param(jl(full("a", url="/v1/images")), 'unsupported url "/v1/images"', id="bad-url"),
        pytest.param(jl(full("a", method="GET")), 'method must be POST, got "GET"', id="get-method"),
        pytest.param(
            jl({"messages": [{"role": "user", "content": "x"}]}), "body.model is missing", id="no-model"
        ),
        pytest.param(
            jl({"model": "", "messages": [1]}), "body.model must be a non-empty string", id="empty-model"
        ),
        pytest.param(jl({"model": "gpt-4o"}), "body.messages is missing", id="no-messages"),
        pytest.param(
            jl({"model": "gpt-4o", "messages": []}), "body.messages must be a non-empty list", id="empty-msgs"
        ),
        pytest.param(jl({**chat_body(), "stream": True}), "body.stream is true", id="stream"),
        pytest.param(
            jl(full("a", body={"model": "text-embedding-3-small"}, url=EMB)),
            "body.input is missing",
            id="emb-no-input",
        ),
        pytest.param(
            jl(full("a", body={"model": "text-embedding-3-small", "input": []}, url=EMB)),
            "body.input must be a non-empty",
            id="emb-empty-input",
        ),
        pytest.param(
            jl(full("a", body={"model": "m"}, url="/v1/moderations")), "body.input is missing", id="mod"
        ),
        pytest.param(
            jl(full("a", body={"model": "m"}, url="/v1/completions")), "body.prompt is missing", id="compl"
        ),
        pytest.param(
            jl(full("a", body={"model": "m"}, url="/v1/responses")), "body.input is missing", id="resp"
        ),
        pytest.param(
            jl(full("a", body={"model": "text-embedding-3-small", "input": ["x"] * 4}, url=EMB)),
            "body.input has 4 inputs, above the limit of 3",
            id="emb-too-many-inputs",
        ),
        pytest.param(jl(chat_body("x" * 600)), "request is", id="too-large"),
    ],
)
def test_reject_reasons(tmp_path: Path, line: bytes, reason: str) -> None:
    limits = BatchLimits(max_request_bytes=500, max_embedding_inputs=3, max_bytes=10_000)
    data = jl(full("ok-1")) + line.rstrip(b"\n") + b"\n"
    result = run(data, tmp_path, limits=limits)
    assert (result.lines, result.valid, result.rejected) == (2, 1, 1)
    [reject] = read_jsonl(result.rejects_path)
    assert reject["line"] == 2
    assert reason in reject["reason"]
    assert not reject["reason"].startswith("line")
    assert reject["raw"] == line.rstrip(b"\n").decode("utf-8", "replace")


def test_duplicate_custom_id_first_wins(tmp_path: Path) -> None:
    data = jl(full("a-1", chat_body("first")), full("b"), full("a-1", chat_body("second")))
    result = run(data, tmp_path)
    assert [line["body"]["messages"][0]["content"] for line in shard_lines(result)] == ["first", "hi"]
    [reject] = read_jsonl(result.rejects_path)
    assert reject == {
        "line": 3,
        "reason": "duplicate custom_id 'a-1' (first seen on line 1)",
        "raw": json.dumps(full("a-1", chat_body("second"))),
    }


def test_duplicate_across_flush_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "_FLUSH_LINES", 3)
    ids = ["a", "b", "c", "d", "a", "e", "f", "c", "g", "g"]
    result = run(jl(*(full(i) for i in ids)), tmp_path)
    assert list(map(json.loads, Path(result.order_path).read_text().splitlines())) == list("abcdefg")
    assert [(r["line"], r["reason"]) for r in read_jsonl(result.rejects_path)] == [
        (5, "duplicate custom_id 'a' (first seen on line 1)"),
        (8, "duplicate custom_id 'c' (first seen on line 3)"),
        (10, "duplicate custom_id 'g' (first seen on line 9)"),
    ]
    assert not (tmp_path / "work" / ".seen.sqlite").exists()
    # Each kept id's input line, across chunks, for results.jsonl's "line".
    lines_path = Path(result.order_path).with_name(ORDER_LINES_FILE)
    assert list(read_order_lines(lines_path)) == [1, 2, 3, 4, 6, 7, 9]


def test_every_kept_request_keeps_its_input_line_number(tmp_path: Path) -> None:
    """Blank lines, rejects, bare bodies and a second shard: the line numbers follow the input."""
    data = b"\n".join(
        [
            json.dumps(full("a")).encode(),
            b"",
            b"not json",
            json.dumps(chat_body("bare")).encode(),
            json.dumps(full("e", chat_body(model="gpt-4.1"))).encode(),
            b"   ",
            json.dumps(full("g")).encode(),
        ]
    )
    result = run(data + b"\n", tmp_path)
    ids = list(map(json.loads, Path(result.order_path).read_text().splitlines()))
    lines = list(read_order_lines(Path(result.order_path).with_name(ORDER_LINES_FILE)))
    assert len(ids) == len(lines) == 4
    assert dict(zip(ids, lines, strict=True))["a"] == 1
    assert lines == [1, 4, 5, 7]


def test_generated_id_clash_with_explicit_id_is_rejected(tmp_path: Path) -> None:
    data = jl(full("p-2"), chat_body(), full("p-2x"))
    result = run(data, tmp_path, id_prefix="p")
    [reject] = read_jsonl(result.rejects_path)
    assert reject["line"] == 2
    assert reject["reason"] == "generated custom_id 'p-2' is already used on line 1"


# --- encoding and line handling --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines", "valid", "first_line"),
    [
        pytest.param(b"\xef\xbb\xbf" + jl(chat_body()), 1, 1, 1, id="bom"),
        pytest.param(jl(chat_body()).replace(b"\n", b"\r\n") * 2, 2, 2, 1, id="crlf"),
        pytest.param(b"\n  \n\t\r\n" + jl(chat_body()) + b"\n\n", 1, 1, 4, id="blank-lines"),
        pytest.param(b"\xef\xbb\xbf\n" + jl(chat_body()), 1, 1, 2, id="bom-on-blank-line"),
        pytest.param(jl(chat_body()).rstrip(b"\n"), 1, 1, 1, id="no-final-newline"),
    ],
)
def test_line_handling(tmp_path: Path, data: bytes, lines: int, valid: int, first_line: int) -> None:
    result = run(data, tmp_path, id_prefix="p")
    assert (result.lines, result.valid, result.rejected) == (lines, valid, 0)
    assert result.input_sha256 == hashlib.sha256(data).hexdigest()
    raw = Path(result.shards[0].path).read_bytes()
    assert b"\r" not in raw
    assert not raw.startswith(b"\xef\xbb\xbf")
    assert raw.endswith(b"}\n")
    assert shard_lines(result)[0]["custom_id"] == f"p-{first_line}"


def test_bom_only_stripped_at_start(tmp_path: Path) -> None:
    result = run(jl(chat_body()) + b"\xef\xbb\xbf" + jl(chat_body()), tmp_path)
    assert result.valid == 1
    assert read_jsonl(result.rejects_path)[0]["line"] == 2


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([jl(full("a"), full("b"))], id="one-chunk"),
        pytest.param([bytes([b]) for b in jl(full("a"), full("b"))], id="byte-chunks"),
        pytest.param([jl(full("a")), jl(full("b"))], id="line-chunks"),
    ],
)
def test_source_chunking(tmp_path: Path, chunks: list[bytes]) -> None:
    result = prepare_requests(chunks, source_name="x.jsonl", work_dir=tmp_path)
    assert [line["custom_id"] for line in shard_lines(result)] == ["a", "b"]


def test_binary_file_source(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jl(full("a"), chat_body()))
    with path.open("rb") as source:
        result = prepare_requests(source, source_name=str(path), work_dir=tmp_path / "w")
    assert result.valid == 2


def test_full_line_unchanged_bytes_pass_through(tmp_path: Path) -> None:
    line = (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
        + json.dumps(chat_body("caf\u00e9 \u2603")).encode()
        + b"}"
    )
    result = run(line + b"\n", tmp_path)
    assert Path(result.shards[0].path).read_bytes() == line + b"\n"


def test_short_line_is_wrapped(tmp_path: Path) -> None:
    result = run(jl(chat_body("q")), tmp_path, id_prefix="p")
    assert shard_lines(result) == [
        {"custom_id": "p-1", "method": "POST", "url": CHAT, "body": chat_body("q")}
    ]


def test_full_line_defaults_method_and_url(tmp_path: Path) -> None:
    result = run(jl({"custom_id": "a", "body": {"model": "m", "input": "x"}}), tmp_path, endpoint=EMB)
    assert shard_lines(result) == [
        {"custom_id": "a", "method": "POST", "url": EMB, "body": {"model": "m", "input": "x"}}
    ]


# --- ids, model, endpoint --------------------------------------------------------------------


def test_ids_are_deterministic_and_files_do_not_clash(tmp_path: Path) -> None:
    data = jl(chat_body("a"), chat_body("b"))
    first = [line["custom_id"] for line in shard_lines(run(data, tmp_path / "1", name="inbox/x.jsonl"))]
    again = [line["custom_id"] for line in shard_lines(run(data, tmp_path / "2", name="inbox/x.jsonl"))]
    other = [
        line["custom_id"] for line in shard_lines(run(data, tmp_path / "3", name="inbox/2024-01-02/x.jsonl"))
    ]
    assert first == again
    assert len(set(first)) == 2
    assert not set(first) & set(other)
    assert first[0] == f"{default_id_prefix('inbox/x.jsonl')}-1"
    assert first[0].startswith("x-")


@pytest.mark.parametrize(
    ("name", "prefix_start"),
    [
        pytest.param("data/inbox/reviews.jsonl", "reviews-", id="plain"),
        pytest.param("s3://bucket/My File (1).jsonl", "My-File-1-", id="spaces"),
        pytest.param("/tmp/.jsonl", "line-", id="empty-stem"),
    ],
)
def test_default_id_prefix(name: str, prefix_start: str) -> None:
    prefix = default_id_prefix(name)
    assert prefix.startswith(prefix_start)
    assert len(prefix.rsplit("-", 1)[1]) == 8


def test_model_override(tmp_path: Path) -> None:
    data = jl(chat_body(model="gpt-4o"), full("a", chat_body(model="gpt-4.1")), full("b", {"messages": [1]}))
    result = run(data, tmp_path, model="gpt-4o-mini")
    assert {line["body"]["model"] for line in shard_lines(result)} == {"gpt-4o-mini"}
    assert [(s.model, s.requests) for s in result.shards] == [("gpt-4o-mini", 3)]


def test_endpoint_from_url_and_param(tmp_path: Path) -> None:
    emb = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    data = jl(emb, full("c", chat_body()), full("e", emb, url=EMB), {"custom_id": "f", "body": emb})
    result = run(data, tmp_path, endpoint=EMB)
    assert [(s.index, s.endpoint, s.model, s.requests, s.embedding_inputs) for s in result.shards] == [
        (0, EMB, "text-embedding-3-small", 3, 6),
        (1, CHAT, "gpt-4o-mini", 1, 0),
    ]
    for shard in result.shards:
        assert {line["url"] for line in read_jsonl(shard.path)} == {shard.endpoint}


def test_unsupported_endpoint_param(tmp_path: Path) -> None:
    with pytest.raises(prepare_module.PrepareError, match="unsupported endpoint"):
        run(jl(chat_body()), tmp_path, endpoint="/v1/audio/speech")


# --- splitting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        pytest.param(4, [4], id="below"),
        pytest.param(5, [5], id="exactly-n"),
        pytest.param(6, [5, 1], id="n-plus-1"),
        pytest.param(11, [5, 5, 1], id="two-full"),
    ],
)
def test_split_on_request_count(tmp_path: Path, count: int, sizes: list[int]) -> None:
    result = run(jl(*(full(f"r{i}") for i in range(count))), tmp_path, limits=BatchLimits(max_requests=5))
    assert [s.requests for s in result.shards] == sizes
    assert [s.index for s in result.shards] == list(range(len(sizes)))
    assert [Path(s.path).name for s in result.shards] == [f"shard-{i:05d}.jsonl" for i in range(len(sizes))]
    assert [line["custom_id"] for line in shard_lines(result)] == [f"r{i}" for i in range(count)]


@pytest.mark.parametrize(
    ("extra", "sizes"),
    [pytest.param(0, [3], id="exactly-max-bytes"), pytest.param(-1, [2, 1], id="one-byte-less")],
)
def test_split_on_bytes(tmp_path: Path, extra: int, sizes: list[int]) -> None:
    data = jl(*(full(f"r{i}") for i in range(3)))  # equal-length lines
    limits = BatchLimits(max_bytes=len(data) + extra, max_request_bytes=len(data) // 3)
    result = run(data, tmp_path, limits=limits)
    assert [s.requests for s in result.shards] == sizes
    for shard in result.shards:
        raw = Path(shard.path).read_bytes()
        assert shard.bytes == len(raw) <= limits.max_bytes
        assert shard.sha256 == hashlib.sha256(raw).hexdigest()


def test_split_on_embedding_inputs(tmp_path: Path) -> None:
    inputs: list[Any] = [["x"] * 3, ["x"] * 2, "one", [[1, 2], [3], [4], [5]], [1, 2, 3], "x"]
    bodies = [{"model": "text-embedding-3-small", "input": i} for i in inputs]
    result = run(jl(*bodies), tmp_path, endpoint=EMB, limits=BatchLimits(max_embedding_inputs=5))
    assert [(s.requests, s.embedding_inputs) for s in result.shards] == [(2, 5), (2, 5), (2, 2)]


def test_one_endpoint_and_model_per_shard_and_numbering(tmp_path: Path) -> None:
    models = ["a", "b", "a", "c", "a", "b", "a"]
    data = jl(*(full(f"r{i}", chat_body(model=m)) for i, m in enumerate(models)))
    result = run(data, tmp_path, limits=BatchLimits(max_requests=2))
    # numbered in the order shards are opened
    assert [(s.index, s.model, s.requests) for s in result.shards] == [
        (0, "a", 2),
        (1, "b", 2),
        (2, "c", 1),
        (3, "a", 2),
    ]
    for shard in result.shards:
        assert {line["body"]["model"] for line in read_jsonl(shard.path)} == {shard.model}
    again = run(data, tmp_path / "again", limits=BatchLimits(max_requests=2))
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in result.shards]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "sizes"), [(50_000, [50_000]), (50_001, [50_000, 1])], ids=["50000", "50001"]
)
def test_default_limits_split(tmp_path: Path, count: int, sizes: list[int]) -> None:
    line = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}\n'
    result = prepare_requests(
        iter([line] * count), source_name="big.jsonl", work_dir=tmp_path, limits=DEFAULT_LIMITS
    )
    assert [s.requests for s in result.shards] == sizes
    assert result.valid == count


def test_stale_shards_are_removed(tmp_path: Path) -> None:
    run(jl(*(full(f"r{i}") for i in range(3))), tmp_path, limits=BatchLimits(max_requests=1))
    result = run(jl(full("a")), tmp_path)
    # The stale shards' digests go with them.
    names = sorted(p.name for p in (tmp_path / "work").glob("shard-*"))
    assert names == ["shard-00000.digests.json", "shard-00000.jsonl"]
    assert len(result.shards) == 1


# --- result ----------------------------------------------------------------------------------


def test_order_file_and_counts_conserve_lines(tmp_path: Path) -> None:
    data = jl(full("z"), b"oops", chat_body("q"), full("z"), full('\u00e9\n"x'))
    result = run(data, tmp_path, id_prefix="p")
    order = [json.loads(line) for line in Path(result.order_path).read_text().splitlines()]
    assert order == ["z", "p-3", '\u00e9\n"x']
    assert result.lines == result.valid + result.rejected == 5
    assert sorted([r["line"] for r in read_jsonl(result.rejects_path)] + [1, 3, 5]) == [1, 2, 3, 4, 5]


def test_tokens_cost_and_round_trip(tmp_path: Path) -> None:
    result = run(jl(chat_body("x" * 400, model="gpt-4o-mini-2024-07-18")), tmp_path)
    assert result.estimated_input_tokens == result.shards[0].estimated_input_tokens > 100
    assert result.estimated_cost_usd == pytest.approx(
        result.estimated_input_tokens * 0.15 / 1e6 * 0.5, abs=1e-6
    )
    restored = PrepareResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert restored == result


def test_cost_unknown_model_is_none(tmp_path: Path) -> None:
    assert run(jl(chat_body(model="my-local-llama")), tmp_path).estimated_cost_usd is None


def test_moderations_without_model_are_free(tmp_path: Path) -> None:
    result = run(jl({"input": "hello"}), tmp_path, endpoint="/v1/moderations")
    assert [(s.endpoint, s.model) for s in result.shards] == [("/v1/moderations", "")]
    assert result.estimated_cost_usd == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            b"x\n[]\n\n{}\n",
            "data/inbox/a.jsonl: no valid request in 3 lines (3 rejected; first: line 1: invalid JSON",
            id="all-bad",
        ),
        pytest.param(b"\n \n", "data/inbox/a.jsonl: no request found", id="blank"),
        pytest.param(b"", "data/inbox/a.jsonl: no request found", id="empty"),
    ],
)
def test_no_valid_requests_names_file(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(NoValidRequestsError) as info:
        run(data, tmp_path)
    assert str(info.value).startswith(message)
    assert len(read_jsonl(tmp_path / "work" / "rejects.jsonl")) == info.value.rejected
