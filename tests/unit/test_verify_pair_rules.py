"""Verifying a clip with its manifest alone (verify CLIP MANIFEST --cert CERT): the findings.

A station seals one clip and exports it once (tests/support/templates.py); each test
takes its own copy (tests/support/pairs.py) of the clip, its signed manifest and the station certificate, changes
one thing the way an auditor's files could differ (links, a missing or foreign
certificate, a manifest re-signed with the station's own key) and checks the exact
finding, warning and trust verdict the auditor reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography import x509

from agent.custody import dsse
from agent.custody.keys import StationKey, make_dev_certificate
from agent.verify import Report
from agent.verify.checks import hash_paths, load_identity
from agent.verify.layout import safe_name
from tests.support.pairs import Pair
from tests.support.stations import exported_station
from tests.support.templates import built_once


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("exported-station", tmp_path_factory, exported_station)


def _custody_warning(source: str) -> str:
    return (f"{source}: custody log not checked (a clip and its manifest carry no log "
            "proof; verify the export bundle or the station data directory for that)")


@pytest.fixture
def pair(station: Path, tmp_path: Path) -> Pair:
    return Pair(station, tmp_path / "pair")


def test_links_the_auditor_names_are_followed_to_the_clip_manifest_and_certificate(
        pair: Pair, tmp_path: Path) -> None:
    """Rule: the clip, the manifest and the certificate are files the auditor named, so a
    link to each is followed: the pair verifies, unanchored, with exactly the two warnings
    (certificate fingerprint to compare, custody log not checked)."""
    links = tmp_path / "links"
    links.mkdir()
    clip, manifest, cert = links / "clip.MP4", links / "manifest.json", links / "cert.pem"
    clip.symlink_to(pair.clip)
    manifest.symlink_to(pair.manifest)
    cert.symlink_to(pair.cert)
    report, result = pair.verify(clip=clip, manifest=manifest, cert=cert)
    source = f"{clip} + {manifest}"
    assert report.ok and result.problems == [] and report.problems == []
    assert (result.clip_id, result.trust, result.source) == (pair.clip_id, "unanchored", source)
    assert report.warnings == [
        f"{pair.clip_id}: the file is named 'clip.MP4', the manifest names it "
        f"{pair.signed()['file']['name']!r}",
        pair.unanchored_warning(source), _custody_warning(source)]


def test_a_missing_certificate_is_named_for_the_pair_and_fails_its_clip(pair: Pair) -> None:
    """Rule: without a readable station certificate the report names the pair and the
    missing file, the manifest's signature is not checked, and the clip fails its trust."""
    pair.cert.unlink()
    report, result = pair.verify()
    missing = f"cert-missing: {pair.source}: no usable station certificate: {pair.cert} is missing"
    assert report.problems == [missing]
    assert result.problems == [
        "signature: manifest: not checked, no usable station certificate",
        f"trust: the station certificate does not establish who signed this clip ({missing})"]
    assert result.trust == "failed" and not report.ok


def test_a_file_that_is_no_certificate_is_named_with_its_path(pair: Pair) -> None:
    """Rule: a --cert file that holds no PEM certificate is a cert-invalid finding naming the
    pair and the file, and the clip fails."""
    pair.cert.write_text("not a certificate\n", encoding="utf-8")
    report, result = pair.verify()
    (problem,) = report.problems
    assert problem.startswith(f"cert-invalid: {pair.source}: {pair.cert} is not a usable PEM "
                              "certificate: "), problem
    assert result.trust == "failed" and not result.ok


def test_a_signature_by_another_key_beside_the_station_s_is_a_warning_naming_it(
        pair: Pair) -> None:
    """Rule: a manifest the station signed that also carries another key's signature
    verifies, and the report warns, for the pair, which signature is ignored."""
    other = StationKey.generate()
    pair.write(dsse.MANIFEST, pair.payload(), [pair.key, other])
    report, result = pair.verify()
    assert result.problems == [] and report.ok
    assert (f"{pair.source}: manifest: signature 1 (keyid {other.keyid}) is not the "
            "station's, or does not verify; it is ignored (only the station's signature "
            "counts)") in report.warnings


def test_an_envelope_of_another_payload_type_is_not_a_manifest(pair: Pair) -> None:
    """Rule: the manifest's bytes signed by the station as another kind of statement (a
    checkpoint) are not a signed manifest: the signature finding names both types."""
    pair.write(dsse.CHECKPOINT, pair.payload(), [pair.key])
    report, result = pair.verify()
    assert (f"signature: manifest: payloadType is {dsse.CHECKPOINT!r}, expected "
            f"{dsse.MANIFEST!r}") in result.problems
    assert not report.ok


def test_a_missing_manifest_is_the_only_finding_and_the_clip_keeps_its_file_name(
        pair: Pair) -> None:
    """Rule: without its manifest a clip is reported under its file name, with the
    manifest-missing finding alone (no field findings about a manifest that is not there)."""
    pair.manifest.unlink()
    report, result = pair.verify()
    assert result.problems == [f"manifest-missing: {pair.manifest} is missing"]
    assert (result.clip_id, result.name) == (pair.clip.name, pair.clip.name)
    assert report.warnings == [pair.unanchored_warning(), _custody_warning(pair.source)]


def test_a_manifest_not_in_canonical_form_is_named(pair: Pair) -> None:
    """Rule: a manifest whose signed bytes are not their RFC 8785 form fails with the
    manifest-canonical finding."""
    pair.write(dsse.MANIFEST, json.dumps(pair.signed(), indent=1).encode(), [pair.key])
    _, result = pair.verify()
    assert result.problems == [
        "manifest-canonical: manifest payload is not in canonical (RFC 8785) form"]


def test_a_manifest_naming_another_key_fails_against_the_certificate(pair: Pair) -> None:
    """Rule: the manifest's station key must be the certificate's: a manifest re-signed
    to name another key fails with manifest-station."""
    cert_keyid = pair.key.keyid
    pair.resign(lambda m: m["station"].update(key_id="0" * 64))
    _, result = pair.verify()
    assert result.problems == [f"manifest-station: manifest names key {'0' * 64!r}, the "
                               f"certificate's keyid is {cert_keyid}"]


def test_unknown_manifest_fields_are_a_warning_for_the_clip(pair: Pair) -> None:
    """Rule: fields this verifier does not know are a warning naming them, for the clip."""
    pair.resign(lambda m: m.update(extra="x"))
    report, result = pair.verify()
    assert result.problems == []
    assert (f"{pair.clip_id}: manifest has fields this verifier does not know: extra"
            in report.warnings)


def test_a_clip_file_under_the_safe_form_of_its_name_is_not_called_renamed(
        pair: Pair) -> None:
    """Rule: an exported clip file carries the safe form of the camera's name; a file under
    that name is not reported as renamed."""
    name = "clip 1 (front).MP4"
    pair.resign(lambda m: m["file"].update(name=name))
    safe = pair.clip.with_name(safe_name(name))
    assert safe.name != name
    pair.clip.rename(safe)
    report, result = pair.verify(clip=safe)
    source = f"{safe} + {pair.manifest}"
    assert result.problems == [] and result.name == name
    assert report.warnings == [pair.unanchored_warning(source), _custody_warning(source)]


def test_a_certificate_in_trust_anchors_the_clip_without_a_warning(pair: Pair) -> None:
    """Rule: with --trust holding the station certificate, the clip is anchored and the
    report does not warn that the certificate is not anchored."""
    trust = x509.load_pem_x509_certificates(pair.cert.read_bytes())
    report, result = pair.verify(trust=trust)
    assert report.ok and result.trust == "anchored"
    assert report.warnings == [_custody_warning(pair.source)]


def test_a_certificate_outside_trust_fails_the_clip_with_the_chain_finding(
        pair: Pair) -> None:
    """Rule: a station certificate that does not chain to --trust is a cert-invalid finding
    for the pair, and its clip fails trust naming that finding."""
    stranger = make_dev_certificate(StationKey.generate(), "ST-9999")
    report, result = pair.verify(trust=[stranger])
    assert report.problems and report.problems[0].startswith(f"cert-invalid: {pair.source}: ")
    assert result.trust == "failed"
    assert result.problems == [f"trust: the station certificate does not establish who signed "
                               f"this clip ({report.problems[0]})"]
    assert not [w for w in report.warnings if "not anchored" in w]


def test_a_clip_that_fails_to_read_is_named_with_its_path_and_the_reason(pair: Pair) -> None:
    """Rule: a clip whose bytes cannot be read (an I/O error) is file-missing with the path
    the auditor gave and the system's reason (/proc/self/mem: offset 0 is never mapped)."""
    clip = Path("/proc/self/mem")
    _, result = pair.verify(clip=clip)
    assert f"file-missing: cannot read {clip}: Input/output error" in result.problems


def test_files_inside_a_target_are_hashed_and_read_without_following_a_link(
        pair: Pair, tmp_path: Path) -> None:
    """Rule: a file inside a target (a vault object, a data directory's certificate) that is
    a link is not followed: hashing it and loading it as a certificate say so."""
    link = tmp_path / "link"
    link.symlink_to(pair.clip)
    report = Report()
    assert hash_paths([link], report) == {
        link: f"{link} is, or lies below, a symbolic link (not followed)"}
    cert_link = tmp_path / "cert-link"
    cert_link.symlink_to(pair.cert)
    assert load_identity(cert_link, report, "here") is None
    assert report.problems == [f"cert-missing: here: no usable station certificate: "
                               f"{cert_link} is, or lies below, a symbolic link (not followed)"]
    assert os.path.exists(cert_link)
