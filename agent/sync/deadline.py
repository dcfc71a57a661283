"""An overall deadline for each HTTP request made through requests/urllib3.

requests' ``timeout`` bounds each socket operation, not the request: a
server that sends one byte of its headers every second (or trickles its TLS
handshake) holds the caller for as long as it likes.  Here the caller opens
``with overall_deadline(seconds):`` around a request, and every socket
operation the request makes on this thread (TLS handshake, each send, each
read of headers and body) gets a timeout no longer than the time left; once
none is left it raises :class:`DeadlineExceeded`, which urllib3 and
requests report as a timeout.

How: :class:`DeadlineAdapter` gives urllib3 connection classes whose sockets
(plain ``socket.socket`` and, through ``SSLContext.sslsocket_class``, TLS
sockets) re-arm their timeout before each operation.  The deadline lives in
a thread-local, so one adapter can serve several threads and a socket never
sees another request's deadline.  The TCP connect itself is bounded by the
per-operation connect timeout (it happens before the socket is ours).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class DeadlineExceeded(TimeoutError):
    """The request's overall deadline passed (a TimeoutError, so urllib3 reports a timeout)."""


class Deadline:
    """The deadline of the request running on this thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.until - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0


@contextmanager
def overall_deadline(seconds: float) -> Iterator[Deadline]:
    """Every socket operation of this thread inside the block ends by ``seconds`` from now."""
    if seconds <= 0:
        raise ValueError(f"deadline must be > 0 s, got {seconds}")
    previous = getattr(_local, "deadline", None)
    current = Deadline(seconds)
    _local.deadline = current
    try:
        yield current
    finally:
        _local.deadline = previous


class _Armed:
    """Re-arms the socket timeout before each operation: min(per-operation, time left)."""

    _op_timeout: float | None = None

    def settimeout(self, value: float | None) -> None:
        # urllib3 sets its per-operation timeout here; remembered, then applied per call.
        self._op_timeout = value
        super().settimeout(value)  # type: ignore[misc]

    def _arm(self) -> None:
        current: Deadline | None = getattr(_local, "deadline", None)
        if current is None:
            super().settimeout(self._op_timeout)  # type: ignore[misc]
            return
        left = current.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"overall deadline of {current.seconds:g} s passed")
        op = self._op_timeout
        super().settimeout(left if op is None else min(op, left))  # type: ignore[misc]


class _DeadlineSocket(_Armed, socket.socket):
    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._arm()
        return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        self._arm()
        return super().send(*args)

    def sendall(self, *args: Any) -> None:
        self._arm()
        super().sendall(*args)


class _DeadlineSSLSocket(_Armed, ssl.SSLSocket):
    def do_handshake(self, *args: Any) -> None:
        self._arm()
        super().do_handshake(*args)

    def read(self, *args: Any) -> Any:
        self._arm()
        return super().read(*args)

    def write(self, *args: Any) -> int:
        self._arm()
        return super().write(*args)

    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._arm()
        return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        self._arm()
        return super().send(*args)

    def sendall(self, *args: Any) -> None:
        self._arm()
        super().sendall(*args)


def _adopt(sock: socket.socket) -> socket.socket:
    """The same connected socket (same file descriptor) as a deadline-aware one."""
    timeout = sock.gettimeout()
    adopted = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    adopted.settimeout(timeout)
    return adopted


class _Connection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _adopt(super()._new_conn())


class _TLSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _adopt(super()._new_conn())


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections honour ``overall_deadline`` on their thread.

    ``ssl_context`` (certificate verification on, as the caller built it) is
    used for every TLS connection; its sockets are made deadline-aware.
    """

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        ssl_context.sslsocket_class = _DeadlineSSLSocket
        self._ssl_context = ssl_context
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, ssl_context=self._ssl_context,
                                 **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
