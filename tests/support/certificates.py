"""Certificates a platform CA would issue, valid since a day ago.

A test station may have been built long before the test runs (once for a whole mutation
run, tests/support/templates.py): a CA made "now" would not have been valid when that
station signed.  These certificates start a day ago, so they cover what it signed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agent.custody.keys import StationKey, issue_station_certificate
from agent.devpki import DevCA


def _a_day_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


def reissued(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey, *,
             not_before: dt.datetime | None = None,
             extra: Sequence[tuple[x509.ExtensionType, bool]] = ()) -> x509.Certificate:
    """``cert`` signed again by ``key``: the same names, public key, serial, end of validity
    and extensions, plus the ``extra`` (extension, critical) pairs; from ``not_before``."""
    builder = (x509.CertificateBuilder().subject_name(cert.subject)
               .issuer_name(cert.issuer).public_key(cert.public_key())
               .serial_number(cert.serial_number)
               .not_valid_before(not_before or cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    for value, critical in extra:
        builder = builder.add_extension(value, critical)
    if isinstance(key, Ed25519PrivateKey):
        return builder.sign(key, None)  # Ed25519 signs without a separate digest
    return builder.sign(key, hashes.SHA256())


def since_yesterday(cert: x509.Certificate, ca: DevCA) -> x509.Certificate:
    """``cert`` signed again by ``ca``, valid since a day ago."""
    return reissued(cert, ca.key, not_before=_a_day_ago())  # type: ignore[arg-type]


def ca_since_yesterday(directory: Path) -> DevCA:
    """A development CA (in ``directory``) whose certificate is valid since a day ago."""
    ca = DevCA(directory)
    ca.cert = since_yesterday(ca.cert, ca)
    ca.cert_path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return ca


def issued_a_day_ago(ca: DevCA, key: StationKey, station_id: str) -> x509.Certificate:
    """A station certificate for ``key`` issued by ``ca``, valid since a day ago."""
    return since_yesterday(issue_station_certificate(ca, key, station_id), ca)


def intermediate_ca(ca: DevCA) -> DevCA:
    """A CA "stations CA" (pathlen 0) under ``ca``, valid since a day ago, shaped as DevCA
    for issue_station_certificate (its key and certificate; no directory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stations CA")])
    start = _a_day_ago()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=900))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca.key, hashes.SHA256()))  # type: ignore[arg-type]
    intermediate = object.__new__(DevCA)
    intermediate.key, intermediate.cert = key, cert
    return intermediate
