"""Which files a run packs, and how a pack's files are split into contents whose ids never collide."""

from __future__ import annotations

from typing import Any

from openai_batch.assets import event_extras
from openai_batch.packs import PACK_MAX_FILE_BYTES, assign_contents, group_files, is_pack, pack_key


def _file(key: str, size: int = 100) -> dict[str, Any]:
    return {"source": f"/in/{key}", "key": key, "root": "", "size": size, "mtime": 1.0}


def test_few_small_files_are_not_packed() -> None:
    files = [_file(f"f{n}.jsonl") for n in range(19)]
    assert group_files(files, pack_from=20) == files


def test_many_small_files_are_packed_and_big_ones_stay_alone() -> None:
    big = _file("big.jsonl", PACK_MAX_FILE_BYTES + 1)
    small = [_file(f"f{n:02d}.jsonl") for n in range(25)]
    sources = group_files([big, *small], pack_from=20, max_members=10)
    assert sources[0] == big
    packs = sources[1:]
    assert all(is_pack(p) for p in packs)
    assert not is_pack(big)
    assert [len(p["members"]) for p in packs] == [10, 10, 5]
    assert [m for p in packs for m in p["members"]] == small  # every file once, in order
    assert packs[0]["key"] == pack_key(small[:10])
    assert "10 files, f00.jsonl .. f09.jsonl" in packs[0]["key"]


def test_a_pack_is_closed_at_its_byte_limit() -> None:
    small = [_file(f"f{n}.jsonl", 400) for n in range(5)]
    packs = group_files(small, pack_from=2, max_bytes=1000)
    assert [len(p["members"]) for p in packs] == [2, 2, 1]


def test_a_file_of_unknown_size_is_never_packed() -> None:
    odd = {"source": "s3://b/x.jsonl", "key": "x.jsonl", "root": ""}
    small = [_file(f"f{n}.jsonl") for n in range(3)]
    sources = group_files([odd, *small], pack_from=3)
    assert sources[0] == odd
    assert [len(s["members"]) for s in sources[1:]] == [3]


def test_packing_off() -> None:
    small = [_file(f"f{n}.jsonl") for n in range(50)]
    assert group_files(small, pack_from=0) == small


def test_the_same_listing_gives_the_same_packs() -> None:
    small = [_file(f"f{n:03d}.jsonl") for n in range(120)]
    assert group_files(small, pack_from=20, max_members=50) == group_files(list(small), max_members=50)


def test_files_whose_ids_collide_join_different_contents() -> None:
    assert assign_contents([{"a", "b"}, {"c"}, {"a"}, {"b", "d"}, {"a", "e"}]) == [0, 0, 1, 1, 2]
    assert assign_contents([]) == []


def test_a_pack_event_counts_each_of_its_files() -> None:
    one = {"input": "a.jsonl", "counts": {"total": 1}}
    two = {"input": "b.jsonl", "counts": {"total": 2}}
    alone = {"input": "c.jsonl", "counts": {"total": 3}}
    events = [{"extra": {"files": [one, two]}}, {"extra": alone}, {"extra": {"files": "nope"}}]
    assert event_extras(events) == [one, two, alone]


def test_the_budget_counts_a_packs_contents_and_each_other_plan() -> None:
    from openai_batch.plans import contents

    alone = {"key": "big.jsonl", "shards": [{"index": 0}]}
    unit = {"key": "pack x", "state_dir": "/r/_packs/_state/x", "shards": [{"index": 0}]}
    pack = {"key": "pack x", "members": [{"key": "a.jsonl"}], "units": [unit], "shards": unit["shards"]}
    done = {**pack, "skipped": True}
    dry = {**pack, "dry_run": True}
    assert contents([alone, pack, done, dry]) == [alone, unit]  # type: ignore[list-item]


def test_a_run_given_more_files_than_it_takes_takes_those_not_done_first(tmp_path: Any) -> None:
    import os
    import time

    from openai_batch.arrivals import ARRIVALS_FILE, ArrivalRecord, FileStat
    from openai_batch.sensors import OpenAIBatchInputSensor

    listed = []
    for n in range(5):
        path = tmp_path / f"f{n}.jsonl"
        path.write_text("{}\n")
        st = os.stat(path)
        listed.append({"source": str(path), "key": path.name, "root": "", "size": st.st_size, "mtime": 1.0})
    record = ArrivalRecord(tmp_path / "ledger" / ARRIVALS_FILE)
    stats = {f["key"]: os.stat(f["source"]) for f in listed}
    done = [
        FileStat(f["source"], stats[f["key"]].st_size, stats[f["key"]].st_mtime_ns, stats[f["key"]].st_ino)
        for f in listed[:3]
    ]
    record.mark(done, "done", time.time())
    (tmp_path / "f1.jsonl").write_text('{"changed": 1}\n')  # done for its earlier content only
    sensor = OpenAIBatchInputSensor(task_id="t", inbox=str(tmp_path), ledger_dir=str(tmp_path / "ledger"))
    ordered = sensor._not_done_first(listed)
    assert [f["key"] for f in ordered] == ["f1.jsonl", "f3.jsonl", "f4.jsonl", "f0.jsonl", "f2.jsonl"]
