"""Input keys, result folders and roots: one-to-one, contained, never a lossy name."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from openai_batch.identity import (
    OutsideRootsError,
    folder_of,
    history_folder,
    input_ref,
    is_input_name,
    parse_roots,
    state_folder,
)

if TYPE_CHECKING:
    from pathlib import Path

# Pairs that a cleaned name used to merge into one results folder.
COLLIDING = [
    pytest.param("数据.jsonl", "测试.jsonl", id="cjk-names"),
    pytest.param("a b.jsonl", "a_b.jsonl", id="space-vs-underscore"),
    pytest.param("dupA/requests.jsonl", "dupB/requests.jsonl", id="same-name-other-folder"),
    pytest.param("today.jsonl", "2026-11-28/today.jsonl", id="inbox-root-vs-dated"),
    pytest.param("x.jsonl.gz", "x.jsonl.gz.jsonl", id="gz-vs-longer-name"),
    pytest.param("x.jsonl", "x.jsonl.gz", id="plain-vs-gz"),
    pytest.param("_state/a.jsonl", "a.jsonl", id="reserved-folder-name"),
]


@pytest.mark.parametrize(("first", "second"), COLLIDING)
def test_different_paths_never_share_a_folder(first: str, second: str) -> None:
    assert folder_of(first) != folder_of(second)
    # and neither folder is the pipeline's own state or history folder
    for key in (first, second):
        assert not folder_of(key).split("/")[0].startswith("_")


@pytest.mark.parametrize(
    ("key", "folder"),
    [
        pytest.param("2024-06-01/reviews.jsonl", "2024-06-01/reviews", id="dated-keeps-stem"),
        pytest.param("reviews.jsonl", "reviews", id="inbox-root"),
        pytest.param("team/2024-06-01/reviews.jsonl", "team/2024-06-01/reviews", id="nested"),
    ],
)
def test_plain_names_keep_a_readable_layout(key: str, folder: str) -> None:
    assert folder_of(key) == folder


def test_odd_names_are_cleaned_for_reading_and_hashed_for_keying() -> None:
    folder = folder_of("a b.jsonl")
    assert folder.startswith("a_b.jsonl~")
    assert folder_of("a b.jsonl") == folder  # stable


@pytest.mark.parametrize("key", ["../x.jsonl", "/abs.jsonl", "a/../../x.jsonl", ""])
def test_keys_that_climb_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a relative input key"):
        folder_of(key)


def test_content_folders() -> None:
    sha = "ab" * 32
    assert state_folder(sha) == "_state/" + sha[:16]
    assert history_folder(sha) == "_history/" + sha[:16]
    with pytest.raises(ValueError, match="not a sha256"):
        state_folder("../../etc")


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("a.jsonl", True),
        ("a.jsonl.gz", True),
        ("requests.json", False),
        ("a.jsonl.tmp", False),
        ("a.jsonl.part", False),
        (".hidden.jsonl", False),
    ],
)
def test_input_names(name: str, taken: bool) -> None:
    assert is_input_name(name) is taken


def test_parse_roots() -> None:
    assert parse_roots(" /data/a, /data/b;\ns3://bucket/in \n") == ["/data/a", "/data/b", "s3://bucket/in"]
    assert parse_roots(None) == []


def test_symlinks_resolve_and_must_stay_inside(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "d").mkdir(parents=True)
    (inbox / "d" / "real.jsonl").write_text("{}\n")
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    os.symlink(inbox / "d" / "real.jsonl", inbox / "inside-link.jsonl")
    os.symlink(outside, inbox / "outside-link.jsonl")
    os.symlink("/proc/self/environ", inbox / "environ.jsonl")

    assert input_ref(str(inbox / "inside-link.jsonl"), str(inbox)).key == "d/real.jsonl"
    with pytest.raises(OutsideRootsError, match="outside the inbox"):
        input_ref(str(inbox / "outside-link.jsonl"), str(inbox))
    with pytest.raises(OutsideRootsError, match="never read"):
        input_ref(str(inbox / "environ.jsonl"), str(inbox))
    with pytest.raises(OutsideRootsError, match="never read"):
        input_ref("/proc/self/environ", str(inbox), ["/"])  # not even when a deployer allows "/"
    with pytest.raises(OutsideRootsError, match="outside the inbox"):
        input_ref(str(inbox / ".." / "outside.jsonl"), str(inbox))

    allowed = input_ref(str(inbox / "outside-link.jsonl"), str(inbox), [str(tmp_path)])
    assert allowed.source == str(outside)
    assert allowed.folder.startswith("_roots/")
    assert allowed.folder != folder_of("outside.jsonl")


def test_urls_stay_under_their_root() -> None:
    assert input_ref("s3://bucket/in/2024-06-01/a.jsonl", "s3://bucket/in").key == "2024-06-01/a.jsonl"
    with pytest.raises(OutsideRootsError):
        input_ref("s3://bucket/in/../secret/a.jsonl", "s3://bucket/in")
    with pytest.raises(OutsideRootsError):
        input_ref("s3://bucket/inbox-other/a.jsonl", "s3://bucket/in")
