"""The development platform's EST server (RFC 7030): cacerts, simpleenroll, simplereenroll.

Certificates come from an intermediate CA (``intermediate.pem`` / ``.key``
in the PKI directory, made once, pathlen 0) under the development root, so
every chain has two levels.  Authentication:

- ``simpleenroll``: a one-time token (HTTP basic password or bearer) bound to
  a station ID, spent by its first success; or a client certificate (mutual
  TLS) whose CN is the request's CN;
- ``simplereenroll``: a client certificate whose CN is the request's CN.

Tokens are kept as SHA-256 hashes in ``est-tokens.json`` beside the PKI, so
``python -m scripts.devplatform est-token`` can add one for a running server.
Tests set ``validity`` (short-lived certificates) and ``faults``:
``wrong-key`` (a certificate for another key), ``wrong-station`` (another
CN), ``expired``, ``untrusted`` (signed by a CA nobody trusts).  ``revoke``
and ``write_crl`` make the intermediate's CRL, which the broker can check.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.custody.keys import keyid_of
from agent.devpki import cert_pem, key_pem
from agent.durable import write_atomic
from scripts.devplatform.pki import DevPki

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True))


def _intermediate(pki: DevPki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = pki.dir / "intermediate.pem", pki.dir / "intermediate.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwc-agent development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "bwc development stations CA")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(pki.ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1825))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   pki.ca.key.public_key()), critical=False))  # type: ignore[arg-type]
    cert = _ca_extensions(builder, 0).sign(pki.ca.key, hashes.SHA256())  # type: ignore[arg-type]
    write_atomic(key_path, key_pem(key), mode=0o600)
    write_atomic(cert_path, cert_pem(cert))
    return cert, key


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def add_token(pki_dir: Path, station_id: str) -> str:
    """A new one-time token for ``station_id`` in ``<pki_dir>/est-tokens.json`` (hash only)."""
    token = secrets.token_urlsafe(24)
    path = Path(pki_dir) / "est-tokens.json"
    tokens = _read_tokens(path)
    tokens[hashlib.sha256(token.encode()).hexdigest()] = station_id
    write_atomic(path, json.dumps(tokens).encode(), mode=0o600)
    return token


class EstServer:
    """An EST server on ``host``:``port`` (0: a free one) for the dev PKI ``pki``."""

    def __init__(self, pki: DevPki, *, host: str = "127.0.0.1", port: int = 0,
                 validity: dt.timedelta = dt.timedelta(days=90)) -> None:
        self.pki = pki
        self.host = host
        self.validity = validity
        self.faults: set[str] = set()
        self.issued: list[x509.Certificate] = []
        self.revoked: set[int] = set()
        self.tokens_path = pki.dir / "est-tokens.json"
        self.cert, self.key = _intermediate(pki)
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
        context.load_verify_locations(cafile=pki.ca_cert_path)
        context.verify_mode = ssl.CERT_OPTIONAL  # the token requests come without one
        self._httpd = _Server((host, port), self, context)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._httpd.server_address[1]}/.well-known/est"

    def start(self) -> EstServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name="est-server", daemon=True)
        self._thread.start()
        log.info("EST server on %s", self.url)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- tokens, revocation --------------------------------------------------------------

    def add_token(self, station_id: str) -> str:
        """A new one-time token for ``station_id`` (only its hash is kept)."""
        with self._lock:
            return add_token(self.pki.dir, station_id)

    def _tokens(self) -> dict[str, str]:
        return _read_tokens(self.tokens_path)

    def spend(self, token: str, station_id: str) -> str | None:
        """None if ``token`` was valid for ``station_id`` (it is spent now), else why not."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            tokens = self._tokens()
            owner = tokens.get(digest)
            if owner is None:
                return "unknown or spent token"
            if owner != station_id:
                return "the token is for another station"
            del tokens[digest]
            write_atomic(self.tokens_path, json.dumps(tokens).encode(), mode=0o600)
        return None

    def revoke(self, cert: x509.Certificate) -> None:
        self.revoked.add(cert.serial_number)

    def write_crl(self, path: Path) -> Path:
        """CRLs (PEM) of the intermediate (every revoked serial) and of the root (empty).

        A broker checking CRLs wants one from the issuer of every client
        certificate: stations' come from the intermediate, the platform's from
        the root.
        """
        now = dt.datetime.now(dt.UTC)
        pem = b""
        for issuer, key, serials in ((self.cert, self.key, self.revoked),
                                     (self.pki.ca.cert, self.pki.ca.key, set())):
            builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
                       .last_update(now - dt.timedelta(minutes=1))
                       .next_update(now + dt.timedelta(days=1)))
            for serial in sorted(serials):
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(serial)
                    .revocation_date(now - dt.timedelta(minutes=1)).build())
            crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
            pem += crl.public_bytes(serialization.Encoding.PEM)
        write_atomic(path, pem)
        return path

    # --- issuing -------------------------------------------------------------------------

    def cacerts(self) -> list[x509.Certificate]:
        return [self.pki.ca.cert, self.cert]

    def issue(self, csr: x509.CertificateSigningRequest) -> list[x509.Certificate]:
        """The certificate for ``csr`` (and the intermediate), as the faults say."""
        public_key: Any = csr.public_key()
        if "wrong-key" in self.faults:
            public_key = (ed25519.Ed25519PrivateKey.generate().public_key()
                          if isinstance(public_key, ed25519.Ed25519PublicKey)
                          else ec.generate_private_key(ec.SECP256R1()).public_key())
        subject = csr.subject
        if "wrong-station" in self.faults:
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                    "bwc-agent station"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "ST-IMPOSTOR")])
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)  # a little clock skew
        end = start + self.validity
        if "expired" in self.faults:
            start, end = start - dt.timedelta(days=2), start - dt.timedelta(days=1)
        issuer_cert, issuer_key = self.cert, self.key
        if "untrusted" in self.faults:
            issuer_key = ec.generate_private_key(ec.SECP256R1())
        signing = isinstance(public_key, ed25519.Ed25519PublicKey)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_cert.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=signing, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier(bytes.fromhex(keyid_of(public_key))),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()), critical=False)
                .sign(issuer_key, hashes.SHA256()))
        self.issued.append(cert)
        return [cert, self.cert]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], est: EstServer,
                 context: ssl.SSLContext) -> None:
        self.est = est
        self.context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # e.g. an expired client certificate
            log.info("EST: TLS handshake with %s failed: %s", client_address[0], exc)
            return
        with conn:
            _Handler(conn, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("EST server: error serving %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("EST %s " + format, self.address_string(), *args)

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if content_type.startswith("application/pkcs7-mime"):
            self.send_header("Content-Transfer-Encoding", "base64")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="estrealm"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _certs(self, certs: list[x509.Certificate]) -> None:
        der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
        self._answer(200, base64.encodebytes(der),
                     "application/pkcs7-mime; smime-type=certs-only")

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/.well-known/est/cacerts":
            self._certs(self.server.est.cacerts())
        else:
            self._answer(404, b"no such EST operation")

    def do_POST(self) -> None:
        operation = self.path.rstrip("/").rsplit("/", 1)[-1]
        if not self.path.startswith("/.well-known/est/") or operation not in (
                "simpleenroll", "simplereenroll"):
            self._answer(404, b"no such EST operation")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_REQUEST:
            self._answer(413, b"request missing or too large")
            return
        body = self.rfile.read(int(length))
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/pkcs10":
            self._answer(415, b"expected application/pkcs10")
            return
        try:
            csr = x509.load_der_x509_csr(base64.b64decode(b"".join(body.split()), validate=True))
        except (binascii.Error, ValueError):
            self._answer(400, b"the body is not a base64 PKCS#10 request")
            return
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not csr.is_signature_valid or len(names) != 1:
            self._answer(400, b"bad request signature, or not exactly one CN")
            return
        refusal = self._authorize(operation, str(names[0].value))
        if refusal is not None:
            self._answer(refusal[0], refusal[1].encode())
            return
        self._certs(self.server.est.issue(csr))

    def _authorize(self, operation: str, cn: str) -> tuple[int, str] | None:
        peer = self.connection.getpeercert()
        if peer:
            subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
            if subject.get("commonName") != cn:
                return 403, "the client certificate is for another station"
            return None
        if operation == "simplereenroll":
            return 401, "simplereenroll needs the current client certificate"
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip()
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(token, validate=True).decode().partition(":")[2]
            except (binascii.Error, ValueError):
                return 401, "malformed basic credentials"
        elif scheme.lower() != "bearer":
            return 401, "enrolment needs a token (basic or bearer) or a client certificate"
        why = self.server.est.spend(token, cn)
        return (401, why) if why is not None else None
