"""The request record: claims across owners, answers, giving up, and the compare-and-swap takeover."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from openai_batch import records
from openai_batch.records import SCHEMA_VERSION, RequestRecord, record_for

if TYPE_CHECKING:
    from pathlib import Path


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _rows(*names: str, shard: int = 0) -> list[tuple[str, str, int]]:
    return [(_digest(n), n, shard) for n in names]


def test_first_owner_keeps_its_claims_and_a_second_owner_sees_them(tmp_path: Path) -> None:
    record = RequestRecord(tmp_path / "requests.sqlite")
    assert record.claim("owner-a", _rows("r-0", "r-1", "r-2")) == []
    others = record.claim("owner-b", _rows("r-0", "r-1", "r-2", "r-3", shard=1))
    assert sorted(e.custom_id for e in others) == ["r-0", "r-1", "r-2"]
    assert {(e.owner, e.shard, e.state) for e in others} == {("owner-a", 0, "claimed")}
    # The same owner preparing again (a retry, a clear) keeps its own claims: nothing borrowed.
    assert record.claim("owner-a", _rows("r-0", "r-1", "r-2")) == []
    assert record.entries([_digest("r-3")])[_digest("r-3")].owner == "owner-b"


def test_force_takes_every_request_over(tmp_path: Path) -> None:
    record = RequestRecord(tmp_path / "requests.sqlite")
    record.claim("owner-a", _rows("r-0", "r-1"))
    record.mark_sent("owner-a", [_digest("r-0"), _digest("r-1")], "batch_a")
    assert record.claim("owner-f", _rows("r-0", "r-1"), force=True) == []
    assert {e.owner for e in record.entries([_digest("r-0"), _digest("r-1")]).values()} == {"owner-f"}


def test_answers_are_final_and_unanswered_requests_are_given_up(tmp_path: Path) -> None:
    record = RequestRecord(tmp_path / "requests.sqlite")
    record.claim("owner-a", _rows("r-0", "r-1", "r-2"))
    digests = [_digest(n) for n in ("r-0", "r-1", "r-2")]
    assert record.mark_sent("owner-a", digests, "batch_a") == 3
    assert record.mark_sent("owner-b", digests, "batch_b") == 0  # not its requests
    record.mark_final("owner-a", [digests[0]], "succeeded", "batch_a")
    record.mark_final("owner-a", [digests[1]], "final_failed", "batch_a")
    assert record.mark_open("owner-a", digests) == 1  # only r-2 had no final answer
    states = {e.custom_id: e.state for e in record.entries(digests).values()}
    assert states == {"r-0": "succeeded", "r-1": "final_failed", "r-2": "open"}
    # A given-up request goes to the next owner that claims it; answered ones stay borrowed.
    others = record.claim("owner-b", _rows("r-0", "r-1", "r-2"))
    assert sorted(e.custom_id for e in others) == ["r-0", "r-1"]


def test_stale_claims_are_takeable_and_fresh_ones_are_not(tmp_path: Path) -> None:
    record = RequestRecord(tmp_path / "requests.sqlite")
    record.claim("owner-a", _rows("r-0"))
    entry = record.entries([_digest("r-0")])[_digest("r-0")]
    assert not entry.takeable(entry.updated + 10, stale_after=3600)
    assert entry.takeable(entry.updated + 3601, stale_after=3600)
    record.mark_sent("owner-a", [_digest("r-0")], "batch_a")
    sent = record.entries([_digest("r-0")])[_digest("r-0")]
    assert not sent.takeable(sent.updated + 10**6, stale_after=3600)  # in a batch: waited for


def test_two_borrowers_racing_for_a_given_up_request_only_one_takes_it(tmp_path: Path) -> None:
    """Both read the request as given up; between the read and the swap the other one takes it."""
    record = RequestRecord(tmp_path / "requests.sqlite")
    record.claim("owner-a", _rows("r-0", "r-1"))
    digests = [_digest("r-0"), _digest("r-1")]
    record.mark_open("owner-a", digests)
    seen_b = list(record.entries(digests).values())  # borrower b reads ...
    seen_c = list(record.entries(digests).values())  # ... and so does borrower c
    assert sorted(RequestRecord(record.path).take_over("borrower-c", 7, seen_c)) == sorted(digests)
    assert record.take_over("borrower-b", 3, seen_b) == []  # its view is stale: nothing swapped
    assert {(e.owner, e.shard) for e in record.entries(digests).values()} == {("borrower-c", 7)}


def test_a_write_cut_short_rolls_back_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    record = RequestRecord(path)
    record.claim("owner-a", _rows("r-0"))
    # A process dies (no clean exit) inside a write transaction: its change is half done on disk.
    script = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "db.execute(\"INSERT INTO owners (id, name) VALUES (99, 'torn')\")\n"
        "db.execute(\"UPDATE requests SET owner = 99, state = 'sent'\")\n"
        "db.execute(\"INSERT INTO requests VALUES (x'00', 'half', 99, 0, 'claimed', NULL, 0)\")\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False, timeout=60)
    assert done.returncode == 9
    reopened = RequestRecord(path)
    entries = reopened.entries([_digest("r-0"), "00"])
    assert list(entries) == [_digest("r-0")]
    assert (entries[_digest("r-0")].owner, entries[_digest("r-0")].state) == ("owner-a", "claimed")
    assert reopened.claim("owner-b", _rows("r-0"))[0].owner == "owner-a"


def test_no_record_for_object_storage_or_none(tmp_path: Path) -> None:
    assert record_for("s3://bucket/ledger") is None
    assert record_for(None) is None
    found = record_for(str(tmp_path))
    assert found is not None
    assert found.path == tmp_path / "requests.sqlite"


def test_final_state_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a final state"):
        RequestRecord(tmp_path / "r.sqlite").mark_final("a", [_digest("x")], "sent", "b")


#: The first layout of the record, as deployments wrote it before owners and batches were numbered.
_FIRST_LAYOUT = """CREATE TABLE requests (
    digest BLOB PRIMARY KEY, custom_id TEXT NOT NULL, owner TEXT NOT NULL, shard INTEGER NOT NULL,
    state TEXT NOT NULL, batch_id TEXT, updated REAL NOT NULL) WITHOUT ROWID"""


def _first_layout_record(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(_FIRST_LAYOUT)
    db.executemany(
        "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (bytes.fromhex(_digest("r-0")), "r-0", "owner-a", 0, "sent", "batch_a", 1.5),
            (bytes.fromhex(_digest("r-1")), "r-1", "owner-a", 1, "claimed", None, 2.5),
            (bytes.fromhex(_digest("r-2")), "r-2", "owner-b", 0, "succeeded", "batch_b", 3.5),
        ],
    )
    db.commit()
    db.close()


def test_a_record_of_the_first_layout_is_migrated_on_first_open(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    _first_layout_record(path)
    record = RequestRecord(path)
    digests = [_digest(n) for n in ("r-0", "r-1", "r-2")]
    found = {
        e.custom_id: (e.owner, e.shard, e.state, e.batch_id, e.updated)
        for e in record.entries(digests).values()
    }
    assert found == {
        "r-0": ("owner-a", 0, "sent", "batch_a", 1.5),
        "r-1": ("owner-a", 1, "claimed", None, 2.5),
        "r-2": ("owner-b", 0, "succeeded", "batch_b", 3.5),
    }
    db = sqlite3.connect(path)
    tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    assert (tables, version) == (["batches", "owners", "requests"], SCHEMA_VERSION)
    # The migrated record keeps working: the owner's answers land, others still borrow.
    assert record.batch_owner("batch_b") == "owner-b"
    assert record.mark_final("owner-a", digests[:2], "succeeded", "batch_a") == 2
    assert sorted(e.owner for e in record.claim("owner-c", _rows("r-0", "r-2"))) == ["owner-a", "owner-b"]


def test_an_old_record_opened_by_two_processes_at_once_is_migrated_once(tmp_path: Path) -> None:
    """One opener reads the old layout's version; before it takes the write lock the other migrates."""
    path = tmp_path / "requests.sqlite"
    _first_layout_record(path)
    late = sqlite3.connect(path, isolation_level=None)
    assert late.execute("PRAGMA user_version").fetchone()[0] == 0  # it saw the old layout ...
    RequestRecord(path).entries([_digest("r-0")])  # ... and the other opener migrated meanwhile
    records._upgrade(late)  # the late one goes on: it must find the record migrated, change nothing
    late.close()
    entry = RequestRecord(path).entries([_digest("r-2")])[_digest("r-2")]
    assert (entry.owner, entry.state, entry.batch_id) == ("owner-b", "succeeded", "batch_b")


def test_a_record_of_an_unknown_later_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    RequestRecord(path).claim("owner-a", _rows("r-0"))
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match=f"layout {SCHEMA_VERSION + 1}"):
        RequestRecord(path).entries([_digest("r-0")])


def test_a_process_of_the_first_layout_cannot_claim_in_a_migrated_record(tmp_path: Path) -> None:
    """An earlier version still running during an upgrade fails its claim and writes nothing."""
    path = tmp_path / "requests.sqlite"
    RequestRecord(path).claim("owner-new", _rows("r-0"))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    # The first layout's claim: its insert names the owner in full ...
    inserted = db.executemany(
        "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, 'claimed', NULL, ?)",
        [(bytes.fromhex(_digest(n)), n, "owner-old", 0, 1.0) for n in ("r-0", "r-1")],
    ).rowcount
    # ... and, the rows not all new, it then takes over abandoned ones by a column gone since.
    with pytest.raises(sqlite3.OperationalError, match="batch_id"):
        db.execute(
            "UPDATE requests SET owner = ?, shard = ?, state = 'claimed', batch_id = NULL, updated = ?"
            " WHERE digest = ? AND state = 'open'",
            ("owner-old", 0, 1.0, bytes.fromhex(_digest("r-1"))),
        )
    db.execute("ROLLBACK")
    db.close()
    assert inserted == 0
    found = RequestRecord(path).entries([_digest("r-0"), _digest("r-1")])
    assert [(e.custom_id, e.owner) for e in found.values()] == [("r-0", "owner-new")]
