"""The station identity: an Ed25519 signing key and the X.509 certificate that names it.

Invariants:

- ``keyid`` = lowercase hex SHA-256 of the public key's DER
  SubjectPublicKeyInfo, so an auditor recomputes it with
  ``openssl pkey -pubin -outform DER | sha256sum``;
- the private key file is PKCS#8 PEM with mode 0600 in a 0700 directory,
  written durably; a key file that group or others may access is refused,
  never silently fixed, because it may already have leaked;
- station certificates carry CN = station ID and a SubjectKeyIdentifier equal
  to the keyid's 32 bytes (RFC 7093 method 4: a hash of the whole SPKI), so
  the certificate binds keyid to station ID;
- an existing station key is never overwritten without ``force``: replacing
  it changes the identity every sealed manifest was signed under.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.devpki import DevCA
from agent.durable import makedirs_durable, write_atomic
from agent.errors import ConfigError
from agent.pki.chain import issued_by, validate_chain

__all__ = [
    "StationKey",
    "certificate_keyid",
    "certificate_problems",
    "certificate_station_id",
    "check_key_matches_certificate",
    "init_station_keys",
    "issue_station_certificate",
    "keyid_of",
    "load_certificate",
    "load_public_key",
    "make_dev_certificate",
    "public_key_from_pem",
]

log = logging.getLogger(__name__)

KEY_FILE = "station.key"
CERT_FILE = "station.pem"


def keyid_of(public_key: Ed25519PublicKey | ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of ``public_key``."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class StationKey:
    """The station's Ed25519 signing key; a ``dsse.Signer``."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.keyid = keyid_of(self.public_key)

    @classmethod
    def generate(cls) -> StationKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as unencrypted PKCS#8 PEM, mode 0600, durably."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StationKey:
        """Read a key saved by ``save``; refuses loose permissions and non-Ed25519 keys."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ConfigError(
                f"station key {target} does not exist; create it with "
                "`bwc-agent keys init --config <file>`") from None
        except OSError as exc:
            raise ConfigError(f"cannot open station key {target}: {exc.strerror}") from None
        try:
            # fstat on the open descriptor: the mode checked is the mode of
            # the file read, even if the path is swapped meanwhile.
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"station key {target} has mode {mode:04o}: group or others may access "
                    f"it; fix: chmod 600 {target} (and consider the key exposed)")
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                data = handle.read()
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"station key {target} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                f"station key {target} is {_describe_key(key)}, not an Ed25519 key; station "
                "keys must be Ed25519 (make one with `bwc-agent keys init`)")
        return cls(key)


def _describe_key(key: object) -> str:
    """'an Ed25519 key', 'an EC secp256r1 key', 'an RSA-2048 key': for error messages."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"an RSA-{key.key_size} key"
    return f"a {type(key).__name__} key"


def _station_name(station_id: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent station"),
        x509.NameAttribute(NameOID.COMMON_NAME, station_id),
    ])


def _station_builder(
    key: StationKey, station_id: str, issuer: x509.Name, days: int
) -> x509.CertificateBuilder:
    if not station_id:
        raise ValueError("station ID must not be empty")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(_station_name(station_id))
        .issuer_name(issuer)
        .public_key(key.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier(bytes.fromhex(key.keyid)), critical=False)
    )


def make_dev_certificate(key: StationKey, station_id: str, days: int = 825) -> x509.Certificate:
    """A self-signed development certificate: CN = station ID, SKI = keyid."""
    builder = _station_builder(key, station_id, _station_name(station_id), days)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier(bytes.fromhex(key.keyid), None, None), critical=False)
    return builder.sign(key.private_key, None)  # Ed25519 signs without a separate digest


def issue_station_certificate(
    ca: DevCA, key: StationKey, station_id: str, days: int = 825
) -> x509.Certificate:
    """A station certificate signed by ``ca`` (the development stand-in for the platform CA)."""
    builder = _station_builder(key, station_id, ca.cert.subject, days)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),  # type: ignore[arg-type]
        critical=False)
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first PEM certificate in ``path``."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {target}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{target} is not a PEM certificate: {exc}") from None


def certificate_keyid(cert: x509.Certificate) -> str:
    """The keyid of the public key ``cert`` carries."""
    public_key = cert.public_key()
    if not isinstance(public_key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"certificate carries {_describe_key(public_key)}")
    return keyid_of(public_key)


def certificate_station_id(cert: x509.Certificate) -> str | None:
    """The certificate's single common name (the station ID), or None."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) and value else None


def check_key_matches_certificate(
    key: StationKey | Ed25519PublicKey, cert: x509.Certificate
) -> None:
    """Raise ConfigError unless ``cert`` carries exactly ``key``'s public key."""
    public_key = key.public_key if isinstance(key, StationKey) else key
    key_id = keyid_of(public_key)
    cert_public = cert.public_key()
    cert_id = (keyid_of(cert_public)
               if isinstance(cert_public, Ed25519PublicKey | ec.EllipticCurvePublicKey)
               else _describe_key(cert_public))
    if cert_id != key_id:
        raise ConfigError(
            f"station key (keyid {key_id}) does not match the certificate for "
            f"{cert.subject.rfc4514_string()} (keyid {cert_id}); re-issue the certificate "
            "for this key or restore the key it was issued for")


def certificate_problems(
    cert: x509.Certificate,
    at: dt.datetime,
    trust_anchors: Sequence[x509.Certificate] | None = None,
    *,
    station_id: str | None = None,
    intermediates: Sequence[x509.Certificate] = (),
) -> list[str]:
    """Every reason ``cert`` is not a valid station certificate at time ``at``; empty if none.

    With ``trust_anchors``, ``cert`` must be one of them or chain to one
    through ``intermediates`` (agent/pki/chain.py: validity of every
    certificate at ``at``, CA flags, path lengths, key usages); without, it
    must be self-signed (development).  ``station_id``, if given, must be the CN.
    """
    when = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    subject = cert.subject.rfc4514_string()
    if trust_anchors is None and not issued_by(cert, cert):
        chain = validate_chain(cert, (), (), when)
        problems = [p.text for p in chain.problems if p.code != "no-path"]
        problems.append(
            f"certificate {subject} is not self-signed (issuer "
            f"{cert.issuer.rfc4514_string()}) and no trust anchors were given to check it")
    else:
        anchors = [cert] if trust_anchors is None else list(trust_anchors)
        problems = validate_chain(cert, intermediates, anchors, when).texts
    cn = certificate_station_id(cert)
    if cn is None:
        problems.append(
            f"certificate {subject} has no single non-empty common name (the station ID)")
    elif station_id is not None and cn != station_id:
        problems.append(f"certificate common name is {cn!r}, expected station ID {station_id!r}")
    if not isinstance(cert.public_key(), Ed25519PublicKey):
        problems.append(
            f"certificate {subject} carries {_describe_key(cert.public_key())}; "
            "station keys are Ed25519")
    return problems


# A PEM public key or certificate is a few KiB; a file far larger is not one (and is not read
# whole into memory to find that out).
MAX_PUBLIC_KEY_FILE = 1 << 20


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM SubjectPublicKeyInfo or a PEM certificate file."""
    target = Path(path)
    try:
        with target.open("rb") as handle:
            data = handle.read(MAX_PUBLIC_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read public key {target}: {exc.strerror}") from None
    if len(data) > MAX_PUBLIC_KEY_FILE:
        raise ConfigError(f"{target} is larger than {MAX_PUBLIC_KEY_FILE} bytes: not a PEM "
                          "public key or certificate")
    return public_key_from_pem(data, str(target))


def public_key_from_pem(data: bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from the bytes of a PEM SubjectPublicKeyInfo or PEM certificate
    already read (from a bundle, without following links); ``source`` names them in errors."""
    try:
        public_key: object
        if b"-----BEGIN CERTIFICATE-----" in data:
            public_key = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"{source} is neither a PEM public key nor a PEM certificate: {exc}") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise ConfigError(f"{source} holds {_describe_key(public_key)}, not an Ed25519 key")
    return public_key


def init_station_keys(
    data_dir: Path, station_id: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Create ``<data_dir>/keys/station.key`` (0600) and a self-signed ``station.pem``.

    An existing key is kept unless ``force``; if only its certificate is
    missing (a crash between the two writes), the certificate is made for it.
    """
    keys_dir = Path(data_dir) / "keys"
    makedirs_durable(data_dir)
    makedirs_durable(keys_dir, mode=0o700)
    os.chmod(keys_dir, 0o700)  # mkdir honours the umask, and the dir may predate us
    key_path, cert_path = keys_dir / KEY_FILE, keys_dir / CERT_FILE
    if (key_path.exists() or key_path.is_symlink()) and not force:
        if cert_path.exists():
            raise ConfigError(
                f"station key {key_path} already exists; refusing to overwrite it, since "
                "replacing it changes the identity all sealed clips were signed under. "
                "A station that has signed replaces its key with `bwc-agent keys rotate "
                "--config <file> --reason <why>`; --force replaces it only while nothing "
                "was signed")
        key = StationKey.load(key_path)
        write_atomic(cert_path, _cert_pem(make_dev_certificate(key, station_id)))
        log.info("station key %s (keyid %s) had no certificate; made %s",
                 key_path, key.keyid, cert_path)
        return key_path, cert_path
    key = StationKey.generate()
    # Key first: a crash before the certificate leaves a state the branch
    # above completes; the reverse would leave a certificate for no key.
    key.save(key_path)
    write_atomic(cert_path, _cert_pem(make_dev_certificate(key, station_id)))
    log.info("created station key %s (keyid %s) and development certificate %s for %s",
             key_path, key.keyid, cert_path, station_id)
    return key_path, cert_path


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
