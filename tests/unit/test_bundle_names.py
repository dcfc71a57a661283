"""The two gates of a bundle's paths: what a BagIt manifest may name, and what a device's
file name becomes inside a bundle."""

from __future__ import annotations

import pytest

from agent.verify.bagit import is_safe_relative
from agent.verify.layout import safe_name


@pytest.mark.parametrize("path", ["data/clips/0190/a.mp4", "a", "data/x..y/z", "data/.x"])
def test_a_relative_path_of_plain_components_is_safe(path: str) -> None:
    assert is_safe_relative(path)


@pytest.mark.parametrize("path", [
    "/etc/passwd",            # absolute
    "data\\..\\key",          # a backslash (a separator elsewhere)
    "data//x",                # an empty component
    "data/",                  # an empty last component
    "",                       # nothing
    "data/./x", ".",          # the directory itself
    "data/../../key", "..",   # the parent
])
def test_a_manifest_path_that_could_leave_the_bag_or_alias_another_is_refused(
        path: str) -> None:
    """Rule: a bundle's manifest names files inside the bag, one way each."""
    assert not is_safe_relative(path)


def test_a_name_at_the_limit_is_kept_whole() -> None:
    """(Cutting a 200-byte name would give it back unchanged: the limit itself is not a rule.)"""
    name = "a" * 196 + ".MP4"  # 200 bytes
    assert safe_name(name) == name


@pytest.mark.parametrize(("name", "expected"), [
    ("x" * 300 + ".tar.mp4", "x" * 196 + ".mp4"),  # the last extension only
    ("x" * 300 + ".z", "x" * 198 + ".z"),            # a one-letter extension is kept
    ("x" * 300 + "." + "y" * 20, "x" * 200),         # over 16 bytes: no extension kept
    ("录" * 100 + ".MP4", "录" * 65 + ".MP4"),        # cut by UTF-8 bytes, whole characters
])
def test_a_long_name_is_cut_to_200_bytes_keeping_its_extension(name: str,
                                                                expected: str) -> None:
    """Rule: a device's long file name becomes at most 200 UTF-8 bytes, its extension kept."""
    cut = safe_name(name)
    assert cut == expected and len(cut.encode("utf-8")) <= 200


@pytest.mark.parametrize(("name", "expected"), [
    ("../../station.key", "_._.._station.key"),  # one component, no leading dot
    (".hidden", "_hidden"),
    ("a b;rm -rf", "a_b_rm_-rf"),
    ("", "clip"),
])
def test_a_device_name_becomes_one_safe_component(name: str, expected: str) -> None:
    assert safe_name(name) == expected
