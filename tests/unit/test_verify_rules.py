"""Offline verification: the findings an auditor relies on, each on one precise forgery.

A bundle is exported once from a real station (tests/support/templates.py); each test
damages its own copy the way a forger with the station's own key could, and checks
that ``bwc-agent verify`` names exactly what is wrong (the finding's code and words),
for the right clip, and fails.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.verify import Report, verify_paths
from tests.conftest import write_station_config
from tests.support.stations import camera, running_station
from tests.support.templates import built_once


def _build(base: Path) -> None:
    config_path = write_station_config(base)
    config = config_mod.load(config_path)
    camera(config, clips=2, seconds=0.3)
    with running_station(config) as station:
        assert station.run_once().ok
    assert main(["export", "--config", str(config_path), "--all", "--out",
                 str(base / "bundle")]) == 0


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("verify-rules", tmp_path_factory, _build)


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(station / "bundle", copy)
    return copy


def _entries(bundle: Path) -> list[bytes]:
    return (bundle / "custody" / "entries.jsonl").read_bytes().splitlines()


def _write_entries(bundle: Path, lines: list[bytes]) -> None:
    (bundle / "custody" / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def _problems(report: Report) -> list[str]:
    return [*report.problems, *(p for c in report.clips for p in c.problems)]


def _clip(report: Report, clip_id: str) -> Any:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def test_the_pristine_bundle_verifies(bundle: Path) -> None:
    report = verify_paths([bundle])
    assert report.ok, _problems(report)


def test_a_duplicated_log_line_is_named_as_such(bundle: Path) -> None:
    """Rule: a custody log line that appears twice is reported as duplicated or out of
    order, with its line and seq, for the file and for the clip it belongs to."""
    lines = _entries(bundle)
    index = next(i for i, line in enumerate(lines) if json.loads(line)["clip_id"])
    entry = json.loads(lines[index])
    lines.insert(index + 1, lines[index])
    _write_entries(bundle, lines)
    report = verify_paths([bundle])
    assert not report.ok
    seq = entry["seq"]
    assert (f"log-order: custody/entries.jsonl line {index + 2} has seq {seq} after seq {seq} "
            "(entries duplicated or out of order)") in report.problems
    clip = _clip(report, entry["clip_id"])
    assert (f"log-order: seq {seq} comes after this clip's seq {seq} in custody/entries.jsonl "
            "(entries duplicated or out of order)") in clip.problems
    assert not clip.ok


def _resign_manifest(bundle: Path, station: Path, clip_id: str, change: Any) -> dict[str, Any]:
    path = bundle / "data" / "manifests" / f"{clip_id}.dsse.json"
    envelope = json.loads(path.read_text(encoding="utf-8"))
    manifest = json.loads(base64.b64decode(envelope["payload"]))
    change(manifest)
    key = StationKey.load(station / "data" / "keys" / "station.key")
    path.write_text(json.dumps(dsse.sign_envelope(dsse.MANIFEST, canonicalize(manifest),
                                                  [key])), encoding="utf-8")
    return manifest


def _clip_ids(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / "data" / "clips").iterdir())


def test_a_size_that_differs_from_the_signed_one_fails_even_when_the_digest_matches(
        bundle: Path, station: Path) -> None:
    """Rule: the clip file must have the size its signed manifest states, besides its
    SHA-256; a manifest re-signed with the station's own key to state another size is
    caught by the size (and by the log's record of the sealed manifest)."""
    clip_id = _clip_ids(bundle)[0]
    manifest = _resign_manifest(bundle, station, clip_id,
                                lambda m: m["file"].update(size=m["file"]["size"] + 1))
    report = verify_paths([bundle])
    clip = _clip(report, clip_id)
    size = manifest["file"]["size"]
    assert f"file-size: file is {size - 1} bytes, the manifest says {size}" in clip.problems
    assert not [p for p in clip.problems if p.startswith("file-digest")], clip.problems
    assert not clip.ok and not report.ok
    other = _clip(report, _clip_ids(bundle)[1])
    assert other.ok, other.problems


def test_a_manifest_digest_that_is_not_lowercase_hex_is_named(bundle: Path,
                                                              station: Path) -> None:
    """Rule: a manifest digest must be 64 lowercase hex digits; an upper-case one (the
    same bytes, loosely written) is a finding, not a match."""
    clip_id = _clip_ids(bundle)[0]
    manifest = _resign_manifest(bundle, station, clip_id, lambda m: m["file"]["digests"].update(
        sha256=m["file"]["digests"]["sha256"].upper()))
    clip = _clip(verify_paths([bundle]), clip_id)
    digest = manifest["file"]["digests"]["sha256"]
    assert (f"manifest-field: file.digests.sha256 {digest!r} is not 64 lowercase hex digits"
            in clip.problems)
    assert not clip.ok
