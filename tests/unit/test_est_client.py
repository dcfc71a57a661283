"""The EST client against a hostile HTTPS server: every malformed answer is a named refusal.

A real TLS server on loopback (certificates from a DevCA made here) answers
each request with what the test scripted.
"""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.errors import ConfigError, TransportError
from agent.pki.enroll import make_csr
from agent.pki.est import MAX_ANSWER, EstClient, EstRefused, Token, est_base_url

Answer = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer = (200, {}, b"")
    seen: list[tuple[str, str, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        status, headers, data = self.server.answer
        self.send_response(status)
        for name, value in headers.items():
            if value:  # an empty value: leave the header out (no Content-Length)
                self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _reply


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server(ca: DevCA) -> Iterator[_Server]:
    issued = ca.issue("localhost", "server", server=True, client=False)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _client(server: _Server, ca: DevCA) -> EstClient:
    return EstClient(f"https://127.0.0.1:{server.server_address[1]}", ca.cert_path, timeout_s=5)


def _certs_body(ca: DevCA) -> bytes:
    return base64.encodebytes(pkcs7.serialize_certificates([ca.cert],
                                                           serialization.Encoding.DER))


PKCS7 = {"Content-Type": "application/pkcs7-mime; smime-type=certs-only"}


def test_a_good_answer_and_the_request_on_the_wire(server: _Server, ca: DevCA) -> None:
    server.answer = (200, PKCS7, _certs_body(ca))
    client = _client(server, ca)
    assert client.cacerts() == [ca.cert]
    key = StationKey.generate()
    token = Token("basic", "s3cret-token", "ST-0001")
    assert client.simpleenroll(make_csr(key.private_key, "ST-0001"), token) == [ca.cert]
    method, path, headers, body = server.seen[-1]
    assert (method, path) == ("POST", "/.well-known/est/simpleenroll")
    assert headers["Content-Type"] == "application/pkcs10"
    assert headers["Authorization"] == "Basic " + base64.b64encode(
        b"ST-0001:s3cret-token").decode()
    # Ed25519 signs deterministically: the same request, DER in base64 on the wire.
    assert base64.b64decode(body) == make_csr(key.private_key, "ST-0001").public_bytes(
        serialization.Encoding.DER)
    assert "s3cret-token" not in repr(token)
    bearer = Token("bearer", "t0k", "")
    client.simpleenroll(make_csr(key.private_key, "ST-0001"), bearer)
    assert server.seen[-1][2]["Authorization"] == "Bearer t0k"


@pytest.mark.parametrize(("answer", "expected"), [
    ((200, {"Content-Type": "text/html"}, b"<html>"),
     "answered with text/html, not application/pkcs7-mime"),
    ((200, PKCS7, b"%%% not base64 %%%"), "answered with a body that is not base64"),
    ((200, PKCS7, base64.b64encode(b"\x30\x03\x02\x01\x00")),
     "answered with no PKCS#7 certs-only structure"),
    ((202, {"Retry-After": "3600"}, b""), "holds the cacerts request for approval (HTTP 202) "
                                          "(Retry-After: 3600)"),
    ((500, {}, b"internal\x1b[31m error"), "answered cacerts with HTTP 500: internal [31m error"),
    ((403, {}, b"forbidden"), "refused cacerts (HTTP 403)"),
    ((200, {**PKCS7, "Content-Length": str(MAX_ANSWER + 1)}, b""),
     f"announced a {MAX_ANSWER + 1}-byte answer"),
    ((302, {"Location": "https://elsewhere.example/"}, b""), "answered cacerts with HTTP 302"),
])
def test_malformed_answers_are_named_refusals(server: _Server, ca: DevCA, answer: Answer,
                                              expected: str) -> None:
    server.answer = answer
    with pytest.raises(TransportError) as err:
        _client(server, ca).cacerts()
    assert expected in str(err.value), str(err.value)


def test_a_401_is_a_refusal_that_is_not_retried(server: _Server, ca: DevCA) -> None:
    server.answer = (401, {"WWW-Authenticate": "Basic"}, b"bad token")
    with pytest.raises(EstRefused) as err:
        _client(server, ca).simpleenroll(make_csr(StationKey.generate().private_key, "ST-1"),
                                         Token("basic", "wrong", "ST-1"))
    assert err.value.status == 401 and not err.value.retryable
    assert "wrong" not in str(err.value).replace("is wrong", "")


def test_an_oversized_body_without_length_is_cut(server: _Server, ca: DevCA) -> None:
    # No Content-Length (HTTP/1.0, the body ends with the connection): counted while read.
    server.answer = (200, {**PKCS7, "Content-Length": ""}, b"A" * (MAX_ANSWER + 10))
    with pytest.raises(TransportError, match=f"sent more than {MAX_ANSWER} bytes"):
        _client(server, ca).cacerts()


def test_tls_is_verified_against_the_given_ca(server: _Server, ca: DevCA,
                                              tmp_path: Path) -> None:
    server.answer = (200, PKCS7, _certs_body(ca))
    other = DevCA(tmp_path / "other", name="someone else")
    client = EstClient(f"https://127.0.0.1:{server.server_address[1]}", other.cert_path)
    with pytest.raises(TransportError, match=r"TLS with the EST server .* failed"):
        client.cacerts()


def test_base_url_and_token_file_rules(tmp_path: Path) -> None:
    assert est_base_url("https://ca:8444") == "https://ca:8444/.well-known/est"
    assert est_base_url("https://ca:8444/.well-known/est/stations/") == \
        "https://ca:8444/.well-known/est/stations"
    for bad in ("http://ca", "https://ca/x?token=1", "ftp://x"):
        with pytest.raises(ValueError):
            est_base_url(bad)
    path = tmp_path / "token"
    for content, message in ((b"", "must hold one token"), (b"a b\n", "without spaces"),
                             (b"a\x00b", "without spaces or control characters"),
                             (b"\xff\xfe", "not ASCII"), (b"x" * 5000, "must hold one token")):
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(ConfigError, match=message):
            Token.from_file(path, "bearer", "", "--token-file")
    path.write_bytes(b"  good-token \n")
    assert Token.from_file(path, "basic", "ST-1", "--token-file").secret == "good-token"
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        Token.from_file(tmp_path / "dir", "basic", "ST-1", "--token-file")
