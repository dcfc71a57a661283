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


# --- a clip and its manifest, without a bundle (verify CLIP MANIFEST --cert CERT) -----------

def _pair(bundle: Path, clip_id: str) -> tuple[Path, Path, Path]:
    (clip,) = (bundle / "data" / "clips" / clip_id).iterdir()
    return clip, bundle / "data" / "manifests" / f"{clip_id}.dsse.json", \
        bundle / "certs" / "station.pem"


def _verify_pair(clip: Path, manifest: Path, cert: Path) -> Report:
    from agent.verify.pair import verify_clip_file

    report = Report()
    verify_clip_file(clip, manifest, cert, report)
    return report


def test_a_clip_and_its_manifest_verify_alone_and_say_what_was_not_checked(
        bundle: Path) -> None:
    """Rule: a clip with its signed manifest and the station certificate verifies on its
    own, under the manifest's clip id and name, and says the custody log was not checked."""
    clip_id = _clip_ids(bundle)[0]
    clip, manifest, cert = _pair(bundle, clip_id)
    report = _verify_pair(clip, manifest, cert)
    assert report.ok, _problems(report)
    (result,) = report.clips
    signed = json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))
    assert (result.clip_id, result.name) == (clip_id, signed["file"]["name"])
    assert report.targets == [{"path": f"{clip} + {manifest}", "kind": "clip"}]
    assert (f"{clip} + {manifest}: custody log not checked (a clip and its manifest carry no "
            "log proof; verify the export bundle or the station data directory for that)"
            in report.warnings)


@pytest.mark.parametrize("damage", ["manifest gone", "clip gone", "byte flipped",
                                    "other key", "not canonical", "renamed"])
def test_a_clip_and_manifest_pair_names_each_kind_of_damage(bundle: Path, station: Path,
                                                            tmp_path: Path, damage: str) -> None:
    """Rule: a missing manifest or clip, altered bytes, a manifest not signed by the
    station or not canonical fail the pair with their finding; a renamed file is only a
    warning (the bytes decide)."""
    clip_id = _clip_ids(bundle)[0]
    clip, manifest, cert = _pair(bundle, clip_id)
    envelope = json.loads(manifest.read_text())
    if damage == "manifest gone":
        manifest.unlink()
    elif damage == "clip gone":
        clip.unlink()
    elif damage == "byte flipped":
        data = bytearray(clip.read_bytes())
        data[100] ^= 1
        clip.write_bytes(bytes(data))
    elif damage == "other key":
        payload = base64.b64decode(envelope["payload"])
        manifest.write_text(json.dumps(dsse.sign_envelope(dsse.MANIFEST, payload,
                                                          [StationKey.generate()])))
    elif damage == "not canonical":
        payload = json.loads(base64.b64decode(envelope["payload"]))
        key = StationKey.load(station / "data" / "keys" / "station.key")
        manifest.write_text(json.dumps(dsse.sign_envelope(
            dsse.MANIFEST, json.dumps(payload, indent=1).encode(), [key])))
    else:
        moved = tmp_path / "renamed.MP4"
        clip.rename(moved)
        clip = moved
    report = _verify_pair(clip, manifest, cert)
    (result,) = report.clips
    codes = {p.split(":", 1)[0] for p in result.problems}
    expected = {"manifest gone": {"manifest-missing"}, "clip gone": {"file-missing"},
                "byte flipped": {"file-digest"}, "other key": {"signature"},
                "not canonical": {"manifest-canonical"}, "renamed": set()}[damage]
    assert expected <= codes, result.problems
    assert result.ok is (damage == "renamed")
    if damage == "manifest gone":
        assert result.clip_id == clip.name
    if damage == "renamed":
        signed = json.loads(base64.b64decode(envelope["payload"]))
        assert (f"{clip_id}: the file is named 'renamed.MP4', the manifest names it "
                f"{signed['file']['name']!r}") in report.warnings


def test_the_certificate_is_checked_at_the_time_the_clip_was_sealed(
        bundle: Path, station: Path) -> None:
    """Rule: the station certificate must have been valid when the clip was sealed (its
    copy time): a manifest claiming a copy before the certificate existed fails."""
    clip_id = _clip_ids(bundle)[0]
    _resign_manifest(bundle, station, clip_id,
                     lambda m: m["ingest"].update(copied_at="2001-01-01T00:00:00.000Z"))
    clip, manifest, cert = _pair(bundle, clip_id)
    report = _verify_pair(clip, manifest, cert)
    assert any(p.startswith("cert-invalid:") and "2001" in p for p in report.problems), \
        report.problems
    assert not report.ok
