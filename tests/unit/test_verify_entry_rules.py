"""``bwc-agent verify PATH...``: which targets the auditor's arguments name, in which order, and
the usage errors (exit 2) for arguments it cannot understand, word for word.

One station seals and exports one clip (tests/support/stations.exported_station); the tests
give the command its bundle, a copy of its data directory and the auditor's copy of the clip
with its manifest and certificate (tests/support/pairs.py), alone or together, and check the
exit code, the message on stderr and the targets and clips of the ``--json`` report.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from agent.cli.common import human_size
from agent.cli.main import main
from agent.custody.keys import StationKey, make_dev_certificate
from agent.errors import ConfigError
from agent.verify import verify_paths
from tests.support.bundles import copy_bundle
from tests.support.pairs import Pair
from tests.support.stations import exported_station
from tests.support.templates import built_once


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("exported-station", tmp_path_factory, exported_station)


@pytest.fixture
def pair(station: Path, tmp_path: Path) -> Pair:
    return Pair(station, tmp_path / "pair")


@pytest.fixture
def data(station: Path, tmp_path: Path) -> Path:
    """A copy of the station's data directory (the verifier only reads it)."""
    copy = tmp_path / "data"
    shutil.copytree(station / "data", copy)
    return copy


def _verify(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``bwc-agent verify ARGS``: its exit code, stdout and stderr."""
    code = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _verify_json(capsys: pytest.CaptureFixture[str],
                 *args: str | Path) -> tuple[int, dict[str, Any]]:
    code, out, err = _verify(capsys, *args, "--json")
    assert err == ""
    report: dict[str, Any] = json.loads(out)
    return code, report


def _usage_error(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """The message of a usage error (exit 2), without the 'bwc-agent: error: ' before it."""
    code, out, err = _verify(capsys, *args)
    assert (code, out) == (2, ""), err
    assert err.startswith("bwc-agent: error: ") and err.endswith("\n"), err
    return err.removeprefix("bwc-agent: error: ").removesuffix("\n")


# --- what the arguments name -----------------------------------------------------------

def test_targets_are_verified_in_the_order_given_a_clip_taking_its_manifest_along(
        station: Path, pair: Pair, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: each directory is one target and a clip file takes the manifest after it as
    its pair, wherever they stand among the arguments; every target is verified once, in
    the order given (here a bundle, a clip with its manifest, a data directory)."""
    bundle = station / "bundle"
    code, report = _verify_json(capsys, bundle, pair.clip, pair.manifest, data,
                                "--cert", pair.cert)
    assert report["targets"] == [{"path": str(bundle), "kind": "bundle"},
                                 {"path": pair.source, "kind": "clip"},
                                 {"path": str(data), "kind": "data_dir"}]
    assert [(c["clip_id"], c["source"], c["ok"]) for c in report["clips"]] == [
        (pair.clip_id, str(bundle), True), (pair.clip_id, pair.source, True),
        (pair.clip_id, str(data), True)]
    assert (code, report["ok"]) == (0, True)


def test_a_directory_that_is_neither_a_bundle_nor_a_data_directory_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a directory without bagit.txt, data/, custody/ or state.db is refused (exit 2)
    with a message naming it and the two files that would make it a target."""
    (tmp_path / "empty").mkdir()
    assert _usage_error(capsys, tmp_path / "empty") == (
        f"{tmp_path / 'empty'}: neither an export bundle (no bagit.txt) nor a station data "
        "directory (no state.db)")


def test_a_manifest_before_its_clip_is_a_usage_error_showing_the_order(
        pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a manifest given where a target starts (before its clip) is refused (exit 2)
    with the order the command takes."""
    assert _usage_error(capsys, pair.manifest, pair.clip, "--cert", pair.cert) == (
        f"{pair.manifest}: a manifest must follow its clip file "
        "(verify CLIP MANIFEST --cert station.pem)")


@pytest.mark.parametrize("after", ["nothing", "certificate", "directory"])
def test_a_clip_not_followed_by_its_manifest_is_a_usage_error_showing_the_order(
        after: str, station: Path, pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a clip file must be followed by its manifest (a .json file): a clip given last,
    before its certificate (forgetting --cert) or before a directory is refused (exit 2)
    with the order the command takes."""
    following = {"nothing": [], "certificate": [pair.cert],
                 "directory": [station / "bundle"]}[after]
    assert _usage_error(capsys, pair.clip, *following, "--cert", pair.cert) == (
        f"{pair.clip}: a clip file must be followed by its manifest "
        "(verify CLIP MANIFEST.dsse.json --cert station.pem)")


def test_a_clip_and_its_manifest_without_a_certificate_is_a_usage_error(
        pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a clip with its manifest needs --cert (exit 2 without it, naming the option)."""
    assert _usage_error(capsys, pair.clip, pair.manifest) == (
        f"{pair.clip}: verifying a clip and its manifest needs the station certificate: "
        "--cert station.pem")


def test_a_program_giving_no_target_is_told_what_the_verifier_takes() -> None:
    """Rule: verify_paths (the verifier's entry for programs; the command needs a PATH
    before it is called) refuses an empty list with a ConfigError naming the three kinds
    of target."""
    with pytest.raises(ConfigError) as caught:
        verify_paths([])
    assert str(caught.value) == "give at least one bundle, data directory, or clip and manifest"


# --- what the options reach ------------------------------------------------------------

def test_officer_key_without_a_bundle_is_a_usage_error(
        pair: Pair, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --officer-key given when no target is a bundle (the only target whose officer
    credentials it checks) is refused (exit 2), never silently ignored."""
    key = tmp_path / "officer-key.pem"
    key.write_bytes(StationKey.generate().public_pem())
    expected = ("--officer-key checks the officer credentials of an export bundle, and no "
                "target is a bundle")
    assert _usage_error(capsys, data, "--officer-key", key) == expected
    assert _usage_error(capsys, pair.clip, pair.manifest, "--cert", pair.cert,
                        "--officer-key", key) == expected


def test_cert_without_a_clip_is_a_usage_error(
        station: Path, pair: Pair, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --cert given when no target is a clip and its manifest (bundles and data
    directories carry their own certificates) is refused (exit 2), never silently ignored."""
    expected = ("--cert is the station certificate of a clip and its manifest, and no target "
                "is a clip (bundles and data directories carry their own)")
    assert _usage_error(capsys, data, "--cert", pair.cert) == expected
    assert _usage_error(capsys, station / "bundle", "--cert", pair.cert) == expected


def test_a_clip_and_its_manifest_are_checked_against_trust(
        pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --trust applies to a clip and its manifest: a station certificate that does not
    chain to it fails the clip (exit 1, trust 'failed'), one that does anchors it (exit 0,
    trust 'anchored')."""
    stranger = tmp_path / "other-ca.pem"
    stranger.write_bytes(make_dev_certificate(StationKey.generate(), "ST-9999").public_bytes(
        serialization.Encoding.PEM))
    code, report = _verify_json(capsys, pair.clip, pair.manifest, "--cert", pair.cert,
                                "--trust", stranger)
    (clip,) = report["clips"]
    assert (code, clip["trust"], clip["ok"]) == (1, "failed", False)
    code, report = _verify_json(capsys, pair.clip, pair.manifest, "--cert", pair.cert,
                                "--trust", pair.cert)
    (clip,) = report["clips"]
    assert (code, clip["trust"], clip["problems"]) == (0, "anchored", [])


def test_a_bundle_s_credential_key_must_be_the_one_given_with_officer_key(
        station: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --officer-key reaches a bundle's officer check: a credential key in the bundle
    other than the one the auditor gives is an officer-key finding naming both key ids, and
    the bundle does not verify (exit 1)."""
    bundle = copy_bundle(station, tmp_path)
    bundled, given = StationKey.generate(), StationKey.generate()
    (bundle / "officers").mkdir()
    (bundle / "officers" / "credential-key.pem").write_bytes(bundled.public_pem())
    (tmp_path / "officer-key.pem").write_bytes(given.public_pem())
    code, report = _verify_json(capsys, bundle, "--officer-key", tmp_path / "officer-key.pem")
    assert (f"officer-key: officers/credential-key.pem has key id {bundled.keyid}, not the "
            f"credential key given with --officer-key ({given.keyid})") in report["problems"]
    assert code == 1


# --- what the report adds up and names -------------------------------------------------

def test_the_bytes_hashed_line_adds_up_every_target(
        pair: Pair, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: the text report ends with the bytes hashed over all targets, their time and
    speed (here the pair's clip and every vault object of the data directory)."""
    vault = sum(p.stat().st_size for p in (data / "vault" / "sha256").rglob("*")
                if p.is_file())
    code, out, err = _verify(capsys, pair.clip, pair.manifest, data, "--cert", pair.cert)
    assert (code, err) == (0, "")
    last = out.splitlines()[-1]
    total = human_size(pair.clip.stat().st_size + vault)
    assert re.fullmatch(rf"hashed {re.escape(total)} in \d+\.\d\d s \(\d+(\.\d)? \w+/s\)",
                        last), (total, last)


def test_a_clip_first_met_in_a_log_finding_is_named_as_the_station_recorded_it(
        data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a data directory clip whose log entry was edited (a finding made before its
    record is read) is still reported under the name in the station's records."""
    db = sqlite3.connect(data / "state.db")
    try:
        (clip_id, name), = db.execute("SELECT clip_id, name FROM clips").fetchall()
        (seq,), = db.execute("SELECT seq FROM custody_log WHERE clip_id = ? ORDER BY seq "
                             "LIMIT 1", (clip_id,)).fetchall()
        db.execute("UPDATE custody_log SET body = '{\"edited\": true}' WHERE seq = ?", (seq,))
        db.commit()
    finally:
        db.close()
    code, report = _verify_json(capsys, data)
    (clip,) = report["clips"]
    assert (clip["clip_id"], clip["name"], clip["ok"]) == (clip_id, name, False)
    assert code == 1
    code, out, _ = _verify(capsys, data)
    assert f"  {clip_id}  {name} [" in out
