"""Whom the verifier trusts: the station certificate and the signatures, finding by finding.

A station seals one clip and exports it once (tests/support/templates.py).  Each test
takes the clip with its signed manifest and certificate, or a copy of the bundle, and
changes one thing the way a damaged file or a forger holding the station's own key could:
certificates made here (through an intermediate CA, with another kind of key, with a
damaged key, extension or name, ending at the signing time), envelopes signed again (no
keyid, extra signatures, another payload type, an unreadable payload).  Each checks the
exact finding or warning an auditor (or a script) reads, and the verdict.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID

from agent.cli.common import human_size
from agent.cli.main import main
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey, make_dev_certificate
from agent.devpki import DevCA, cert_pem
from agent.verify import Report, checks, verify_paths
from agent.verify.checks import hash_all
from agent.verify.layout import CHECKPOINT
from tests.support.bundles import copy_bundle, relist
from tests.support.certificates import (
    ca_since_yesterday,
    intermediate_ca,
    issued_a_day_ago,
    reissued,
)
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
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _bit_string_common_name(cert: x509.Certificate) -> bytes:
    """``cert`` (PEM) with its subject's common name encoded as a BIT STRING: the DER still
    parses, but cryptography refuses the name (a TypeError) when it is first read."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    value = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    encoded = value.encode()
    # The subject follows the issuer in the DER: its common name is the last occurrence.
    at = der.rindex(bytes([len(encoded)]) + encoded) - 1
    assert der[at] in (0x0C, 0x13)  # UTF8String or PrintableString
    der[at] = 0x03
    return cert_pem(x509.load_der_x509_certificate(bytes(der)))


# --- how fast, and how many at once ----------------------------------------------------------

def test_verify_says_how_many_bytes_it_hashed_and_in_how_long(
        pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: the text report ends with 'hashed <size> in <s> s (<size>/s)': the bytes of
    the files it hashed (here the clip) and the time hashing them took, within the time
    the whole verification took."""
    started = time.monotonic()
    code = main(["verify", str(pair.clip), str(pair.manifest), "--cert", str(pair.cert)])
    took = time.monotonic() - started
    assert code == 0
    last = capsys.readouterr().out.splitlines()[-1]
    match = re.fullmatch(r"hashed (.+) in (\d+\.\d\d) s \((.+)/s\)", last)
    assert match, last
    assert match[1] == human_size(pair.clip.stat().st_size)
    assert 0 <= float(match[2]) <= round(took, 2) + 0.01, (last, took)


def test_no_more_files_are_hashed_at_once_than_the_verifier_s_threads() -> None:
    """Rule: files are hashed several at once, but never more than _HASH_THREADS (more
    only thrash the disk): of one file more than that, the last waits for a free thread."""
    limit = checks._HASH_THREADS
    keys = list(range(limit + 1))
    changed = threading.Condition()
    state = {"active": 0, "started": 0, "peak": 0}

    def hasher(key: int) -> tuple[str, int]:
        with changed:
            state["active"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["active"])
            changed.notify_all()
            # Hold this thread until every file has started: were more threads allowed,
            # they all would now; as it is, the last file waits until this one gives up.
            changed.wait_for(lambda: state["started"] == len(keys), timeout=0.5)
            state["active"] -= 1
        return f"{key:064x}", key

    results = hash_all(keys, hasher, Report())
    assert results == {key: (f"{key:064x}", key) for key in keys}
    assert state["peak"] == limit


# --- the station certificate -------------------------------------------------------------

def test_a_certificate_the_parser_refuses_is_named_with_its_reason_cut_at_300(
        pair: Pair, tmp_path: Path) -> None:
    """Rule: a certificate whose key cannot be read is cert-invalid naming the pair and the
    file, with the parser's reason cut to its first 300 characters."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = bytearray(DevCA(tmp_path / "ca").issue_for_key(
        key.public_key(), "ST-0001").public_bytes(serialization.Encoding.DER))  # type: ignore[arg-type]
    # The modulus INTEGER of the RSA key (1024 bits: 0x81 0x81 bytes long) made a
    # context-specific tag: the certificate parses, its key does not.
    at = der.index(bytes.fromhex("30818902818100")) + 3
    der[at] = 0x82
    damaged = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(ValueError) as refused:
        damaged.public_key()
    reason = str(refused.value)
    assert len(reason) > 300
    pair.cert.write_bytes(cert_pem(damaged))
    report, result = pair.verify()
    assert report.problems == [f"cert-invalid: {pair.source}: {pair.cert} is not a usable PEM "
                               f"certificate: {reason[:300]}"]
    assert result.trust == "failed" and not report.ok


def test_a_certificate_with_a_key_no_station_signs_with_names_the_key_and_the_rule(
        pair: Pair, tmp_path: Path) -> None:
    """Rule: station signatures are Ed25519: a station certificate carrying an RSA key is
    cert-invalid naming the file and the kind of key; the manifest's signature is not
    checked and the clip fails."""
    public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pair.cert.write_bytes(cert_pem(DevCA(tmp_path / "ca").issue_for_key(
        public, "ST-0001")))  # type: ignore[arg-type]
    report, result = pair.verify()
    invalid = (f"cert-invalid: {pair.source}: {pair.cert} carries a "
               f"{type(public).__name__} key; station signatures are Ed25519")
    assert report.problems == [invalid]
    assert result.problems == [
        "signature: manifest: not checked, no usable station certificate",
        f"trust: the station certificate does not establish who signed this clip ({invalid})"]


def test_a_certificate_with_a_damaged_name_is_a_finding_not_a_crash(
        bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a bundle's station certificate whose name cryptography refuses (a common name
    encoded as a BIT STRING) is cert-invalid with the parser's reason, and verify exits 1
    with its report, like any other damaged certificate."""
    pem = bundle / "certs" / "station.pem"
    pem.write_bytes(_bit_string_common_name(x509.load_pem_x509_certificate(pem.read_bytes())))
    relist(bundle, "certs/station.pem")
    assert main(["verify", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert (f"problem: cert-invalid: {bundle}: certs/station.pem is not a usable PEM "
            "certificate: oid must be X500_UNIQUE_IDENTIFIER for BitString type.\n") in out
    assert out.splitlines()[-2].startswith("NOT VERIFIED: 1 of 1 clip(s) failed")


@pytest.mark.parametrize("where", ["intermediate", "trust"])
def test_a_ca_certificate_with_a_damaged_name_is_a_finding_not_a_crash(
        pair: Pair, tmp_path: Path, where: str) -> None:
    """Rule: when the certificate file's second certificate (an intermediate CA) or a
    --trust CA has a name cryptography refuses, the station certificate cannot be checked
    against --trust: a cert-invalid finding with the parser's reason, and the clip fails."""
    leaf = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    damaged = _bit_string_common_name(make_dev_certificate(StationKey.generate(), "a CA"))
    trust = [DevCA(tmp_path / "ca").cert]
    if where == "intermediate":
        pair.cert.write_bytes(cert_pem(leaf) + damaged)
    else:
        trust = [x509.load_pem_x509_certificate(damaged)]
    report, result = pair.verify(trust=trust)
    assert report.problems == [f"cert-invalid: {pair.source}: the certificate cannot be "
                               "checked: oid must be X500_UNIQUE_IDENTIFIER for BitString type."]
    assert result.trust == "failed" and not result.ok


@pytest.mark.parametrize(("oid", "value", "error"), [
    (ExtensionOID.CERTIFICATE_POLICIES, b"\x01\x01\xff", ValueError),  # not a SEQUENCE
    (ExtensionOID.TLS_FEATURE, b"\x30\x03\x02\x01\x63", KeyError),  # feature 99: unknown
], ids=["malformed", "unknown-tls-feature"])
def test_a_certificate_with_a_damaged_extension_cannot_be_checked_and_says_why(
        pair: Pair, oid: x509.ObjectIdentifier, value: bytes, error: type[Exception]) -> None:
    """Rule: a certificate whose extension cannot be read (malformed, or naming a value
    cryptography does not know; read only when the certificate is checked) is cert-invalid
    saying it cannot be checked, with the parser's reason, instead of ending the
    verification."""
    leaf = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    extension = x509.UnrecognizedExtension(oid, value)
    damaged = reissued(leaf, pair.key.private_key, extra=[(extension, False)])
    with pytest.raises(error) as refused:
        _ = damaged.extensions
    pair.cert.write_bytes(cert_pem(damaged))
    report, result = pair.verify()
    assert report.problems == [f"cert-invalid: {pair.source}: the certificate cannot be "
                               f"checked: {refused.value}"]
    assert result.trust == "failed" and not report.ok


def test_the_manifest_must_name_the_station_of_the_certificate(pair: Pair) -> None:
    """Rule: a manifest (signed with the station's own key) naming another station than the
    certificate's common name fails with manifest-station naming both."""
    pair.resign(lambda m: m["station"].update(id="ST-0002"))
    _, result = pair.verify()
    assert result.problems == ["manifest-station: manifest names station 'ST-0002', the "
                               "certificate is for 'ST-0001'"]


def test_a_station_certificate_reaches_trust_through_the_intermediates_in_its_file(
        pair: Pair, tmp_path: Path) -> None:
    """Rule: the certificates after the first in the station's certificate file are its
    intermediate CAs: through them it chains to --trust and the clip is anchored; the
    same certificate alone does not reach it."""
    ca = ca_since_yesterday(tmp_path / "ca")
    intermediate = intermediate_ca(ca)
    leaf = issued_a_day_ago(intermediate, pair.key, "ST-0001")
    pair.cert.write_bytes(cert_pem(leaf) + cert_pem(intermediate.cert))
    report, result = pair.verify(trust=[ca.cert])
    assert report.problems == [] and result.problems == []
    assert result.trust == "anchored" and report.ok
    pair.cert.write_bytes(cert_pem(leaf))
    report, result = pair.verify(trust=[ca.cert])
    assert report.problems == [f"cert-invalid: {pair.source}: certificate issuer CN=stations "
                               "CA is not among the 1 trust anchor(s)"]
    assert result.trust == "failed"


def test_without_trust_a_ca_issued_certificate_names_its_issuer(pair: Pair,
                                                                tmp_path: Path) -> None:
    """Rule: without --trust, the warning about a CA-issued station certificate says whom
    it is issued by (not "self-signed"), with its fingerprint to compare."""
    ca = ca_since_yesterday(tmp_path / "ca")
    leaf = issued_a_day_ago(ca, pair.key, "ST-0001")
    pair.cert.write_bytes(cert_pem(leaf))
    report, _ = pair.verify()
    assert (f"{pair.source}: station certificate {leaf.subject.rfc4514_string()} is issued "
            f"by {ca.cert.subject.rfc4514_string()} / not anchored (no --trust given); its "
            f"SHA-256 fingerprint is {_fingerprint(leaf)}: compare it with the platform's "
            "record of the station") in report.warnings


def _ending_when_sealed(pair: Pair) -> x509.Certificate:
    """A station certificate valid only at one second, and the manifest re-signed to say
    the clip was copied (sealed) at exactly that second."""
    cert = make_dev_certificate(pair.key, "ST-0001", days=0)
    assert cert.not_valid_before_utc == cert.not_valid_after_utc
    pair.cert.write_bytes(cert_pem(cert))
    sealed = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    pair.resign(lambda m: m["ingest"].update(copied_at=sealed))
    return cert


def _expired_warning(pair: Pair, cert: x509.Certificate) -> str:
    return (f"{pair.source}: the station certificate expired at "
            f"{cert.not_valid_after_utc.isoformat()}, after the signatures were made")


def test_a_certificate_ending_at_the_signing_time_is_valid_and_warned_expired_since(
        pair: Pair) -> None:
    """Rule: a certificate is valid up to and including its notAfter (RFC 5280): one
    ending at the very second the clip was sealed verifies, with the warning that it
    expired after the signatures were made."""
    cert = _ending_when_sealed(pair)
    report, result = pair.verify()
    assert report.problems == [] and result.problems == [] and report.ok
    assert report.warnings[:2] == [_expired_warning(pair, cert), pair.unanchored_warning()]
    assert len(report.warnings) == 3, report.warnings  # and: custody log not checked


def test_a_certificate_is_not_called_expired_at_its_last_instant(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: verified at the very instant of its notAfter, a certificate has not expired
    yet (it is valid through that instant): no expiry warning."""
    cert = _ending_when_sealed(pair)
    last = cert.not_valid_after_utc

    class AtTheLastInstant(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> AtTheLastInstant:  # type: ignore[override]
            return cls.fromtimestamp(last.timestamp(), tz)

    monkeypatch.setattr(checks, "dt", SimpleNamespace(datetime=AtTheLastInstant, UTC=dt.UTC))
    report, _ = pair.verify()
    assert report.ok
    assert _expired_warning(pair, cert) not in report.warnings
    assert len(report.warnings) == 2, report.warnings  # not anchored; custody log not checked


# --- the station's signature -------------------------------------------------------------

def _station_signature(pair: Pair, payload_type: str = dsse.MANIFEST) -> dict[str, Any]:
    (signature,) = dsse.sign_envelope(payload_type, pair.payload(), [pair.key])["signatures"]
    return dict(signature)


def _write_envelope(path: Path, envelope: dict[str, Any]) -> None:
    path.write_text(json.dumps(envelope), encoding="utf-8")


@pytest.mark.parametrize("keyid", [None, ""])
def test_a_signature_that_does_not_name_the_station_s_keyid_does_not_count(
        pair: Pair, keyid: str | None) -> None:
    """Rule: every station signature names the station's keyid (FORMATS.md section 4): a
    manifest whose only signature is the station's but names no keyid (or an empty one)
    fails, though DSSE alone would accept it."""
    signature = _station_signature(pair)
    if keyid is None:
        del signature["keyid"]
    else:
        signature["keyid"] = keyid
    envelope = pair.envelope()
    envelope["signatures"] = [signature]
    _write_envelope(pair.manifest, envelope)
    report, result = pair.verify()
    assert result.problems == [f"signature: manifest: no signature names the station's keyid "
                               f"{pair.key.keyid} (a keyid is required, FORMATS.md section 4)"]
    assert not report.ok


def test_every_other_signature_beside_the_station_s_is_a_warning_naming_it(
        pair: Pair) -> None:
    """Rule: beside the station's signature, each other entry (another key without a keyid,
    an empty keyid, an entry that is no object, a long keyid, a keyid that is no string) is
    a warning naming its index and keyid (at most 80 characters, else 'no keyid'); the
    clip verifies."""
    other = StationKey.generate()
    envelope = pair.envelope()
    by_other = dict(dsse.sign_envelope(dsse.MANIFEST, pair.payload(), [other])["signatures"][0])
    del by_other["keyid"]
    long_keyid = "k" * 100
    envelope["signatures"] = [_station_signature(pair), by_other,
                              {"keyid": "", "sig": by_other["sig"]}, 5,
                              {"keyid": long_keyid, "sig": by_other["sig"]},
                              {"keyid": 7, "sig": by_other["sig"]}]
    _write_envelope(pair.manifest, envelope)
    report, result = pair.verify()
    assert result.problems == [] and report.ok
    names = ["no keyid", "no keyid", "no keyid", f"keyid {'k' * 80}", "no keyid"]
    ignored = [f"{pair.source}: manifest: signature {index} ({name}) is not the station's, or "
               "does not verify; it is ignored (only the station's signature counts)"
               for index, name in enumerate(names, start=1)]
    assert [w for w in report.warnings if ": manifest: signature " in w] == ignored


def test_a_payload_that_is_not_base64_is_named_once(pair: Pair) -> None:
    """Rule: a manifest envelope whose payload is not base64 is one signature finding (the
    payload cannot be read, nothing else is checked in it); without a certificate to check
    the signature, the finding says the envelope has no readable payload."""
    envelope = pair.envelope()
    envelope["payload"] = "%%%"
    _write_envelope(pair.manifest, envelope)
    _, result = pair.verify()
    assert result.problems == [
        "signature: manifest: payload is not valid base64: Only base64 data is allowed"]
    pair.cert.unlink()
    _, result = pair.verify()
    assert result.problems == [
        "signature: manifest: not checked, no usable station certificate",
        "signature: manifest: envelope has no readable payload",
        "trust: the station certificate does not establish who signed this clip "
        f"(cert-missing: {pair.source}: no usable station certificate: {pair.cert} is "
        "missing)"]


# --- the bundle's checkpoint -------------------------------------------------------------

def _resign_checkpoint(bundle: Path, station: Path, *, payload_type: str = dsse.CHECKPOINT,
                       others: tuple[StationKey, ...] = (),
                       change: dict[str, Any] | None = None) -> None:
    """The bundle's checkpoint signed again with the station's key (and ``others``), its
    payload updated with ``change``; the tag manifest records the new file."""
    path = bundle / CHECKPOINT
    body = json.loads(dsse.b64decode(json.loads(path.read_bytes())["payload"]))
    body.update(change or {})
    key = StationKey.load(station / "data" / "keys" / "station.key")
    _write_envelope(path, dsse.sign_envelope(payload_type, canonicalize(body), [key, *others]))
    relist(bundle, CHECKPOINT)


def test_a_checkpoint_signed_as_another_kind_of_statement_is_refused(bundle: Path,
                                                                     station: Path) -> None:
    """Rule: the checkpoint's bytes signed by the station as a manifest are not a signed
    checkpoint: a signature finding naming the checkpoint file and both types."""
    _resign_checkpoint(bundle, station, payload_type=dsse.MANIFEST)
    report = verify_paths([bundle])
    assert [p for p in report.problems if p.startswith("signature:")] == [
        f"signature: {CHECKPOINT}: payloadType is {dsse.MANIFEST!r}, expected "
        f"{dsse.CHECKPOINT!r}"]
    assert not report.ok


def test_another_signature_on_the_checkpoint_is_a_warning_naming_it(bundle: Path,
                                                                    station: Path) -> None:
    """Rule: a checkpoint the station signed that also carries another key's signature
    verifies, and the report warns, for the bundle and the checkpoint file, which
    signature is ignored."""
    other = StationKey.generate()
    _resign_checkpoint(bundle, station, others=(other,))
    report = verify_paths([bundle])
    assert report.ok, report.problems
    assert (f"{bundle}: {CHECKPOINT}: signature 1 (keyid {other.keyid}) is not the station's, "
            "or does not verify; it is ignored (only the station's signature counts)") in \
        report.warnings


def test_a_checkpoint_field_finding_names_the_checkpoint_file(bundle: Path,
                                                              station: Path) -> None:
    """Rule: a checkpoint signed by the station with a size that is no count is a
    checkpoint-field finding naming the checkpoint file and the value."""
    _resign_checkpoint(bundle, station, change={"size": -1})
    report = verify_paths([bundle])
    assert f"checkpoint-field: {CHECKPOINT} size -1 is not a count" in report.problems
    assert not report.ok
