"""An EST client (RFC 7030, RFC 8951): cacerts, simpleenroll, simplereenroll.

Requests go to ``<base>/cacerts`` (GET), ``<base>/simpleenroll`` and
``<base>/simplereenroll`` (POST, ``application/pkcs10``: the base64 DER
CSR).  Answers are ``application/pkcs7-mime`` bodies holding a base64 DER
PKCS#7 certs-only structure (``smime-type=certs-only``).  ``<base>`` is the
configured URL; a URL without a path gets ``/.well-known/est``.

Invariants:

- TLS verification is always on, against an explicit CA bundle (RFC 7030
  section 3.6.1, "explicit trust anchor"): the one that verifies the EST
  server, never the system store;
- the enrolment token is sent in the Authorization header only; it is never
  logged, never part of an error message, never in a URL;
- every request has an overall deadline and every answer a size bound;
  whatever the server sends is hostile: an answer that is not a PKCS#7
  certs-only structure is a named refusal;
- foreign exceptions (requests, ssl, socket) become TransportError here,
  once; a 401/403 is not retryable (the token or the certificate is refused).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.errors import ConfigError, TransportError
from agent.pki.files import NotRegularFile, open_regular

__all__ = ["ClientCertificate", "EstClient", "EstRefused", "Token", "est_base_url"]

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/est"
MAX_ANSWER = 256 * 1024  # a chain of a few certificates is a few KiB
_CHUNK = 16 * 1024
_MAX_TOKEN = 4096


class EstRefused(TransportError):
    """The CA refused the request (HTTP 401/403): the token or the certificate is not accepted."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, retryable=False)
        self.status = status


@dataclass(frozen=True)
class Token:
    """A one-time enrolment secret, sent as HTTP basic (``username``:token) or bearer."""

    scheme: str  # "basic" or "bearer"
    secret: str
    username: str = ""

    def header(self) -> str:
        if self.scheme == "bearer":
            return f"Bearer {self.secret}"
        pair = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"Token(scheme={self.scheme!r}, username={self.username!r}, secret=<hidden>)"

    @classmethod
    def from_file(cls, path: Path, scheme: str, username: str, what: str) -> Token:
        """The token in ``path``: a private regular file (no symlink) of one printable line.

        ``what`` names the file's origin in errors (``--token-file``); errors
        never quote the file's content.
        """
        try:
            handle = open_regular(path)
        except NotRegularFile:
            raise ConfigError(f"{what}: {path} is not a regular file") from None
        except OSError as exc:
            raise ConfigError(f"{what}: cannot open {path}: {exc.strerror}") from None
        with handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise ConfigError(f"{what}: {path} has mode {mode:04o}: group or others may "
                                  f"read the enrolment token; fix: chmod 600 {path} (and "
                                  "consider asking for a new token)")
            data = handle.read(_MAX_TOKEN + 1)
        try:
            secret = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{what}: {path} is not ASCII text") from None
        if len(data) > _MAX_TOKEN or not secret:
            raise ConfigError(f"{what}: {path} must hold one token of 1 to {_MAX_TOKEN} "
                              "characters")
        if not all(33 <= ord(ch) < 127 for ch in secret):
            # A space, a newline or a control character would break (or forge) the header.
            raise ConfigError(f"{what}: {path} must hold a single line without spaces or "
                              "control characters")
        if scheme == "basic" and ":" in username:
            raise ConfigError("pki.est_username: an HTTP basic user name cannot contain ':'")
        return cls(scheme=scheme, secret=secret, username=username)


@dataclass(frozen=True)
class ClientCertificate:
    """TLS client authentication with the station's current certificate (mutual TLS)."""

    cert_file: Path
    key_file: Path


Auth = Token | ClientCertificate


def est_base_url(url: str) -> str:
    """``url`` without a trailing slash; ``/.well-known/est`` added when it has no path."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url!r} is not an https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a query or fragment; give the EST base URL")
    base = url.rstrip("/")
    return base if parts.path.strip("/") else base + WELL_KNOWN


class EstClient:
    """One EST server: ``base_url``, verified with ``ca_file``; requests end by ``timeout_s``."""

    def __init__(self, base_url: str, ca_file: Path, *, timeout_s: float = 30.0) -> None:
        self.base_url = est_base_url(base_url)
        self.ca_file = Path(ca_file)
        self.timeout_s = timeout_s

    # --- operations ----------------------------------------------------------------------

    def cacerts(self) -> list[x509.Certificate]:
        """The CA certificates the server distributes (RFC 7030 section 4.1)."""
        return self._certs("GET", "cacerts", None, None)

    def simpleenroll(self, csr: x509.CertificateSigningRequest,
                     auth: Auth) -> list[x509.Certificate]:
        """Certificates of a first enrolment (the issued one, perhaps with its chain)."""
        return self._certs("POST", "simpleenroll", csr, auth)

    def simplereenroll(self, csr: x509.CertificateSigningRequest,
                       auth: ClientCertificate) -> list[x509.Certificate]:
        """Certificates of a renewal or re-key, authenticated by the current certificate."""
        return self._certs("POST", "simplereenroll", csr, auth)

    # --- the one place where HTTP happens --------------------------------------------------

    def _certs(self, method: str, operation: str, csr: x509.CertificateSigningRequest | None,
               auth: Auth | None) -> list[x509.Certificate]:
        url = f"{self.base_url}/{operation}"
        headers = {"Accept": "application/pkcs7-mime"}
        body = None
        if csr is not None:
            der = csr.public_bytes(serialization.Encoding.DER)
            body = base64.encodebytes(der)  # RFC 8951: base64, lines of 76 characters
            headers["Content-Type"] = "application/pkcs10"
            headers["Content-Transfer-Encoding"] = "base64"
        cert = None
        if isinstance(auth, Token):
            headers["Authorization"] = auth.header()
        elif isinstance(auth, ClientCertificate):
            cert = (str(auth.cert_file), str(auth.key_file))
        status, content_type, data, retry_after = self._exchange(method, url, headers, body,
                                                                 cert)
        if status == 200:
            return _parse_certs_only(data, content_type, url)
        text = _printable(data)
        if status in (401, 403):
            what = ("the enrolment token is wrong, already used or expired: ask the "
                    "platform for a new one" if isinstance(auth, Token) else
                    "the station's certificate is not accepted for this request")
            raise EstRefused(f"the EST server refused {operation} (HTTP {status}): {what}"
                             + (f"; it says: {text}" if text else ""), status)
        if status == 202:
            later = f" (Retry-After: {retry_after})" if retry_after else ""
            raise TransportError(f"the EST server holds the {operation} request for approval "
                                 f"(HTTP 202){later}; run the command again once the CA "
                                 "operator approved it")
        raise TransportError(f"the EST server answered {operation} with HTTP {status}"
                             + (f": {text}" if text else ""), retryable=status >= 500)

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                  cert: tuple[str, str] | None) -> tuple[int, str, bytes, str]:
        deadline = time.monotonic() + self.timeout_s
        try:
            with requests.Session() as session:
                response = session.request(method, url, headers=headers, data=body, cert=cert,
                                           verify=str(self.ca_file), stream=True,
                                           timeout=(self.timeout_s, self.timeout_s),
                                           allow_redirects=False)
                with response:
                    data = _read_bounded(response, deadline, url)
                    return (response.status_code, response.headers.get("Content-Type", ""),
                            data, response.headers.get("Retry-After", "")[:40])
        except TransportError:
            raise
        except requests.exceptions.SSLError as exc:
            raise TransportError(
                f"TLS with the EST server {url} failed: {_reason(exc)} (is the CA file "
                f"{self.ca_file} the one of its certificate? is the station's certificate "
                "still valid?)") from None
        except requests.exceptions.Timeout:
            raise TransportError(f"the EST server {url} did not answer within "
                                 f"{self.timeout_s:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise TransportError(f"cannot reach the EST server {url}: {_reason(exc)}") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise TransportError(f"request to the EST server {url} failed: "
                                 f"{_reason(exc)}") from None


def _read_bounded(response: Any, deadline: float, url: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_ANSWER:
        raise TransportError(f"the EST server {url} announced a {declared}-byte answer; at "
                             f"most {MAX_ANSWER} are read", retryable=False)
    data = bytearray()
    for chunk in response.iter_content(_CHUNK):
        data += chunk
        if len(data) > MAX_ANSWER:
            raise TransportError(f"the EST server {url} sent more than {MAX_ANSWER} bytes",
                                 retryable=False)
        if time.monotonic() > deadline:
            raise TransportError(f"the EST server {url} did not finish its answer in time")
    if time.monotonic() > deadline:
        raise TransportError(f"the EST server {url} did not finish its answer in time")
    return bytes(data)


def _parse_certs_only(data: bytes, content_type: str, url: str) -> list[x509.Certificate]:
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/pkcs7-mime":
        raise TransportError(f"the EST server {url} answered with {media or 'no content type'}"
                             ", not application/pkcs7-mime", retryable=False)
    try:
        der = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise TransportError(f"the EST server {url} answered with a body that is not base64",
                             retryable=False) from None
    try:
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise TransportError(f"the EST server {url} answered with no PKCS#7 certs-only "
                             f"structure ({exc})", retryable=False) from None
    if not certs:
        raise TransportError(f"the EST server {url} answered with no certificate",
                             retryable=False)
    return certs


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the URL repeated."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        inner = seen.__cause__ or seen.__context__
        assert inner is not None
        seen = inner
    text = str(seen) or type(seen).__name__
    if "Connection refused" in text or isinstance(seen, ConnectionRefusedError):
        return "connection refused (is the CA down, or the URL wrong?)"
    return text[:300]


def _printable(data: bytes) -> str:
    """At most 200 characters of a server's error text, control characters removed."""
    text = data[:400].decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()[:200]
