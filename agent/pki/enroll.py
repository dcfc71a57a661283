"""Enrolment, renewal and re-keying of the station's certificates over EST.

The station has two keys, each with a certificate from the platform CA:

- the Ed25519 signing key (``station.key``/``station.pem``): signs manifests,
  checkpoints and rotation statements; its certificate anchors them;
- an ECDSA P-256 TLS key (``tls.key``/``tls.pem``): mutual TLS to the broker,
  the upload server and the EST server.  Kept apart because many TLS
  terminators and CAs take no Ed25519 client certificates, and because a
  key used in every handshake should not be the one that signs evidence.

``enroll`` (first enrolment, one-time token): ``/cacerts``; ``simpleenroll``
of a new TLS key authenticated by the token; ``simpleenroll`` of the signing
key authenticated by the new TLS certificate (mutual TLS); then every file
at once.  ``renew``: ``simplereenroll`` of both keys authenticated by the
current TLS certificate.  ``issue_for_new_key``: ``simplereenroll`` of a new
signing key (``keys rotate``).

Every issued certificate is checked before anything is stored: it carries the
key of the request, its CN is ``station.id``, and it chains to the CA
certificates from ``/cacerts`` (agent/pki/chain.py).  Any failure stores
nothing (agent/pki/files.py commits all files or none).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import Config
from agent.custody.keys import StationKey, certificate_station_id, keyid_of
from agent.devpki import key_pem
from agent.errors import ConfigError, IntegrityError
from agent.pki import files as pki_files
from agent.pki.chain import validate_chain
from agent.pki.est import ClientCertificate, EstClient, Token
from agent.pki.files import KeyFiles, open_regular

__all__ = ["Issued", "certificate_facts", "check_issued", "enroll", "est_client",
           "issue_for_new_key", "load_tls_key", "make_csr", "renew"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Issued:
    """A checked certificate and the intermediate certificates that lead to the anchors."""

    cert: x509.Certificate
    chain: list[x509.Certificate]

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.cert, *self.chain))


def make_csr(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
             station_id: str) -> x509.CertificateSigningRequest:
    """A PKCS#10 request with subject O=bwc-agent station, CN=<station ID>."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent station"),
        x509.NameAttribute(NameOID.COMMON_NAME, station_id),
    ]))
    if isinstance(key, Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, hashes.SHA256())


def load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The TLS client key; refuses loose permissions, like the station key."""
    try:
        handle = open_regular(path)
    except OSError as exc:
        raise ConfigError(f"cannot open the TLS key {path}: {exc.strerror}; enrol the "
                          "station first (bwc-agent enroll)") from None
    with handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(f"TLS key {path} has mode {mode:04o}: group or others may "
                              f"access it; fix: chmod 600 {path}")
        data = handle.read(64 * 1024)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"TLS key {path} is not an unencrypted PEM private key: "
                          f"{exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"TLS key {path} is not an EC key")
    return key


def est_client(config: Config, est_url: str | None = None) -> EstClient:
    """The EST client of ``config`` ([pki]), ``est_url`` overriding ``pki.est_url``."""
    url = est_url or config.pki.est_url
    if url is None:
        raise ConfigError("pki.est_url: no EST server configured (set it, or give --est-url)")
    ca_file = config.pki.est_ca_file or (config.platform.ca_file if config.platform else None)
    if ca_file is None:
        raise ConfigError("pki.est_ca_file: give the CA bundle that verifies the EST server")
    try:
        return EstClient(url, ca_file, timeout_s=config.pki.timeout_s)
    except ValueError as exc:
        raise ConfigError(f"pki.est_url: {exc}") from None


def _split_cacerts(certs: Sequence[x509.Certificate]) -> tuple[list[x509.Certificate],
                                                               list[x509.Certificate]]:
    """(trust anchors: the self-signed ones, intermediates: the others)."""
    anchors = [c for c in certs if c.issuer == c.subject]
    if not anchors:
        raise IntegrityError("the EST server's /cacerts holds no self-signed CA certificate "
                             "(a trust anchor); nothing was stored")
    return anchors, [c for c in certs if c.issuer != c.subject]


def check_issued(certs: Sequence[x509.Certificate], public_key: Any, station_id: str,
                 anchors: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate],
                 what: str, *, at: dt.datetime | None = None) -> Issued:
    """The certificate for ``public_key`` out of an EST answer, checked; else IntegrityError."""
    wanted = keyid_of(public_key)
    mine = [c for c in certs if _keyid(c) == wanted]
    if not mine:
        leaf = next((c for c in certs if not _is_ca(c)), certs[0])
        raise IntegrityError(
            f"the CA issued the {what} certificate for another key: {_describe(leaf)} carries "
            f"keyid {_keyid(leaf)}, the request was for keyid {wanted}; nothing was stored")
    cert = mine[0]
    cn = certificate_station_id(cert)
    if cn != station_id:
        raise IntegrityError(
            f"the CA issued the {what} certificate for station {cn!r}, this station is "
            f"{station_id!r} (station.id); nothing was stored")
    pool = [c for c in (*certs, *intermediates) if c is not cert]
    result = validate_chain(cert, pool, anchors, at or dt.datetime.now(dt.UTC),
                            what=f"issued {what} certificate")
    problems = result.texts
    if what == "TLS" and not _allows_client_auth(cert):
        problems.append(f"issued TLS certificate {_describe(cert)} does not allow TLS client "
                        "authentication (extendedKeyUsage without clientAuth)")
    if problems:
        raise IntegrityError(f"the {what} certificate the CA issued does not hold: "
                             f"{'; '.join(problems)}; nothing was stored")
    chain = [c for c in result.path[1:-1]]  # intermediates only: the anchor is in ca.pem
    return Issued(cert, chain)


def _keyid(cert: x509.Certificate) -> str:
    try:
        return keyid_of(cert.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return "(a key of another kind)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _allows_client_auth(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x})"


def certificate_facts(cert: x509.Certificate) -> dict[str, Any]:
    """What the custody log and events record of a certificate."""
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "not_before": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
            "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")}


def _pem_list(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class _TlsFiles:
    """A TLS key and certificate written to a private temporary directory for one request.

    Removed afterwards; a crash leaves ``keys/.enroll-*``, which files.recover removes.
    """

    def __init__(self, keys_dir: Path, key: ec.EllipticCurvePrivateKey, issued: Issued) -> None:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir = Path(tempfile.mkdtemp(prefix=".enroll-", dir=keys_dir))
        self.auth = ClientCertificate(self.dir / "tls.pem", self.dir / "tls.key")
        fd = os.open(self.auth.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem(key))
        self.auth.cert_file.write_bytes(issued.pem())

    def __enter__(self) -> ClientCertificate:
        return self.auth

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class Enrolment:
    station: Issued
    tls: Issued
    anchors: list[x509.Certificate]
    new_station_key: bool


def enroll(config: Config, token: Token, *, est_url: str | None = None) -> Enrolment:
    """First enrolment with a one-time ``token`` (see the module docstring); all or nothing.

    The station key is kept if it exists (the identity of everything it
    signed) and made otherwise; the TLS key is always new.
    """
    files = KeyFiles.of(config.data_dir)
    station_id = config.station.id
    client = est_client(config, est_url)
    new_key = not files.station_key.exists()
    key = StationKey.generate() if new_key else StationKey.load(files.station_key)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    anchors, intermediates = _split_cacerts(client.cacerts())
    tls = check_issued(client.simpleenroll(make_csr(tls_key, station_id), token),
                       tls_key.public_key(), station_id, anchors, intermediates, "TLS")
    with _TlsFiles(files.dir, tls_key, tls) as auth:
        station = check_issued(client.simpleenroll(make_csr(key.private_key, station_id), auth),
                               key.public_key, station_id, anchors, intermediates, "signing")
    changes = {"station.pem": station.pem(), "tls.pem": tls.pem(),
               "tls.key": key_pem(tls_key), "ca.pem": _pem_list(anchors)}
    if new_key:
        changes["station.key"] = key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    pki_files.stage(files, changes).apply()
    log.info("enrolled %s: signing certificate serial %x, TLS certificate serial %x",
             station_id, station.cert.serial_number, tls.cert.serial_number)
    return Enrolment(station, tls, anchors, new_key)


def _current_tls(files: KeyFiles) -> ClientCertificate:
    if not files.tls_cert.exists() or not files.tls_key.exists():
        raise ConfigError(f"no enrolled TLS certificate ({files.tls_cert}): enrol the station "
                          "first (bwc-agent enroll --est-url URL --token-file FILE)")
    load_tls_key(files.tls_key)  # mode and type checked before it is used
    cert = x509.load_pem_x509_certificate(files.tls_cert.read_bytes())
    if dt.datetime.now(dt.UTC) > cert.not_valid_after_utc:
        raise ConfigError(
            f"the station's TLS certificate {files.tls_cert} expired at "
            f"{cert.not_valid_after_utc.isoformat()}: the CA cannot authenticate the station "
            "with it any more; enrol again with a new one-time token (bwc-agent enroll)")
    return ClientCertificate(files.tls_cert, files.tls_key)


@dataclass(frozen=True)
class Renewal:
    station: Issued
    tls: Issued


def renew(config: Config) -> Renewal:
    """Renew both certificates for the same keys (``simplereenroll``); all or nothing."""
    files = KeyFiles.of(config.data_dir)
    station_id = config.station.id
    client = est_client(config)
    auth = _current_tls(files)
    key = StationKey.load(files.station_key)
    tls_key = load_tls_key(files.tls_key)
    anchors, intermediates = _split_cacerts(client.cacerts())
    tls = check_issued(client.simplereenroll(make_csr(tls_key, station_id), auth),
                       tls_key.public_key(), station_id, anchors, intermediates, "TLS")
    station = check_issued(client.simplereenroll(make_csr(key.private_key, station_id), auth),
                           key.public_key, station_id, anchors, intermediates, "signing")
    pki_files.stage(files, {"station.pem": station.pem(), "tls.pem": tls.pem(),
                            "ca.pem": _pem_list(anchors)}).apply()
    log.info("renewed the certificates of %s: signing serial %x until %s, TLS serial %x",
             station_id, station.cert.serial_number, station.cert.not_valid_after_utc,
             tls.cert.serial_number)
    return Renewal(station, tls)


def issue_for_new_key(config: Config, key: StationKey) -> tuple[Issued, list[x509.Certificate]]:
    """A CA certificate for a new signing key (``simplereenroll``), and the CA certificates."""
    files = KeyFiles.of(config.data_dir)
    client = est_client(config)
    auth = _current_tls(files)
    anchors, intermediates = _split_cacerts(client.cacerts())
    issued = check_issued(client.simplereenroll(make_csr(key.private_key, config.station.id),
                                                auth),
                          key.public_key, config.station.id, anchors, intermediates, "signing")
    return issued, anchors
