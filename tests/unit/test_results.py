from __future__ import annotations

import io
import json
import random
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from openai_batch import results
from openai_batch.results import ResultStore, classify_line, is_retryable, read_order

if TYPE_CHECKING:
    from pathlib import Path


def ok(custom_id: str, usage: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "r", "body": {"usage": usage or {}, **body}},
        "error": None,
    }


def err(custom_id: str, code: str, message: str = "m") -> dict[str, Any]:
    return {"id": "x", "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def lines(*objs: dict[str, Any]) -> list[bytes]:
    return [json.dumps(o).encode() + b"\n" for o in objs]


@pytest.mark.parametrize(
    ("obj", "status", "response", "error"),
    [
        pytest.param(ok("a", id="c1"), "succeeded", {"usage": {}, "id": "c1"}, None, id="200"),
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 201, "body": {"x": 1}}},
            "succeeded",
            {"x": 1},
            None,
            id="201-no-error-key",
        ),
        pytest.param(
            {
                "custom_id": "a",
                "response": {
                    "status_code": 400,
                    "body": {
                        "error": {"message": "bad", "type": "invalid_request_error", "code": "invalid_value"}
                    },
                },
                "error": None,
            },
            "failed",
            {"error": {"message": "bad", "type": "invalid_request_error", "code": "invalid_value"}},
            {"code": "invalid_value", "message": "bad"},
            id="400-body-error-top-error-null",
        ),
        pytest.param(
            {
                "custom_id": "a",
                "response": {"status_code": 500, "body": {"error": {"message": "boom", "code": None}}},
            },
            "failed",
            {"error": {"message": "boom", "code": None}},
            {"code": "http_500", "message": "boom"},
            id="500-no-code",
        ),
        pytest.param(
            {
                "custom_id": "a",
                "response": {"status_code": 429, "body": {"error": {"type": "tokens", "message": "slow"}}},
            },
            "failed",
            {"error": {"type": "tokens", "message": "slow"}},
            {"code": "tokens", "message": "slow"},
            id="429-type-as-code",
        ),
        pytest.param(
            {"custom_id": "a", "response": {"status_code": 404, "body": None}},
            "failed",
            None,
            {"code": "http_404", "message": "request failed with HTTP status 404"},
            id="404-no-body",
        ),
        pytest.param(
            err("a", "batch_expired", "expired"),
            "expired",
            None,
            {"code": "batch_expired", "message": "expired"},
            id="expired",
        ),
        pytest.param(
            err("a", "batch_cancelled"),
            "cancelled",
            None,
            {"code": "batch_cancelled", "message": "m"},
            id="cancel",
        ),
        pytest.param(
            err("a", "server_error"), "failed", None, {"code": "server_error", "message": "m"}, id="error"
        ),
        pytest.param(
            {"custom_id": "a", "response": None, "error": None},
            "failed",
            None,
            {"code": "invalid_result_line", "message": "result line has neither response nor error"},
            id="neither",
        ),
    ],
)
def test_classify_line(obj: dict[str, Any], status: str, response: Any, error: Any) -> None:
    assert classify_line(obj) == (status, response, error)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        pytest.param("expired", {"code": "batch_expired"}, True, id="expired"),
        pytest.param("cancelled", None, True, id="cancelled"),
        pytest.param("failed", {"code": "http_429"}, True, id="429"),
        pytest.param("failed", {"code": "http_503"}, True, id="503"),
        pytest.param("failed", {"code": "rate_limit_exceeded"}, True, id="rate-limit"),
        pytest.param("failed", {"code": "server_error"}, True, id="server-error"),
        pytest.param("failed", {"code": "invalid_value"}, False, id="client-error"),
        pytest.param("failed", {"code": "http_400"}, False, id="400"),
        pytest.param("failed", {"code": "insufficient_quota"}, False, id="quota"),
        pytest.param("failed", {"code": "missing_result"}, False, id="missing"),
        pytest.param("failed", None, False, id="no-error"),
        pytest.param("succeeded", None, False, id="succeeded"),
    ],
)
def test_is_retryable(status: str, error: dict[str, Any] | None, expected: bool) -> None:
    assert is_retryable(status, error) is expected


def test_merge_rounds_order_statuses_and_usage(tmp_path: Path) -> None:
    order = [f"id-{i}" for i in range(10)]
    chat_usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    resp_usage = {
        "input_tokens": 7,
        "output_tokens": 3,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens_details": {"reasoning_tokens": 1},
    }
    batch1_out = lines(ok("id-3", chat_usage), ok("id-0", chat_usage))
    batch1_err = lines(
        err("id-1", "batch_expired"),
        {
            "custom_id": "id-2",
            "response": {"status_code": 400, "body": {"error": {"code": "bad", "message": "no"}}},
        },
    )
    batch2_out = lines(ok("id-9", resp_usage), ok("id-5", {"prompt_tokens": 6, "total_tokens": 6}))
    batch2_err = lines(err("id-6", "batch_cancelled"), err("id-7", "server_error"))
    retry_out = lines(ok("id-1", chat_usage), ok("id-7", resp_usage))
    with ResultStore(tmp_path / "store.sqlite") as store:
        assert store.add_lines(batch2_out, batch_id="b2", round=0) == 2
        assert store.add_lines(batch1_err, batch_id="b1", round=0) == 2
        assert store.add_lines(batch1_out, batch_id="b1", round=0) == 2
        assert store.add_lines([b"\n"] + batch2_err, batch_id="b2", round=0) == 2
        store.mark_missing(["id-8"], status="failed", batch_id="b2", round=0, code="missing", message="gone")
        # The ids a next round resubmits: no outcome yet, or a retryable one.
        records = {i: store.get(i) for i in order}
        retry = [
            i
            for i, r in records.items()
            if r is None or (r.status != "succeeded" and is_retryable(r.status, r.error))
        ]
        assert retry == ["id-1", "id-4", "id-6", "id-7"]
        assert store.add_lines(retry_out, batch_id="b3", round=1) == 2
        # a missing mark of the same round never hides a real outcome
        store.mark_missing(
            ["id-1"], status="expired", batch_id="b3", round=1, code="batch_expired", message="x"
        )
        record = store.get("id-1")
        assert record is not None
        assert (record.status, record.batch_id, record.round) == ("succeeded", "b3", 1)
        assert store.get("nope") is None
        out = io.BytesIO()
        counts = store.write_results(order, out, iter(range(3, 3 + len(order))))
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["custom_id"] for r in rows] == order
    assert [r["line"] for r in rows] == list(range(3, 3 + len(order)))  # each id's input line
    assert all(list(r) == ["custom_id", "line", "status", "response", "error", "batch_id"] for r in rows)
    assert [(r["status"], r["batch_id"], (r["error"] or {}).get("code")) for r in rows] == [
        ("succeeded", "b1", None),
        ("succeeded", "b3", None),
        ("failed", "b1", "bad"),
        ("succeeded", "b1", None),
        ("failed", None, "missing_result"),
        ("succeeded", "b2", None),
        ("cancelled", "b2", "batch_cancelled"),
        ("succeeded", "b3", None),
        ("failed", "b2", "missing"),
        ("succeeded", "b2", None),
    ]
    assert rows[0]["response"] == {"usage": chat_usage}
    assert counts.to_dict() == {
        "succeeded": 6,
        "failed": 3,
        "expired": 0,
        "cancelled": 1,
        "total": 10,
        "usage": {
            "input_tokens": 10 * 3 + 7 * 2 + 6,
            "output_tokens": 5 * 3 + 3 * 2,
            "cached_tokens": 4 * 3 + 1 * 2,
            "reasoning_tokens": 2 * 3 + 1 * 2,
        },
        "reused": 0,
    }


def test_success_in_same_round_is_not_overwritten(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a")), batch_id="b1", round=0)
        store.add_lines(lines(err("a", "batch_expired")), batch_id="b1", round=0)
        store.add_lines(lines(err("b", "batch_expired")), batch_id="b1", round=0)
        store.add_lines(lines(ok("b")), batch_id="b1", round=0)
        assert [store.get(i).status for i in "ab"] == ["succeeded", "succeeded"]  # type: ignore[union-attr]


def test_store_reopens_existing_file(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a")), batch_id="b1", round=0)
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert len(store) == 1
        assert store.get("a").batch_id == "b1"  # type: ignore[union-attr]
        # Batches named before the reopen keep their number; new ones get their own.
        store.add_lines(lines(ok("b")), batch_id="b1", round=1)
        store.add_lines(lines(ok("c")), batch_id="b2", round=1)
        assert [store.get(i).batch_id for i in "abc"] == ["b1", "b1", "b2"]  # type: ignore[union-attr]


def test_add_lines_rejects_line_without_custom_id(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="no custom_id"):
        store.add_lines([b'{"response": null}'], batch_id="b1", round=0)


def test_unicode_and_many_chunks(tmp_path: Path) -> None:
    ids = [f"\u00e9-{i}" for i in range(2500)]
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(*(ok(i, text="\u2603 \ud800") for i in shuffled)), batch_id="b", round=0)
        out = io.BytesIO()
        counts = store.write_results(iter(ids), out)
    decoded = out.getvalue().decode("utf-8")
    assert [json.loads(line)["custom_id"] for line in decoded.splitlines()] == ids
    assert json.loads(decoded.splitlines()[0])["response"]["text"] == "\u2603 \ud800"
    assert counts.succeeded == counts.total == 2500


def test_read_order(tmp_path: Path) -> None:
    path = tmp_path / "order.txt"
    path.write_text('"a"\n"b\\nc"\n\n"\\u00e9"\n', encoding="utf-8")
    assert list(read_order(path)) == ["a", "b\nc", "\u00e9"]
    path.write_text("1\n")
    with pytest.raises(ValueError, match="not a custom_id"):
        list(read_order(path))


def test_writing_large_responses_holds_a_bounded_number_of_bytes(tmp_path: Path) -> None:
    """Image results are megabytes each: the writer must not hold a whole chunk of them."""
    import io
    import tracemalloc

    from openai_batch.results import ResultStore

    body = {"data": [{"b64_json": "A" * 1_000_000}]}
    lines = (
        json.dumps({"custom_id": f"img-{i}", "response": {"status_code": 200, "body": body}}).encode() + b"\n"
        for i in range(120)
    )
    with ResultStore(tmp_path / "store.sqlite") as store:
        store.add_lines(lines, batch_id="batch_1", round=0)
        out = io.BytesIO()
        sink = type("Sink", (), {"write": lambda self, data: out.truncate(0) or len(data)})()
        tracemalloc.start()
        counts = store.write_results((f"img-{i}" for i in range(120)), sink)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert counts.succeeded == 120
    assert peak < 40_000_000, f"peak {peak / 1e6:.0f} MB for 120 MB of responses"


def test_new_stores_get_the_page_size_and_an_older_store_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made with SQLite's default 4 KiB pages (as before) reopens and answers alike."""

    assert results._PAGE_BYTES == 16384

    def run(path: Path, made_with: int) -> tuple[bytes, int]:
        monkeypatch.setattr(results, "_PAGE_BYTES", made_with)
        with ResultStore(path) as store:
            store.add_lines(lines(ok("a"), err("b", "batch_expired")), batch_id="b1", round=0)
        monkeypatch.undo()  # reopened by the current code
        with ResultStore(path) as store:
            store.add_lines(lines(ok("b", text="x")), batch_id="b2", round=1)
            out = io.BytesIO()
            store.write_results(["a", "b", "c"], out)
        with sqlite3.connect(path) as db:
            return out.getvalue(), db.execute("PRAGMA page_size").fetchone()[0]

    new, new_page = run(tmp_path / "new.sqlite", results._PAGE_BYTES)
    assert new_page == 16384
    old, old_page = run(tmp_path / "old.sqlite", 4096)
    assert old_page == 4096
    assert old == new
    assert [json.loads(row)["status"] for row in new.splitlines()] == ["succeeded", "succeeded", "failed"]


def test_bodies_are_written_as_sent_and_a_reopened_store_keeps_them(tmp_path: Path) -> None:
    """A later round added after the store was closed and opened again: every body comes back exact."""
    first = b'{"custom_id": "a", "response": {"status_code": 200, "body": {"x" : [1, 2],  "t": "\\u00e9"}}}\n'
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines([first, *lines(err("b", "batch_expired"))], batch_id="b1", round=0)
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("b", text="\u2603")), batch_id="b2", round=1)
        out = io.BytesIO()
        counts = store.write_results(["a", "b"], out)
    rows = out.getvalue().splitlines()
    assert rows[0] == (
        b'{"custom_id":"a","line":null,"status":"succeeded","response":{"x" : [1, 2],  "t": "\\u00e9"},'
        b'"error":null,"batch_id":"b1"}'
    )
    assert json.loads(rows[1])["response"] == {"usage": {}, "text": "\u2603"}
    assert counts.succeeded == 2


def test_a_new_store_does_not_trust_a_bodies_file_left_behind(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a", text="old" * 100)), batch_id="b1", round=0)
    (tmp_path / "s.sqlite").unlink()
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a", text="new")), batch_id="b1", round=0)
        out = io.BytesIO()
        store.write_results(["a"], out)
    assert json.loads(out.getvalue())["response"]["text"] == "new"
    assert (tmp_path / "s.sqlite.bodies").stat().st_size < 300


def test_usage_counts_only_the_ids_asked_for(tmp_path: Path) -> None:
    """A line answering an id that is not in the order is not written, and its usage is not counted."""
    usage = {"prompt_tokens": 10, "completion_tokens": 1}
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a", usage), ok("stray", usage)), batch_id="b1", round=0)
        out = io.BytesIO()
        counts = store.write_results(["a", "b"], out)
    assert [json.loads(line)["custom_id"] for line in out.getvalue().splitlines()] == ["a", "b"]
    assert (counts.succeeded, counts.failed, counts.total) == (1, 1, 2)
    assert (counts.usage.input_tokens, counts.usage.output_tokens) == (10, 1)


def test_reused_results_are_counted_apart_and_written_as_they_were(tmp_path: Path) -> None:
    reused = b'{"custom_id":"a","status":"succeeded","response":{"k": 1},"error":null,"batch_id":"old"}\n'
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert store.add_final_lines([reused, b"\n"]) == 1
        store.add_lines(lines(ok("b", {"prompt_tokens": 3})), batch_id="b1", round=0)
        out = io.BytesIO()
        counts = store.write_results(["a", "b"], out)
    first = out.getvalue().splitlines()[0]
    assert first == (
        b'{"custom_id":"a","line":null,"status":"succeeded","response":{"k": 1},'
        b'"error":null,"batch_id":"old"}'
    )
    assert (counts.succeeded, counts.reused, counts.usage.input_tokens) == (2, 1, 3)


def test_a_body_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    line = b'{"custom_id": "a", "response": {"status_code": 200, "body": {"t": "\xff"}}}\n'
    with ResultStore(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="utf-8"):
        store.add_lines([line], batch_id="b1", round=0)


def test_ids_without_an_outcome_of_a_batch(tmp_path: Path) -> None:
    from openai_batch.results import request_ids

    ids = [f"id-{i}" for i in range(1200)]
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(*(ok(i) for i in ids[:1000] if i != "id-7")), batch_id="b1", round=0)
        store.add_lines(lines(ok("id-1100")), batch_id="b2", round=0)
        requests = [json.dumps({"custom_id": i, "body": {}}).encode() + b"\n" for i in ids]
        assert list(store.without_outcome_of(request_ids([*requests, b"\n"]), "b1")) == [
            "id-7",
            *ids[1000:],
        ]
        # A batch that left no line (expired or cancelled before any answer): every id lacks its outcome.
        assert list(store.without_outcome_of(["id-0", "id-5"], "b-silent")) == ["id-0", "id-5"]
    with pytest.raises(ValueError, match="custom_id"):
        list(request_ids([b'{"body": {}}\n']))


def test_a_store_whose_bodies_file_is_gone_does_not_open(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.add_lines(lines(ok("a")), batch_id="b1", round=0)
    (tmp_path / "s.sqlite.bodies").unlink()
    with pytest.raises(FileNotFoundError, match="bodies"):
        ResultStore(tmp_path / "s.sqlite")
