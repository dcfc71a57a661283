"""Deliberately misbehaving HTTPS servers on 127.0.0.1, written at the socket/ssl level.

``HostileServer`` speaks just enough HTTP/1.1 (keep-alive, Content-Length
bodies) for a test to script each answer: ``handler(request, conn)`` writes
whatever bytes it likes, as slowly as it likes.  ``LyingTus`` is a small tus
1.0 server on top of it whose HEAD can lie about the offset and whose POST
can send the client elsewhere.  ``TricklingProxy`` forwards a real server's
bytes to the client one at a time, TLS handshake included.

Every server records what reached it (``connections``, ``requests``), so a
test can prove that nothing was sent where it must not be.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Conn:
    """One accepted connection, as a handler sees it."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping
        self.keep_open = True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, every_s: float = 1.0) -> None:
        """Send ``data`` one byte at a time (a slow-loris server)."""
        for i in range(len(data)):
            if self.stopping.wait(every_s):
                return
            self.sock.sendall(data[i:i + 1])

    def respond(self, status: int, reason: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> None:
        head = [f"HTTP/1.1 {status} {reason}"]
        for name, value in {"Content-Length": str(len(body)), "Tus-Resumable": "1.0.0",
                            **(headers or {})}.items():
            head.append(f"{name}: {value}")
        self.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


Handler = Callable[[Request, Conn], None]


class HostileServer:
    """An HTTPS server whose every answer is written by ``handler``."""

    def __init__(self, cert: Path, key: Path, handler: Handler, *,
                 client_ca: Path | None = None) -> None:
        self.handler = handler
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            self.context.load_verify_locations(str(client_ca))
            self.context.verify_mode = ssl.CERT_OPTIONAL
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self.requests: list[Request] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(raw)
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            sock = self.context.wrap_socket(raw, server_side=True)
            with self._lock:
                self._socks.append(sock)
            conn = Conn(sock, self._stopping)
            reader = sock.makefile("rb")
            while conn.keep_open and not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                self.handler(request, conn)
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                raw.close()


def _read_request(reader: object) -> Request | None:
    line = reader.readline(65537)  # type: ignore[attr-defined]
    if not line:
        return None
    method, path, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = reader.readline(65537).decode("latin-1").rstrip("\r\n")  # type: ignore[attr-defined]
        if not header:
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = reader.read(length) if length else b""  # type: ignore[attr-defined]
    return Request(method, path, headers, body)


@dataclass
class Upload:
    length: int
    data: bytearray = field(default_factory=bytearray)


class LyingTus:
    """A tus 1.0 server (creation, checksum off) with hooks for lies.

    ``head_offset(upload_id, true_offset)`` returns the Upload-Offset a HEAD
    answers; ``location(upload_id)`` the Location a POST answers; ``patch``
    may answer a PATCH itself (return True) instead of storing the bytes.
    """

    def __init__(self) -> None:
        self.uploads: dict[str, Upload] = {}
        self.head_offset: Callable[[str, int], int] = lambda _id, true: true
        self.location: Callable[[str], str] = lambda upload_id: f"/files/{upload_id}"
        self.patch: Callable[[Request, Conn], bool] = lambda _r, _c: False
        self._next = 0

    def upload_id(self, path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def __call__(self, request: Request, conn: Conn) -> None:
        if request.method == "OPTIONS":
            conn.respond(204, "No Content", {"Tus-Version": "1.0.0",
                                             "Tus-Extension": "creation,termination"})
        elif request.method == "POST":
            self._next += 1
            upload_id = f"u{self._next}"
            self.uploads[upload_id] = Upload(int(request.headers["upload-length"]))
            conn.respond(201, "Created", {"Location": self.location(upload_id)})
        elif request.method == "HEAD":
            upload = self.uploads.get(self.upload_id(request.path))
            if upload is None:
                conn.respond(404, "Not Found")
                return
            offset = self.head_offset(self.upload_id(request.path), len(upload.data))
            conn.respond(200, "OK", {"Upload-Offset": str(offset),
                                     "Upload-Length": str(upload.length),
                                     "Cache-Control": "no-store"})
        elif request.method == "PATCH":
            if self.patch(request, conn):
                return
            upload = self.uploads.get(self.upload_id(request.path))
            if upload is None:
                conn.respond(404, "Not Found")
                return
            if int(request.headers["upload-offset"]) != len(upload.data):
                conn.respond(409, "Conflict")
                return
            upload.data += request.body
            conn.respond(204, "No Content", {"Upload-Offset": str(len(upload.data))})
        elif request.method == "DELETE":
            self.uploads.pop(self.upload_id(request.path), None)
            conn.respond(204, "No Content")
        else:
            conn.respond(405, "Method Not Allowed")


class TricklingProxy:
    """TCP proxy to ``127.0.0.1:target``: client bytes go through at once, the server's
    bytes come back one per ``every_s`` (TLS handshake and all)."""

    def __init__(self, target: int, every_s: float = 1.0) -> None:
        self.target = target
        self.every_s = every_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._stopping = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> TricklingProxy:
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.listener.close()
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [client, upstream]
            self._spawn(self._pump, client, upstream, 0.0)
            self._spawn(self._pump, upstream, client, self.every_s)

    def _pump(self, src: socket.socket, dst: socket.socket, every_s: float) -> None:
        try:
            while not self._stopping.is_set():
                data = src.recv(1 if every_s else 65536)
                if not data:
                    return
                if every_s and self._stopping.wait(every_s):
                    return
                dst.sendall(data)
        except OSError:
            return


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
