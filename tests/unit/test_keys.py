"""Station identity: key files, keyids and certificates, checked against the openssl CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.custody import keys
from agent.custody.keys import StationKey
from agent.devpki import DevCA, cert_pem, key_pem
from agent.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    key = StationKey.generate()
    path = tmp_path / "station.key"
    key.save(path)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    loaded = StationKey.load(path)
    assert loaded.keyid == key.keyid
    key.public_key.verify(loaded.sign(b"data"), b"data")


def test_save_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "station.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    StationKey.generate().save(path)
    assert _mode(path) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o666])
def test_load_refuses_keys_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "station.key"
    StationKey.generate().save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as err:
        StationKey.load(path)
    message = str(err.value)
    assert f"station key {path} has mode {mode:04o}" in message
    assert f"fix: chmod 600 {path}" in message


def test_load_refuses_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    path.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    path.chmod(0o600)
    expected = f"station key {path} is an EC secp256r1 key, not an Ed25519 key"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        StationKey.load(path)


def test_load_refuses_garbage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "station.key"
    path.write_bytes(b"not a key\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=re.escape(f"station key {path} is not an unencrypted")):
        StationKey.load(path)
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=re.escape(f"station key {missing} does not exist")):
        StationKey.load(tmp_path / "nope.key")


def test_keyid_is_sha256_of_der_spki_as_openssl_computes_it(tmp_path: Path) -> None:
    key = StationKey.generate()
    (tmp_path / "pub.pem").write_bytes(key.public_pem())
    result = _sh("openssl pkey -pubin -in pub.pem -outform DER | sha256sum", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == key.keyid
    # The auditor's route: from the station certificate alone.
    (tmp_path / "station.pem").write_bytes(cert_pem(keys.make_dev_certificate(key, "ST-1")))
    result = _sh("openssl x509 -in station.pem -pubkey -noout"
                 " | openssl pkey -pubin -outform DER | sha256sum", tmp_path)
    assert result.stdout.split()[0] == key.keyid
    assert keys.keyid_of(key.public_key) == key.keyid
    assert len(key.keyid) == 64 and key.keyid == key.keyid.lower()


def test_signatures_interoperate_with_openssl(tmp_path: Path) -> None:
    key = StationKey.generate()
    key.save(tmp_path / "station.key")
    (tmp_path / "pub.pem").write_bytes(key.public_pem())
    (tmp_path / "data.bin").write_bytes(b"clip bytes \x00\xff")
    (tmp_path / "sig.bin").write_bytes(key.sign(b"clip bytes \x00\xff"))
    verify = ("openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in data.bin "
              "-sigfile sig.bin")
    ok = _sh(verify, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "Signature Verified Successfully" in ok.stdout
    (tmp_path / "data.bin").write_bytes(b"clip bytes \x00\xfe")
    assert _sh(verify, tmp_path).returncode != 0
    # And the saved key file is a standard one openssl signs with.
    made = _sh("openssl pkeyutl -sign -inkey station.key -rawin -in data.bin -out osig.bin",
               tmp_path)
    assert made.returncode == 0, made.stderr
    key.public_key.verify((tmp_path / "osig.bin").read_bytes(), b"clip bytes \x00\xfe")


def test_dev_certificate_binds_keyid_to_station_id(tmp_path: Path) -> None:
    key = StationKey.generate()
    cert = keys.make_dev_certificate(key, "ST-0042", days=30)
    assert keys.certificate_station_id(cert) == "ST-0042"
    assert keys.certificate_keyid(cert) == key.keyid
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == bytes.fromhex(key.keyid)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)
    now = dt.datetime.now(dt.UTC)
    assert keys.certificate_problems(cert, now) == []
    assert keys.certificate_problems(cert, now, station_id="ST-0042") == []
    (tmp_path / "station.pem").write_bytes(cert_pem(cert))
    ok = _sh("openssl verify -CAfile station.pem station.pem", tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    subject = _sh("openssl x509 -in station.pem -noout -subject -ext subjectKeyIdentifier",
                  tmp_path).stdout
    assert "CN = ST-0042" in subject
    assert key.keyid.upper() in subject.replace(":", "").replace("\n", "").replace(" ", "")


def test_ca_issued_certificate_chains_to_the_anchor(tmp_path: Path, ca: DevCA) -> None:
    key = StationKey.generate()
    cert = keys.issue_station_certificate(ca, key, "ST-7")
    now = dt.datetime.now(dt.UTC)
    assert keys.certificate_problems(cert, now, [ca.cert], station_id="ST-7") == []
    (tmp_path / "station.pem").write_bytes(cert_pem(cert))
    ok = _sh(f"openssl verify -CAfile {ca.cert_path} station.pem", tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert keys.certificate_problems(cert, now) == [
        f"certificate {cert.subject.rfc4514_string()} is not self-signed (issuer "
        f"{ca.cert.subject.rfc4514_string()}) and no trust anchors were given to check it"]


def test_chain_problems_name_the_anchor(tmp_path: Path, ca: DevCA) -> None:
    cert = keys.issue_station_certificate(ca, StationKey.generate(), "ST-7")
    now = dt.datetime.now(dt.UTC)
    impostor = DevCA(tmp_path / "impostor")  # same name, different key
    issuer = ca.cert.subject.rfc4514_string()
    assert keys.certificate_problems(cert, now, [impostor.cert]) == [
        f"certificate signature does not verify against trust anchor {issuer}"]
    stranger = DevCA(tmp_path / "stranger", name="another CA")
    assert keys.certificate_problems(cert, now, [stranger.cert]) == [
        f"certificate issuer {issuer} is not among the 1 trust anchor(s)"]
    assert keys.certificate_problems(cert, now, [stranger.cert, ca.cert]) == []
    # A pinned self-signed certificate is its own anchor.
    dev = keys.make_dev_certificate(StationKey.generate(), "ST-8")
    assert keys.certificate_problems(dev, now, [dev]) == []
    # A leaf is no anchor for another certificate.
    assert keys.certificate_problems(dev, now, [cert]) == [
        f"certificate issuer {dev.issuer.rfc4514_string()} is not among the 1 trust anchor(s)"]


def test_validity_period_and_common_name_problems() -> None:
    key = StationKey.generate()
    cert = keys.make_dev_certificate(key, "ST-1")
    late = cert.not_valid_after_utc + dt.timedelta(days=1)
    early = (cert.not_valid_before_utc - dt.timedelta(days=1)).replace(tzinfo=None)  # naive = UTC
    [expired] = keys.certificate_problems(cert, late)
    assert expired == (f"certificate {cert.subject.rfc4514_string()} expired at "
                       f"{cert.not_valid_after_utc.isoformat()}, checked at {late.isoformat()}")
    [not_yet] = keys.certificate_problems(cert, early)
    assert "is not yet valid: valid from" in not_yet
    assert keys.certificate_problems(cert, dt.datetime.now(dt.UTC), station_id="ST-2") == [
        "certificate common name is 'ST-1', expected station ID 'ST-2'"]


def test_certificate_without_cn_or_with_a_non_ed25519_key(ca: DevCA) -> None:
    key = StationKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")])
    now = dt.datetime.now(dt.UTC)
    no_cn = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key).serial_number(1)
             .not_valid_before(now - dt.timedelta(hours=1))
             .not_valid_after(now + dt.timedelta(hours=1)).sign(key.private_key, None))
    assert keys.certificate_problems(no_cn, now) == [
        "certificate O=no cn has no single non-empty common name (the station ID)"]
    ec_leaf = ca.issue_for_key(ec.generate_private_key(ec.SECP256R1()).public_key(), "ST-3")
    assert keys.certificate_problems(ec_leaf, now, [ca.cert]) == [
        f"certificate {ec_leaf.subject.rfc4514_string()} carries an EC secp256r1 key; "
        "station keys are Ed25519"]


def test_key_certificate_mismatch_is_detected() -> None:
    key, other = StationKey.generate(), StationKey.generate()
    cert = keys.make_dev_certificate(key, "ST-1")
    keys.check_key_matches_certificate(key, cert)
    keys.check_key_matches_certificate(key.public_key, cert)
    with pytest.raises(ConfigError) as err:
        keys.check_key_matches_certificate(other, cert)
    assert str(err.value).startswith(
        f"station key (keyid {other.keyid}) does not match the certificate for "
        f"CN=ST-1,O=bwc-agent station (keyid {key.keyid})")


def test_load_public_key_from_spki_or_certificate(tmp_path: Path) -> None:
    key = StationKey.generate()
    (tmp_path / "pub.pem").write_bytes(key.public_pem())
    (tmp_path / "cert.pem").write_bytes(cert_pem(keys.make_dev_certificate(key, "PLATFORM")))
    for name in ("pub.pem", "cert.pem"):
        loaded = keys.load_public_key(tmp_path / name)
        assert keys.keyid_of(loaded) == key.keyid
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ec.pem").write_bytes(ec_pub)
    expected = f"{tmp_path / 'ec.pem'} holds an EC secp256r1 key, not an Ed25519 key"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        keys.load_public_key(tmp_path / "ec.pem")
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"junk\.pem is neither a PEM public key nor"):
        keys.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match=r"cannot read public key .*missing\.pem"):
        keys.load_public_key(tmp_path / "missing.pem")
    # A key file is read up to a bound: a file of exactly that size is read whole and parsed,
    # one byte over it is refused without being read whole.
    (tmp_path / "edge.pem").write_bytes(key.public_pem().ljust(keys.MAX_PUBLIC_KEY_FILE, b"\n"))
    assert keys.keyid_of(keys.load_public_key(tmp_path / "edge.pem")) == key.keyid
    (tmp_path / "huge.pem").write_bytes(b"\n" * (keys.MAX_PUBLIC_KEY_FILE + 1))
    expected = f"{tmp_path / 'huge.pem'} is larger than 1048576 bytes: not a PEM public key"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        keys.load_public_key(tmp_path / "huge.pem")


def test_load_certificate(tmp_path: Path) -> None:
    key = StationKey.generate()
    (tmp_path / "cert.pem").write_bytes(cert_pem(keys.make_dev_certificate(key, "ST-1")))
    assert keys.certificate_keyid(keys.load_certificate(tmp_path / "cert.pem")) == key.keyid
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    bad = tmp_path / "bad.pem"
    with pytest.raises(ConfigError, match=re.escape(f"{bad} is not a PEM certificate")):
        keys.load_certificate(tmp_path / "bad.pem")
    with pytest.raises(ConfigError, match="cannot read certificate"):
        keys.load_certificate(tmp_path / "none.pem")


def test_init_station_keys_creates_a_private_identity(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key_path, cert_path = keys.init_station_keys(data_dir, "ST-0001")
    assert key_path == data_dir / "keys" / "station.key"
    assert cert_path == data_dir / "keys" / "station.pem"
    assert _mode(data_dir / "keys") == 0o700
    assert _mode(key_path) == 0o600
    key = StationKey.load(key_path)
    cert = keys.load_certificate(cert_path)
    keys.check_key_matches_certificate(key, cert)
    assert keys.certificate_problems(cert, dt.datetime.now(dt.UTC), station_id="ST-0001") == []


def test_init_station_keys_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    key_path, cert_path = keys.init_station_keys(tmp_path, "ST-0001")
    before = key_path.read_bytes()
    with pytest.raises(ConfigError) as err:
        keys.init_station_keys(tmp_path, "ST-0001")
    assert str(err.value).startswith(
        f"station key {key_path} already exists; refusing to overwrite it")
    assert "--force" in str(err.value)
    assert key_path.read_bytes() == before
    keys.init_station_keys(tmp_path, "ST-0001", force=True)
    assert key_path.read_bytes() != before
    assert _mode(key_path) == 0o600
    keys.check_key_matches_certificate(StationKey.load(key_path), keys.load_certificate(cert_path))


def test_init_station_keys_completes_a_half_done_init(tmp_path: Path) -> None:
    # A crash between writing the key and the certificate: the key is kept.
    key_path, cert_path = keys.init_station_keys(tmp_path, "ST-0001")
    keyid = StationKey.load(key_path).keyid
    cert_path.unlink()
    keys.init_station_keys(tmp_path, "ST-0001")
    assert keys.certificate_keyid(keys.load_certificate(cert_path)) == keyid


def test_init_station_keys_tightens_an_existing_keys_dir(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)
    os.chmod(tmp_path / "keys", 0o755)
    keys.init_station_keys(tmp_path, "ST-0001")
    assert _mode(tmp_path / "keys") == 0o700


def test_keyid_of_matches_hashlib_over_der() -> None:
    key = StationKey.generate()
    der = key.public_key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(der) == 44  # Ed25519 SPKI: 12-byte header + 32-byte key
    assert keys.keyid_of(key.public_key) == hashlib.sha256(der).hexdigest()
