"""A development PKI: a CA, server certificates for loopback services, client certificates.

Used by ``scripts/demo``, the development platform and the tests, so that
everything runs over real TLS with verification on.  Production stations get
their certificates from the platform CA (``bwc-agent enroll``); nothing here
is meant for production trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.durable import write_atomic

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent development"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class DevCA:
    """A self-signed CA kept in a directory (``ca.pem``, ``ca.key`` with mode 0600)."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "bwc development CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.dir / "ca.pem"
        self.key_path = self.dir / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            self.key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        write_atomic(self.key_path, key_pem(self.key), mode=0o600)
        write_atomic(self.cert_path, cert_pem(self.cert))

    def issue_for_key(
        self,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        cn: str,
        *,
        server: bool = False,
        client: bool = True,
        days: int = 825,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate for ``public_key`` with CN ``cn`` (loopback SANs for servers)."""
        start = not_before or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)  # type: ignore[arg-type]
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]), critical=False)
        return builder.sign(self.key, hashes.SHA256())  # type: ignore[arg-type]

    def issue(self, cn: str, stem: str, *, server: bool = False, client: bool = True) -> Issued:
        """Make a new EC key and certificate, written as ``<stem>.pem`` / ``<stem>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.issue_for_key(key.public_key(), cn, server=server, client=client)
        issued = Issued(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        write_atomic(issued.key_path, key_pem(key), mode=0o600)
        write_atomic(issued.cert_path, cert_pem(cert))
        return issued
