"""Rules of the verifier's small parts an auditor meets through every finding: what it takes
for a bundle, how it reads a file below a bundle or data directory, and the words of the
``log-link`` findings that tie a clip's manifest to its ``clip.sealed`` entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.verify import _is_bundle
from agent.verify.checks import seal_link_problems
from agent.verify.files import (
    Unreadable,
    hash_beneath,
    open_beneath,
    read_beneath,
    read_file,
)

M1, M2 = "a" * 64, "b" * 64
C1, C2 = "c" * 64, "d" * 64


def _sealed(seq: int, **body: object) -> dict[str, object]:
    return {"kind": "clip.sealed", "seq": seq, "body": body}


def test_a_sealed_entry_naming_another_manifest_or_other_bytes_is_named_word_for_word() -> None:
    """Rule: a clip.sealed entry must name this manifest's SHA-256 and the clip's; each
    difference is one log-link finding saying the entry's seq and both digests."""
    assert seal_link_problems([_sealed(7, manifest_sha256=M1, sha256=C1)], M2, C2) == [
        f"log-link: clip.sealed (seq 7) records manifest SHA-256 {M1}, this manifest's is {M2}",
        f"log-link: clip.sealed (seq 7) records clip SHA-256 {C1}, the manifest says {C2}",
    ]


@pytest.mark.parametrize(("body", "claimed"), [
    ({"manifest_sha256": M1, "sha256": C1}, C1),    # the same bytes
    ({"manifest_sha256": M1}, C1),                  # an entry that does not say (older format)
    ({"manifest_sha256": M1, "sha256": C2}, None),  # a manifest that does not say
])
def test_a_sealed_entry_agreeing_or_silent_on_the_bytes_is_no_finding(
        body: dict[str, object], claimed: str | None) -> None:
    """Rule: no log-link finding when the entry and the manifest agree on the clip's
    SHA-256, or when either does not state it."""
    assert seal_link_problems([_sealed(3, **body)], M1, claimed) == []


def test_a_clip_without_a_sealed_entry_naming_a_manifest_is_named() -> None:
    """Rule: only a clip.sealed entry with a manifest_sha256 links a manifest."""
    entries = [{"kind": "clip.copied", "seq": 1, "body": {"manifest_sha256": M1}},
               {"kind": "clip.sealed", "seq": 2, "body": {"sha256": C1}}]
    assert seal_link_problems(entries, M1, C1) == [
        "log-link: no clip.sealed entry with a manifest_sha256 for this clip"]


@pytest.mark.parametrize("marker", ["bagit.txt", "data", "custody"])
def test_a_directory_with_any_part_of_a_bundle_is_verified_as_a_bundle(
        tmp_path: Path, marker: str) -> None:
    """Rule: a directory holding bagit.txt, data/ or custody/ is read as a bundle (and a
    damaged one is reported as a damaged bundle, not as something else)."""
    (tmp_path / marker).mkdir()
    assert _is_bundle(tmp_path)
    assert not _is_bundle(tmp_path / marker)


@pytest.mark.parametrize("rel", ["", "a//b", "./a", "a/.", "a/../b", "..", "a/"])
def test_a_path_below_a_bundle_must_be_plain_and_relative(tmp_path: Path, rel: str) -> None:
    """Rule: a path read below a bundle or data directory is refused, naming it, when it
    has an empty, '.' or '..' part."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_bytes(b"x")
    with pytest.raises(Unreadable) as refused:
        open_beneath(tmp_path, rel)
    assert str(refused.value) == f"{rel} is not a plain relative path"


def test_reading_below_a_missing_directory_names_the_directory(tmp_path: Path) -> None:
    """Rule: the directory a bundle's file is read below must open; if it cannot, the
    finding names it and why."""
    with pytest.raises(Unreadable) as refused:
        open_beneath(tmp_path / "gone", "a")
    assert str(refused.value) == (f"cannot open the directory {tmp_path / 'gone'}: "
                                  "No such file or directory")


def test_each_way_of_reading_names_the_file_it_could_not_read(tmp_path: Path) -> None:
    """Rule: a file that is missing, too large or linked is refused naming that file
    (its path below the bundle, or its own path)."""
    (tmp_path / "big").write_bytes(b"x" * 2048)
    os.symlink(tmp_path / "big", tmp_path / "link")
    with pytest.raises(Unreadable, match=r"^missing\.json is missing$"):
        read_beneath(tmp_path, "missing.json", 1024)
    with pytest.raises(Unreadable) as refused:
        read_beneath(tmp_path, "big", 1024)
    assert str(refused.value).startswith("big is larger than this verifier reads")
    with pytest.raises(Unreadable) as refused:
        read_file(tmp_path / "big", 1024)
    assert str(refused.value).startswith(f"{tmp_path / 'big'} is larger than this verifier")
    with pytest.raises(Unreadable, match=r"^link is, or lies below, a symbolic link"):
        hash_beneath(tmp_path, "link")
    with pytest.raises(Unreadable) as refused:
        read_file(tmp_path / "link", 1024)
    assert str(refused.value) == (f"{tmp_path / 'link'} is, or lies below, a symbolic link "
                                  "(not followed)")
    assert hash_beneath(tmp_path, "big")[1] == 2048
