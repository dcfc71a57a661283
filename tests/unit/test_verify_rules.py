"""Offline verification: the findings an auditor relies on, each on one precise forgery.

A bundle is exported once from a real station (tests/support/templates.py); each test
damages its own copy the way a forger with the station's own key could, and checks
that ``bwc-agent verify`` names exactly what is wrong (the finding's code and words),
for the right clip, and fails.
"""

from __future__ import annotations

import base64
import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.custody import dsse
from agent.custody.keys import StationKey
from agent.verify import Report, verify_paths
from tests.support.bundles import clip_ids, copy_bundle, resign_manifest
from tests.support.stations import exported_station
from tests.support.templates import built_once


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("verify-rules", tmp_path_factory,
                      functools.partial(exported_station, clips=2))


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


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


def test_a_size_that_differs_from_the_signed_one_fails_even_when_the_digest_matches(
        bundle: Path, station: Path) -> None:
    """Rule: the clip file must have the size its signed manifest states, besides its
    SHA-256; a manifest re-signed with the station's own key to state another size is
    caught by the size (and by the log's record of the sealed manifest)."""
    clip_id = clip_ids(bundle)[0]
    manifest = resign_manifest(bundle, station, clip_id,
                                lambda m: m["file"].update(size=m["file"]["size"] + 1))
    report = verify_paths([bundle])
    clip = _clip(report, clip_id)
    size = manifest["file"]["size"]
    assert f"file-size: file is {size - 1} bytes, the manifest says {size}" in clip.problems
    assert not [p for p in clip.problems if p.startswith("file-digest")], clip.problems
    assert not clip.ok and not report.ok
    other = _clip(report, clip_ids(bundle)[1])
    assert other.ok, other.problems


def test_a_manifest_digest_that_is_not_lowercase_hex_is_named(bundle: Path,
                                                              station: Path) -> None:
    """Rule: a manifest digest must be 64 lowercase hex digits; an upper-case one (the
    same bytes, loosely written) is a finding, not a match."""
    clip_id = clip_ids(bundle)[0]
    manifest = resign_manifest(bundle, station, clip_id, lambda m: m["file"]["digests"].update(
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
    clip_id = clip_ids(bundle)[0]
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
    clip_id = clip_ids(bundle)[0]
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
    clip_id = clip_ids(bundle)[0]
    resign_manifest(bundle, station, clip_id,
                     lambda m: m["ingest"].update(copied_at="2001-01-01T00:00:00.000Z"))
    clip, manifest, cert = _pair(bundle, clip_id)
    report = _verify_pair(clip, manifest, cert)
    assert any(p.startswith("cert-invalid:") and "2001" in p for p in report.problems), \
        report.problems
    assert not report.ok


# --- what the verifier refuses to read, and how it reports -----------------------------------

def test_files_the_verifier_will_not_read_are_named_by_kind(tmp_path: Path) -> None:
    """Rule: a FIFO, a socket, a directory or a link where a file should be is never read
    (a FIFO would hang, a link could lead out of the bundle), and the finding says what it is."""
    import os
    import socket

    from agent.verify.files import Unreadable, open_beneath, read_file

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "real").write_bytes(b"{}")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        expected = {"fifo": "fifo is a FIFO, not a regular file (not read)",
                    "dir": "dir is a directory, not a regular file (not read)",
                    "sock": "cannot open sock: No such device or address",
                    "link": "link is, or lies below, a symbolic link (not followed)",
                    "missing": "missing is missing"}
        for name, message in expected.items():
            with pytest.raises(Unreadable) as err:
                open_beneath(tmp_path, name)
            assert str(err.value) == message, name
        with pytest.raises(Unreadable) as err:
            read_file(tmp_path / "fifo", 100)
        assert str(err.value) == f"{tmp_path / 'fifo'} is a FIFO, not a regular file (not read)"
        with pytest.raises(Unreadable) as err:
            read_file(tmp_path / "link", 100)
        assert str(err.value) == (f"{tmp_path / 'link'} is, or lies below, a symbolic link "
                                  "(not followed)")
        assert read_file(tmp_path / "link", 100, follow=True) == b"{}"
    finally:
        server.close()


def test_the_kind_of_every_special_file_is_named() -> None:
    """Rule: each kind of special file has its own name in a finding."""
    import stat

    from agent.verify.files import _kind

    assert [_kind(m) for m in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK,
                               stat.S_IFDIR, stat.S_IFLNK, 0)] == [
        "a FIFO", "a character device", "a block device", "a socket", "a directory",
        "a symbolic link", "not a regular file"]


def test_a_manifest_link_inside_a_bundle_is_not_followed(bundle: Path) -> None:
    """Rule: a manifest in a bundle replaced by a link (to a forged one elsewhere) is not
    read; the finding says so."""
    from agent.verify.checks import load_json_file

    clip_id = clip_ids(bundle)[0]
    manifest = bundle / "data" / "manifests" / f"{clip_id}.dsse.json"
    forged = bundle.parent / "forged.json"
    forged.write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(forged)
    value, error = load_json_file(manifest)
    assert value is None
    assert error == f"{manifest} is, or lies below, a symbolic link (not followed)"
    value, error = load_json_file(manifest, follow=True)
    assert error is None and value["payloadType"] == dsse.MANIFEST
    broken = bundle.parent / "broken.json"
    broken.write_bytes(b'{"a": ')
    value, error = load_json_file(broken)
    assert value is None and error is not None and error.startswith("broken.json")


def test_the_trust_bundle_is_read_through_a_link_and_refused_by_name(tmp_path: Path,
                                                                    station: Path) -> None:
    """Rule: --trust names a file the auditor chose (a link to it is followed); a missing
    file or one without a PEM certificate is a usage error naming --trust."""
    from agent.errors import ConfigError
    from agent.verify import load_trust

    pem = station / "bundle" / "certs" / "station.pem"
    (tmp_path / "ca.pem").symlink_to(pem)
    assert len(load_trust(tmp_path / "ca.pem")) == 1
    with pytest.raises(ConfigError) as err:
        load_trust(tmp_path / "none.pem")
    assert str(err.value) == f"--trust: {tmp_path / 'none.pem'} is missing"
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        load_trust(tmp_path / "junk.pem")
    assert str(err.value).startswith(f"--trust: {tmp_path / 'junk.pem'} holds no PEM "
                                     "certificate: ")


def test_the_json_report_has_every_field_for_each_clip(bundle: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Rule: `verify --json` gives, per clip, its id, name, verdict, problems, source,
    state, trust, officer and cases (the fields tools read)."""
    assert main(["verify", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for clip in report["clips"]:
        assert set(clip) == {"clip_id", "name", "ok", "problems", "source", "state", "trust",
                             "officer", "cases"}
        assert clip["name"].endswith((".MP4", ".AVI"))
        assert clip["source"] and clip["trust"] and isinstance(clip["cases"], list)


def test_the_officer_line_says_who_with_what_credential_and_which_cases() -> None:
    """Rule: each clip's verdict line names its officer (id, name, credential, status) and
    its cases, and says '-' / 'none' where there are none."""
    from agent.verify.report import _officer_line

    assert _officer_line(None, []) == "officer -; cases: none"
    assert _officer_line({"id": "000001", "name": "张三", "credential_id": "C-1",
                          "status": "valid"}, ["A", "B"]) == \
        "officer 000001 张三, credential C-1: valid; cases: A, B"
    assert _officer_line({"id": "", "status": "no-credential"}, ["A"]) == \
        "officer -: no-credential; cases: A"
    assert _officer_line({"id": "7", "status": "revoked",
                          "revoked_since": {"revoked_at": "2026-01-01T00:00:00.000Z"}}, []) == \
        "officer 7: revoked (revoked since 2026-01-01T00:00:00.000Z); cases: none"


def test_a_manifest_below_a_directory_replaced_by_a_link_says_why_it_is_not_read(
        bundle: Path, tmp_path: Path) -> None:
    """Rule: a file the verifier does not read because a directory above it is not read
    (a link) is named with that directory and its reason, not merely as missing."""
    manifests = bundle / "data" / "manifests"
    elsewhere = tmp_path / "forged-manifests"
    shutil.move(manifests, elsewhere)
    manifests.symlink_to(elsewhere, target_is_directory=True)
    report = verify_paths([bundle])
    clip_id = clip_ids(bundle)[0]
    rel = f"data/manifests/{clip_id}.dsse.json"
    reason = (f"{rel} lies below data/manifests, which is not read (data/manifests is a "
              "symbolic link (not followed))")
    found = [p for c in report.clips for p in c.problems] + report.problems
    assert any(reason in p for p in found), found


def test_special_files_in_a_bundle_are_named_by_kind() -> None:
    """Rule: a bundle's special file is named by its kind in the finding."""
    import stat

    from agent.verify.bundle import _kind

    assert [_kind(m) for m in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK, 0)] \
        == ["a FIFO", "a device", "a device", "a socket", "a special file"]


@pytest.mark.parametrize(("path", "encoded"), [
    ("data/clips/a%b", "data/clips/a%25b"), ("a\rb\nc", "a%0Db%0Ac"), ("plain", "plain")])
def test_bagit_paths_escape_percent_cr_and_lf_and_come_back_whole(path: str,
                                                                  encoded: str) -> None:
    """Rule: a path in a BagIt manifest has %, CR and LF percent-encoded (RFC 8493 2.1.3),
    and decodes to the same path."""
    from agent.verify.bagit import decode_path, encode_path

    assert encode_path(path) == encoded and decode_path(encoded) == path


@pytest.mark.parametrize(("text", "ok"), [("ab" * 32, True), ("AB" * 32, False),
                                          ("ab" * 31, False), ("ab" * 32 + "0", False)])
def test_a_keyid_is_64_lowercase_hex_digits(text: str, ok: bool) -> None:
    """Rule: certs/keys/<keyid>.pem names a key by 64 lowercase hex digits, nothing else."""
    from agent.verify.layout import is_keyid

    assert is_keyid(text) is ok
