"""The checks of the platform: broker and upload server reachable with TLS and mutual TLS, and
the station clock against the upload server's ``Date``.

Each uses the TLS context the clients themselves build (agent.sync.tlsfiles)
and an overall deadline (``Environment.deadline_s`` per server): a server
that trickles its handshake is reported, not waited for.  The broker gets
an MQTT 3.1.1 CONNECT with a client id of its own (``<station>-doctor``,
clean session) and a DISCONNECT once it answered, so the daemon's own
session is never taken over; the upload server an ``OPTIONS`` (tus's
capability request), which creates nothing.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests

from agent.config import Config
from agent.doctor import FAIL, OK, WARN, Environment, Finding
from agent.errors import ConfigError
from agent.sync.deadline import DeadlineAdapter, overall_deadline
from agent.sync.service import read_secret
from agent.sync.tlsfiles import client_context

# Station clock against the platform's: commands are refused beyond 60 s of skew.
SKEW_WARN_S, SKEW_FAIL_S = 5.0, 60.0
CONNACK_CODES = {1: "unacceptable protocol version", 2: "client identifier rejected",
                 3: "server unavailable", 4: "bad user name or password",
                 5: "not authorised"}


def _tls_advice(exc: BaseException, what: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the {what}'s certificate does not verify with platform.ca_file: install the "
                "platform's CA bundle there")
    if isinstance(exc, ssl.SSLError | ConnectionResetError | BrokenPipeError):
        return (f"the {what} refused the TLS handshake or the station's client certificate: "
                "check platform.cert_file / key_file (issued by the platform CA, not expired)")
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens there: is the {what} running, is the address right?"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer in time: check the network and firewall to the {what}"
    return f"check the network and DNS to the {what}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def arm(self, sock: socket.socket) -> None:
        left = self.until - time.monotonic()
        if left <= 0:
            raise TimeoutError("the overall deadline passed")
        sock.settimeout(left)


def _read_exact(sock: socket.socket, count: int, deadline: _Deadline) -> bytes:
    data = b""
    while len(data) < count:
        deadline.arm(sock)
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionResetError("the broker closed the connection")
        data += chunk
    return data


def _mqtt_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session: nothing of this connection stays at the broker
    payload = _mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    body = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


def broker(config: Config, env: Environment) -> Iterator[Finding]:
    platform = config.platform
    if platform is None:
        return
    url = urlsplit(platform.mqtt_url)
    tls = url.scheme == "mqtts"
    host, port = url.hostname or "", url.port or (8883 if tls else 1883)
    where = f"broker {host}:{port}"
    try:
        password = (read_secret(platform.password_file, "platform.password_file")
                    if platform.password_file else None)
        context = client_context(platform.ca_file, platform.cert_file, platform.key_file) \
            if tls else None
    except ConfigError as exc:
        yield Finding(FAIL, "broker", f"{where}: {exc}", "fix the file the message names")
        return
    deadline = _Deadline(env.deadline_s)
    started = time.monotonic()
    try:
        raw = socket.create_connection((host, port), timeout=env.deadline_s)
        with raw:
            sock: socket.socket = raw
            if context is not None:
                deadline.arm(raw)
                sock = context.wrap_socket(raw, server_hostname=host)
            deadline.arm(sock)
            sock.sendall(_connect_packet(f"{config.station.id}-doctor", platform.username,
                                         password))
            answer = _read_exact(sock, 4, deadline)
            if answer[0] != 0x20:
                raise ConnectionResetError(f"the broker answered packet type {answer[0]:#x}, "
                                           "not CONNACK")
            code = answer[3]
            if code == 0:
                deadline.arm(sock)
                sock.sendall(b"\xe0\x00")
    except (OSError, ssl.SSLError) as exc:
        yield Finding(FAIL, "broker", f"{where}: {_describe(exc)}", _tls_advice(exc, "broker"))
        return
    if code != 0:
        yield Finding(FAIL, "broker", f"{where} refused the connection: "
                      f"{CONNACK_CODES.get(code, f'code {code}')}", "check the broker's ACL and "
                      "accounts for this station (PROTOCOL.md section 1), and "
                      "platform.username / password_file")
        return
    how = ("TLS with the station's client certificate" if platform.cert_file else "TLS") \
        if tls else "no TLS (platform.insecure: development only)"
    yield Finding(OK if tls else WARN, "broker", f"{where} accepts the station ({how}, "
                  f"{(time.monotonic() - started) * 1000:.0f} ms)",
                  "" if tls else "use mqtts:// in production")


def upload_server(config: Config, env: Environment) -> Iterator[Finding]:
    platform = config.platform
    if platform is None:
        return
    url = platform.upload_url
    where = f"upload server {urlsplit(url).netloc}"
    try:
        context = client_context(platform.ca_file, platform.cert_file, platform.key_file)
    except ConfigError as exc:
        yield Finding(FAIL, "upload", f"{where}: {exc}", "fix the file the message names")
        return
    cert = platform.cert_file is not None
    # The very session set-up of the uploader (agent.sync.tus): the context holds the CA and
    # the client certificate; nothing of the environment (proxies, CA bundles) is taken.
    session = requests.Session()
    adapter = DeadlineAdapter(context)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = str(platform.ca_file)
    session.trust_env = False
    started = time.monotonic()
    try:
        with overall_deadline(env.deadline_s):
            answer = session.options(url, timeout=env.deadline_s, allow_redirects=False,
                                     headers={"Tus-Resumable": "1.0.0"}, stream=True)
            answer.close()
    except requests.RequestException as exc:
        yield Finding(FAIL, "upload", f"{where}: {_describe(exc)[:300]}",
                      _tls_advice(_as_os_error(exc), "upload server"))
        return
    finally:
        session.close()
    elapsed = (time.monotonic() - started) * 1000
    if answer.status_code >= 400 and answer.status_code not in (404, 405):
        yield Finding(FAIL, "upload", f"{where} answered HTTP {answer.status_code} to OPTIONS "
                      f"{url}", "check platform.upload_url and the server's access rules for "
                      "this station's certificate")
    elif "Tus-Version" not in answer.headers:
        yield Finding(WARN, "upload", f"{where} answered HTTP {answer.status_code} without "
                      "Tus-Version: is platform.upload_url a tus endpoint?",
                      "check platform.upload_url")
    else:
        yield Finding(OK, "upload", f"{where} speaks tus {answer.headers['Tus-Version']} over "
                      f"{'mutual ' if cert else ''}TLS ({elapsed:.0f} ms)")
    yield from _skew(answer.headers.get("Date"), started, env)


def _as_os_error(exc: requests.RequestException) -> BaseException:
    """The socket-level failure a requests exception stands for (for the advice)."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return ssl.SSLCertVerificationError(text)
        return ssl.SSLError(text)
    if isinstance(exc, requests.exceptions.Timeout):
        return TimeoutError(text)
    if "Connection refused" in text:
        return ConnectionRefusedError(text)
    return OSError(text)


def _skew(date: str | None, started: float, env: Environment) -> Iterator[Finding]:
    if not date:
        yield Finding(WARN, "clock", "the upload server sent no Date header: the skew to the "
                      "platform is unknown", "compare `date -u` with the platform's clock")
        return
    try:
        theirs = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        yield Finding(WARN, "clock", f"the upload server's Date {date[:60]!r} is not an "
                      "HTTP date", "compare `date -u` with the platform's clock")
        return
    ours = (env.now or time.time)()
    # The Date is whole seconds, taken while the request ran: allow one second and the trip.
    skew = ours - theirs
    slack = 1.0 + (time.monotonic() - started)
    text = f"station clock {skew:+.0f} s from the platform's (upload server's Date)"
    if abs(skew) > SKEW_FAIL_S + slack:
        yield Finding(FAIL, "clock", text, "set the clock (timedatectl set-ntp true; the same "
                      "NTP servers as the platform): commands are refused beyond 60 s, and "
                      "manifests and the custody log carry wrong times")
    elif abs(skew) > SKEW_WARN_S + slack:
        yield Finding(WARN, "clock", text, "check NTP on the station (timedatectl "
                      "timesync-status) and on the platform")
    else:
        yield Finding(OK, "clock", text)
