"""What every request and response of the pages goes through: host, size, time, headers, CSRF.

* Host: only the listen address, localhost and ``web.hostnames``; anything
  else is refused (a DNS-rebinding page cannot talk to the station).
* Body: at most ``MAX_BODY`` bytes, received within ``BODY_DEADLINE_S``.
* Headers: a strict Content-Security-Policy ('self' only: no inline script or
  style anywhere), no framing, no sniffing, no caching of pages, HSTS on TLS.
* CSRF: every POST carries a token bound to its session (synchronizer) or,
  before sign-in, to a random cookie (double submit, keyed with a server
  secret), and its Origin must be the page's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 16 * 1024  # sign-in and requeue forms are a few hundred bytes
BODY_DEADLINE_S = 10.0

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'; object-src 'none'")


def security_headers(tls: bool, static: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", CSP.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        # same-origin: the browser still sends Origin on the pages' own POSTs.
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), usb=(), serial=()"),
    ]
    if not static:
        headers.append((b"cache-control", b"no-store"))
    if tls:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class Guard:
    """ASGI middleware: host check, body limits, security headers on every response."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], tls: bool) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = host_name(headers.get("host", ""))
        if host not in self.allowed_hosts:
            await self._refuse(scope, receive, send, 421, "host not served here")
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await self._refuse(scope, receive, send, 413, "request body too large")
            return
        static = scope["path"].startswith("/static/")
        extra = security_headers(self.tls, static)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, _BoundedReceive(receive), send_with_headers)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      text: str) -> None:
        response = PlainTextResponse(text, status_code=status,
                                     headers={"connection": "close"})
        await response(scope, receive, send)


class _BoundedReceive:
    """Request body messages: at most MAX_BODY bytes, all within BODY_DEADLINE_S."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.received = 0
        self.body_done = False
        self.deadline: float | None = None

    async def __call__(self) -> Message:
        if self.body_done:
            return await self.receive()  # only http.disconnect is left to wait for
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + BODY_DEADLINE_S
        try:
            message = await asyncio.wait_for(self.receive(),
                                             max(0.0, self.deadline - loop.time()))
        except TimeoutError:
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > MAX_BODY:
                return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_done = True
        return message


def host_name(host: str) -> str:
    """The name part of a Host header: ``[::1]:8947`` -> ``::1``, ``a.b:1`` -> ``a.b``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --- CSRF ----------------------------------------------------------------------------------

CSRF_COOKIE = "bwc_csrf"
CLIP_ID = re.compile(r"[0-9a-f-]{8,36}")  # a clip id in a form, checked before the store
CSRF_FIELD = "csrf_token"


class Csrf:
    """Tokens for forms.  Before sign-in: HMAC(secret, cookie); after: the session's token."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def anonymous_token(self, cookie: str) -> str:
        return hmac.new(self._secret, b"anonymous|" + cookie.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)


def same_origin(request: Request) -> bool:
    """The request's Origin (or, without one, its Referer) is the page's own origin."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == own
    referer = request.headers.get("referer")
    if referer is not None:
        return referer.lower() == own or referer.lower().startswith(own + "/")
    return False


def token_ok(given: Any, expected: str | None) -> bool:
    return (isinstance(given, str) and expected is not None and len(given) < 200
            and hmac.compare_digest(given.encode(), expected.encode()))
