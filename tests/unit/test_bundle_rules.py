"""``bwc-agent verify <bundle>``: what an auditor relies on, one forgery or hostile file each.

One station is built per module (tests/support/stations.rotated_station: a clip sealed
and tagged under the first key, a key rotation, a clip sealed under the new key) and
exported once; each test changes its own copy of the bundle and checks the verifier's
findings word for word: which file, which clip, which certificate, and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.verify import Report, verify_paths
from agent.verify.files import LIMITS
from agent.verify.layout import safe_name
from tests.support.bundles import copy_bundle, relist
from tests.support.stations import rotated_station
from tests.support.templates import built_once

UUID = "01a22b98-0000-7000-8000-000000000000"  # clip-id shaped, no such clip


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("rotated-station", tmp_path_factory, rotated_station)


@pytest.fixture
def bundle(station: Path, tmp_path: Path) -> Path:
    return copy_bundle(station, tmp_path)


# --- helpers -----------------------------------------------------------------------------

def _problems(report: Report) -> list[str]:
    return [*report.problems, *(p for c in report.clips for p in c.problems)]


def _clip_ids(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / "data" / "clips").iterdir())


def _clip(report: Report, clip_id: str) -> Any:
    (result,) = [c for c in report.clips if c.clip_id == clip_id]
    return result


def _keys(station: Path) -> tuple[StationKey, StationKey]:
    """The retired key and the one in force."""
    (old,) = (station / "data" / "keys" / "archive").glob("*.key")
    return StationKey.load(old), StationKey.load(station / "data" / "keys" / "station.key")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# Certificates valid long before the station was built (a template station may be older
# than a certificate made "now" would allow), and for a long time after.
_SINCE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_UNTIL = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate authority (the platform's, in production) valid from _SINCE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_SINCE).not_valid_after(_UNTIL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issued(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
            key: StationKey) -> x509.Certificate:
    """A station certificate for ``key`` issued by the CA, as agent.custody.keys makes them."""
    return (x509.CertificateBuilder().subject_name(_STATION).issuer_name(ca_cert.subject)
            .public_key(key.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(_SINCE).not_valid_after(_UNTIL)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(bytes.fromhex(key.keyid)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


_STATION = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent station"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "ST-0001")])


# --- the station's certificates ----------------------------------------------------------

def test_a_linked_certificate_is_refused_with_the_reason(bundle: Path, tmp_path: Path) -> None:
    """Rule: a certificate inside a bundle is never read through a link; the finding says
    it is a link."""
    pem = bundle / "certs" / "station.pem"
    shutil.move(pem, tmp_path / "elsewhere.pem")
    pem.symlink_to(tmp_path / "elsewhere.pem")
    report = verify_paths([bundle])
    assert (f"cert-missing: {bundle}: no usable station certificate: certs/station.pem is a "
            "symbolic link (not followed)") in report.problems


def test_a_certificate_below_a_linked_directory_is_refused_with_the_reason(
        bundle: Path, tmp_path: Path) -> None:
    """Rule: nothing below a linked directory of a bundle is read; the finding names the
    link the certificate lies below."""
    shutil.move(bundle / "certs", tmp_path / "certs")
    (bundle / "certs").symlink_to(tmp_path / "certs")
    report = verify_paths([bundle])
    assert (f"cert-missing: {bundle}: no usable station certificate: certs/station.pem lies "
            "below certs, which is not read (certs is a symbolic link (not followed))") in \
        report.problems


def test_an_unusable_retired_key_certificate_is_named(bundle: Path) -> None:
    """Rule: a certs/keys/<keyid>.pem that holds no certificate is named, with the bundle."""
    name = "ab" * 32 + ".pem"
    (bundle / "certs" / "keys" / name).write_bytes(b"not a certificate")
    report = verify_paths([bundle])
    assert any(p.startswith(f"rotation-cert: {bundle}: certs/keys/{name} holds no usable "
                            "station certificate: ") for p in report.problems), report.problems


def test_under_another_ca_both_certificates_fail_and_so_does_every_clip(
        bundle: Path, tmp_path: Path) -> None:
    """Rule: with --trust of a CA that issued neither, the station certificate fails for
    the bundle, the retired key's certificate fails for its rotation, and every clip
    fails with the certificate's reason."""
    ca = DevCA(tmp_path / "ca", name="someone else's CA")
    report = verify_paths([bundle], trust=ca.cert_path)
    invalid = [p for p in report.problems if p.startswith("cert-invalid:")]
    assert invalid and all(p.startswith(f"cert-invalid: {bundle}: ") for p in invalid), invalid
    assert any(p.startswith(f"rotation-cert: {bundle}: rotation at seq ")
               and ": certificate of the old key " in p for p in report.problems), \
        report.problems
    assert {c.trust for c in report.clips} == {"failed"}
    for clip in report.clips:
        assert (f"trust: the station certificate does not establish who signed this clip "
                f"({invalid[0]})") in clip.problems


def test_certificates_issued_by_the_trusted_ca_anchor_every_clip(
        station: Path, bundle: Path, tmp_path: Path) -> None:
    """Rule: when the CA given with --trust issued the station's certificates (the one in
    force and the retired key's), every clip is anchored."""
    ca_key, ca_cert = _ca()
    (tmp_path / "ca.pem").write_bytes(_pem(ca_cert))
    old, new = _keys(station)
    (bundle / "certs" / "station.pem").write_bytes(_pem(_issued(ca_key, ca_cert, new)))
    relist(bundle, "certs/station.pem")
    retired = f"certs/keys/{old.keyid}.pem"
    (bundle / retired).write_bytes(_pem(_issued(ca_key, ca_cert, old)))
    relist(bundle, retired)
    report = verify_paths([bundle], trust=tmp_path / "ca.pem")
    assert report.ok, _problems(report)
    assert {c.trust for c in report.clips} == {"anchored"}


def test_a_certificate_that_expired_after_the_checkpoint_is_a_warning(
        station: Path, bundle: Path) -> None:
    """Rule: the station certificate is judged when the bundle's checkpoint was signed: one
    that expired since is a warning naming when, not a failure."""
    _, key = _keys(station)
    rel = "custody/checkpoint.dsse.json"
    body = json.loads(dsse.b64decode(json.loads((bundle / rel).read_bytes())["payload"]))
    body["at"] = "2020-06-01T00:00:00.000Z"
    (bundle / rel).write_text(json.dumps(dsse.sign_envelope(dsse.CHECKPOINT,
                                                            canonicalize(body), [key])))
    relist(bundle, rel)
    cert = (x509.CertificateBuilder().subject_name(_STATION).issuer_name(_STATION)
            .public_key(key.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key.private_key, None))
    (bundle / "certs" / "station.pem").write_bytes(_pem(cert))
    relist(bundle, "certs/station.pem")
    report = verify_paths([bundle])
    assert not [p for p in _problems(report) if p.startswith("cert-")], _problems(report)
    assert (f"{bundle}: the station certificate expired at 2021-01-01T00:00:00+00:00, after "
            "the signatures were made") in report.warnings


# --- sizes the verifier reads ------------------------------------------------------------

def test_a_tag_file_over_its_size_is_not_hashed_and_says_so(bundle: Path) -> None:
    """Rule: a tag file larger than this verifier reads (1 MiB for bag-info.txt) is named
    with the limit, not hashed."""
    info = bundle / "bag-info.txt"
    info.write_bytes(info.read_bytes() + b"\n" * LIMITS["small"])
    report = verify_paths([bundle])
    assert ("bag-digest: bag-info.txt: bag-info.txt is larger than this verifier reads "
            "(1 MiB)") in report.problems


def test_a_tag_file_of_exactly_the_limit_is_hashed(bundle: Path) -> None:
    """Rule: the limit is inclusive: a README.txt of exactly 1 MiB is read and checked."""
    readme = bundle / "README.txt"
    text = readme.read_bytes()
    readme.write_bytes(text + b" " * (LIMITS["small"] - len(text)))
    report = verify_paths([bundle])
    assert not [p for p in _problems(report) if "larger than this verifier reads" in p]
    assert any(p.startswith("bag-digest: README.txt has SHA-256 ") for p in report.problems), \
        report.problems


def test_a_clip_of_any_size_is_hashed(bundle: Path) -> None:
    """Rule: the payload has no size limit: a clip over a tag file's limit is hashed, and
    its changed bytes are named by their digest."""
    clip_id = _clip_ids(bundle)[0]
    (path,) = (bundle / "data" / "clips" / clip_id).iterdir()
    big = path.read_bytes() + b"\0" * (2 * LIMITS["small"])
    path.write_bytes(big)
    rel = path.relative_to(bundle).as_posix()
    sha = hashlib.sha256(big).hexdigest()
    problems = _clip(verify_paths([bundle]), clip_id).problems
    assert any(p.startswith(f"bag-digest: {rel} has SHA-256 {sha}, ") for p in problems), \
        problems


# --- which clip a file finding belongs to ------------------------------------------------

def test_an_unlisted_file_is_named_under_the_clip_its_path_names(bundle: Path) -> None:
    """Rule: a file under data/clips/<clip id> (even the bare path) belongs to that clip's
    findings; one under a directory that is no clip id, or a manifest whose name is no
    clip id, or a clip-id name elsewhere under data/, is a finding of the bundle."""
    clips = bundle / "data" / "clips"
    (clips / UUID).write_bytes(b"x")
    (clips / "not-a-clip").mkdir()
    (clips / "not-a-clip" / "x.bin").write_bytes(b"x")
    (bundle / "data" / "manifests" / "bogus.dsse.json").write_bytes(b"{}")
    (bundle / "data" / "extra").mkdir()
    (bundle / "data" / "extra" / _clip_ids(bundle)[0]).write_bytes(b"x")
    report = verify_paths([bundle])

    def unlisted(rel: str) -> str:
        return f"bag-unlisted: {rel} is in the payload but not in manifest-sha256.txt"

    assert unlisted(f"data/clips/{UUID}") in _clip(report, UUID).problems
    for rel in ("data/clips/not-a-clip/x.bin", "data/manifests/bogus.dsse.json",
                f"data/extra/{_clip_ids(bundle)[0]}"):
        assert unlisted(rel) in report.problems, rel
        assert not any(unlisted(rel) in c.problems for c in report.clips), rel
    assert not {"not-a-clip", "bogus"} & {c.clip_id for c in report.clips}


# --- officers and cases ------------------------------------------------------------------

def test_each_clip_carries_the_cases_it_is_tagged_with(bundle: Path) -> None:
    """Rule: the report gives each clip of a bundle the cases its log tags it with."""
    report = verify_paths([bundle])
    assert report.ok, _problems(report)
    cases = {c.clip_id: c.cases for c in report.clips}
    first, second = sorted(cases)  # clip ids are time-ordered: the tagged clip came first
    assert cases == {first: ["CASE-7"], second: []}


def test_the_bundled_credential_key_is_checked_against_the_one_given(
        bundle: Path, tmp_path: Path) -> None:
    """Rule: the officers' credential key carried in a bundle is only a hint: with
    --officer-key the auditor's key must be it (a finding naming both key ids), without it
    the bundled key's id is given to compare."""
    bundled, given = StationKey.generate(), StationKey.generate()
    (bundle / "officers").mkdir()
    (bundle / "officers" / "credential-key.pem").write_bytes(bundled.public_pem())
    relist(bundle, "officers/credential-key.pem")
    (tmp_path / "officer-key.pem").write_bytes(given.public_pem())
    checked = verify_paths([bundle], officer_key=tmp_path / "officer-key.pem")
    assert (f"officer-key: officers/credential-key.pem has key id {bundled.keyid}, not the "
            f"credential key given with --officer-key ({given.keyid})") in checked.problems
    unchecked = verify_paths([bundle])
    assert unchecked.ok, _problems(unchecked)
    assert (f"{bundle}: the credential key officers/credential-key.pem is not anchored (no "
            f"--officer-key given); its key id is {bundled.keyid}: compare it with the "
            "platform's record") in unchecked.warnings


# --- names of clip files -----------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("x" * 250 + "." + "e" * 16, "x" * 183 + "." + "e" * 16),  # 16 bytes: kept
    ("x" * 250 + "." + "e" * 17, "x" * 200),                   # 17 bytes: not kept
    ("x" * 250 + ".", "x" * 200),                              # an empty extension
])
def test_an_extension_of_up_to_16_bytes_survives_the_cut(name: str, expected: str) -> None:
    """Rule: a long name keeps its extension when it has 1 to 16 UTF-8 bytes."""
    assert safe_name(name) == expected
