"""A small tus 1.0 server over HTTPS: the development platform's upload endpoint.

Protocol: tus 1.0.0 core plus creation, termination and checksum (sha256,
sha1).  Standard library only (http.server, ssl), HTTP/1.1 keep-alive, one
thread per connection.  Used by ``scripts/demo`` and by the tests, which can
inject faults at run time (``fail_next``, ``cut_after``).

Store layout (``store_dir``): ``<id>.json`` sidecar (length, metadata,
completed) written durably, ``<id>.bin`` the data, whose size is the upload
offset, and ``<id>.pending`` the offset before a checksummed chunk that is
still being received or verified (that offset is the upload's until the
chunk verifies; the marker is removed then).

Invariants:
- Every byte counted in the offset was received in order at its offset.
  With ``Upload-Checksum`` a chunk is appended behind a durable pending
  marker holding the offset before it; a mismatch (460) or a disconnect
  truncates the data back to that offset, and a crash is undone the same way
  at the next start, so unverified bytes are never counted.  (The chunk was
  first written to a side file and copied over once verified: that copy took
  as long as receiving the chunk.)  Without a checksum, what arrived
  before a disconnect is kept (as tusd does), so the client resumes after it.
- A completed upload is on disk (fsync) before ``on_complete`` runs and before
  the final 204.  Intermediate chunks are not synced (as in tusd; syncing
  each one cost ~25% of the throughput): after a power cut the offset may go
  back, never forward, and clients resume from HEAD.  ``sync_every_patch``
  makes every acknowledged offset durable instead.
- Request paths never become file names: upload ids are 32 hex digits made
  here and checked on every request.
- Memory per request is bounded by one 1 MiB buffer (three with a checksum,
  hashed on a helper thread), whatever the body size.
- Load cap (``max_active``): at most that many POST and PATCH requests are
  handled at once; one more is answered ``503`` with ``Retry-After:
  busy_retry_after`` (counted in ``busy_refusals``), as a platform under load
  answers, so clients learn to wait instead of piling up.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import signal
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.durable import fsync_dir, makedirs_durable, write_atomic
from agent.timeutil import now

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
DEFAULT_MAX_SIZE = 64 * 1024**3
_BUFFER = 1024 * 1024
_HASH_BUFFERS = 3
_DRAIN_LIMIT = 64 * 1024 * 1024  # bigger unwanted bodies: answer and close instead
_LOCK_WAIT_S = 10.0
_ID = re.compile(r"[0-9a-f]{32}")
_UINT = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class CompletedUpload:
    """An upload whose offset reached its length; ``path`` holds exactly those bytes."""

    id: str
    path: Path
    length: int
    metadata: dict[str, str]


class _Abort(Exception):
    """The connection is unusable (cut, reset, timed out): close it, answer nothing."""


def parse_metadata(header: str) -> dict[str, str]:
    """Parse Upload-Metadata (``key base64``, comma separated); ValueError if malformed."""
    result: dict[str, str] = {}
    if not header.strip():
        return result
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if len(parts) > 2 or not key or not key.isascii() or not key.isprintable():
            raise ValueError(f"malformed Upload-Metadata pair {pair.strip()!r}")
        if key in result:
            raise ValueError(f"duplicate Upload-Metadata key {key!r}")
        raw = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        try:
            result[key] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"Upload-Metadata value of {key!r} is not UTF-8") from exc
    return result


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}".rstrip()
                    for k, v in metadata.items())


class TusServer:
    """A tus server on ``https://host:port/files/`` storing uploads in ``store_dir``.

    ``on_complete`` runs in the request's thread after the data is synced and
    before the final 204 is sent; the platform hands the upload to its own
    queue there (verify sha256, acknowledge).  A failing hook is logged, and
    the upload stays stored.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str],
        client_ca: str | os.PathLike[str] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        checksum_algorithms: tuple[str, ...] = ("sha256", "sha1"),
        on_complete: Callable[[CompletedUpload], None] | None = None,
        timeout_s: float = 30.0,
        sync_every_patch: bool = False,
        max_active: int | None = None,
        busy_retry_after: int = 5,
    ) -> None:
        self.store = makedirs_durable(store_dir)
        self.host, self._port = host, port
        self.max_size = max_size
        self.checksum_algorithms = checksum_algorithms
        self.on_complete = on_complete
        self.timeout_s = timeout_s
        self.sync_every_patch = sync_every_patch
        # Fault injection, settable while running: the next N requests get 500;
        # the next PATCH has its connection cut after this many body bytes.
        self.fail_next = 0
        self.fail_status = 500  # e.g. 503 with fail_retry_after, as a platform under load
        self.fail_retry_after: str | None = None  # Retry-After value sent with the failures
        self.cut_after: int | None = None
        self.corrupt_next = False  # flip a byte of the next checksummed chunk (-> 460)
        self.bytes_received = 0  # PATCH body bytes read, all uploads, for tests
        self.max_active = max_active  # the load cap (see the module docstring)
        self.busy_retry_after = busy_retry_after
        self.busy_refusals = 0
        self._active = 0
        self._lock = threading.Lock()
        self._upload_locks: dict[str, threading.Lock] = {}
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl_context.load_cert_chain(os.fspath(certfile), os.fspath(keyfile))
        if client_ca is not None:
            self.ssl_context.verify_mode = ssl.CERT_REQUIRED
            self.ssl_context.load_verify_locations(cafile=os.fspath(client_ca))
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/files/"

    def start(self) -> TusServer:
        self.recover()
        self._httpd = _HTTPServer((self.host, self._port), self)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name=f"tus-server-{self._port}", daemon=True)
        self._thread.start()
        log.info("tus server listening on %s, store %s", self.url, self.store)
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and wait for the handlers to end."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> TusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state, shared by handler threads ------------------------------------------

    def data_path(self, upload_id: str) -> Path:
        return self.store / f"{upload_id}.bin"

    def pending_path(self, upload_id: str) -> Path:
        return self.store / f"{upload_id}.pending"

    def offset(self, upload_id: str) -> int:
        """The upload's offset: the data's size, unless a checksummed chunk is pending."""
        try:
            return int(self.pending_path(upload_id).read_text())
        except FileNotFoundError:
            return self.data_path(upload_id).stat().st_size

    def undo_pending(self, upload_id: str) -> None:
        """Drop an unverified chunk: data back to the pending offset, marker removed.

        Never lengthens the data: after a power cut the marker (synced) may name
        more bytes than the data kept (earlier chunks are not synced), and the
        offset then goes back to what is really there.  The truncation is made
        durable before the marker goes, so the dropped bytes cannot come back.
        """
        marker = self.pending_path(upload_id)
        offset = int(marker.read_text())
        try:
            fd = os.open(self.data_path(upload_id), os.O_WRONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                if os.fstat(fd).st_size > offset:
                    os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        marker.unlink()
        fsync_dir(self.store)

    def recover(self) -> list[str]:
        """Undo the chunks a crash left pending; returns their upload ids.

        An upload whose bytes all arrived but which a crash kept from being marked
        completed is completed now (``on_complete`` runs): its client, finding the
        offset at the length, sends nothing more.
        """
        undone = []
        for marker in sorted(self.store.glob("*.pending")):
            upload_id = marker.stem
            if _ID.fullmatch(upload_id):
                self.undo_pending(upload_id)
                undone.append(upload_id)
                log.info("upload %s: dropped a checksummed chunk a crash left unverified",
                         upload_id)
        for sidecar in sorted(self.store.glob("*.json")):
            info = self.info(sidecar.stem) if _ID.fullmatch(sidecar.stem) else None
            if info is not None and not info.get("completed_at") \
                    and self.offset(info["id"]) == info["length"]:
                log.info("upload %s: every byte arrived before a crash; completed now",
                         info["id"])
                self.completed(info["id"], info)
        return undone

    def completed_uploads(self) -> list[tuple[CompletedUpload, str]]:
        """Every completed upload in the store, with when it completed (oldest first)."""
        done = []
        for sidecar in sorted(self.store.glob("*.json")):
            info = self.info(sidecar.stem) if _ID.fullmatch(sidecar.stem) else None
            if info is not None and info.get("completed_at"):
                done.append((CompletedUpload(info["id"], self.data_path(info["id"]),
                                             info["length"], dict(info["metadata"])),
                             str(info["completed_at"])))
        return sorted(done, key=lambda item: item[1])

    def info(self, upload_id: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads((self.store / f"{upload_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        return info

    def save_info(self, upload_id: str, info: dict[str, Any]) -> None:
        write_atomic(self.store / f"{upload_id}.json",
                     json.dumps(info, ensure_ascii=False, sort_keys=True).encode())

    def upload_lock(self, upload_id: str) -> threading.Lock:
        with self._lock:
            return self._upload_locks.setdefault(upload_id, threading.Lock())

    def admit(self) -> bool:
        """Take one of the ``max_active`` request slots; False (counted) if none is free."""
        with self._lock:
            if self.max_active is not None and self._active >= self.max_active:
                self.busy_refusals += 1
                return False
            self._active += 1
            return True

    @property
    def active(self) -> int:
        """POST and PATCH requests being handled now."""
        with self._lock:
            return self._active

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def take_cut(self) -> int | None:
        with self._lock:
            cut, self.cut_after = self.cut_after, None
            return cut

    def take_corrupt(self) -> bool:
        with self._lock:
            corrupt, self.corrupt_next = self.corrupt_next, False
            return corrupt

    def count(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_received += nbytes

    def completed(self, upload_id: str, info: dict[str, Any]) -> None:
        fd = os.open(self.data_path(upload_id), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        info["completed_at"] = now()
        self.save_info(upload_id, info)
        if self.on_complete is None:
            return
        done = CompletedUpload(upload_id, self.data_path(upload_id), info["length"],
                               dict(info["metadata"]))
        try:
            self.on_complete(done)
        except Exception:
            log.exception("on_complete hook failed for upload %s", upload_id)


class _HTTPServer(ThreadingHTTPServer):
    """Accepts TCP on the listener thread; the TLS handshake runs in the connection's thread."""

    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, address: tuple[str, int], tus: TusServer) -> None:
        self.tus = tus
        self._conns: set[ssl.SSLSocket] = set()
        self._conns_lock = threading.Lock()
        self._closing = False
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.tus.timeout_s)
        try:
            conn = self.tus.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        with self._conns_lock:
            self._conns.add(conn)
            closing = self._closing
        try:
            if not closing:
                _Handler(conn, client_address, self)
        except OSError as exc:
            log.debug("connection from %s ended: %s", client_address[0], exc)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("tus server: error serving %s", client_address[0])

    def close_connections(self) -> None:
        with self._conns_lock:
            self._closing = True
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_OPTIONS(self) -> None:
        self._dispatch(self._options)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def do_HEAD(self) -> None:
        self._dispatch(self._head)

    def do_PATCH(self) -> None:
        self._dispatch(self._patch)

    def do_DELETE(self) -> None:
        self._dispatch(self._delete)

    # -- plumbing ------------------------------------------------------------------

    def _dispatch(self, handler: Callable[[], None]) -> None:
        tus = self.server.tus
        try:
            if tus.take_failure():
                self._reply(tus.fail_status, "injected failure",
                            {"Retry-After": tus.fail_retry_after}
                            if tus.fail_retry_after is not None else None)
            elif self.command != "OPTIONS" and self.headers.get("Tus-Resumable") != TUS_VERSION:
                self._reply(412, f"Tus-Resumable must be {TUS_VERSION}",
                            {"Tus-Version": TUS_VERSION})
            elif self.command in ("POST", "PATCH"):
                if not tus.admit():
                    log.info("busy: %d uploads at once; 503, Retry-After %d s",
                             tus.max_active, tus.busy_retry_after)
                    self._reply(503, "too many uploads at once; try again later",
                                {"Retry-After": str(tus.busy_retry_after)})
                    return
                try:
                    handler()
                finally:
                    tus.leave()
            else:
                handler()
        except _Abort:
            self.close_connection = True

    def _reply(self, status: int, message: str = "", headers: dict[str, str] | None = None,
               *, drain: bool = True) -> None:
        """Answer; a request body not read yet is drained first so keep-alive stays in sync."""
        if drain:
            self._drain()
        body = f"{message}\n".encode() if message and self.command != "HEAD" else b""
        self.send_response(status)
        self.send_header("Tus-Resumable", TUS_VERSION)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204 and self.command != "HEAD":
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _drain(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if "Transfer-Encoding" in self.headers or not _UINT.fullmatch(length) \
                or int(length) > _DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = int(length)
        try:
            while remaining > 0:
                got = len(self.rfile.read(min(remaining, _BUFFER)))
                if not got:
                    raise _Abort
                remaining -= got
        except OSError as exc:
            raise _Abort from exc

    def _upload_id(self) -> str | None:
        path = urlsplit(self.path).path
        base = urlsplit(self.server.tus.url).path
        name = path[len(base):] if path.startswith(base) else ""
        return name if _ID.fullmatch(name) else None

    def _is_collection(self) -> bool:
        base = urlsplit(self.server.tus.url).path
        return urlsplit(self.path).path.rstrip("/") == base.rstrip("/")

    # -- protocol ------------------------------------------------------------------

    def _options(self) -> None:
        tus = self.server.tus
        extensions = ["creation", "termination"] + (["checksum"] if tus.checksum_algorithms else [])
        headers = {"Tus-Version": TUS_VERSION, "Tus-Extension": ",".join(extensions),
                   "Tus-Max-Size": str(tus.max_size)}
        if tus.checksum_algorithms:
            headers["Tus-Checksum-Algorithm"] = ",".join(tus.checksum_algorithms)
        self._reply(204, headers=headers)

    def _post(self) -> None:
        tus = self.server.tus
        if not self._is_collection():
            self._reply(405 if self._upload_id() else 404, "POST goes to the creation URL")
            return
        length = self.headers.get("Upload-Length", "")
        if not _UINT.fullmatch(length):
            self._reply(400, "Upload-Length must be a non-negative integer "
                             "(Upload-Defer-Length is not supported)")
            return
        if int(length) > tus.max_size:
            self._reply(413, f"Upload-Length {length} exceeds Tus-Max-Size {tus.max_size}")
            return
        if self.headers.get("Content-Length", "0") != "0":
            self._reply(400, "creation-with-upload is not supported; send an empty POST")
            return
        try:
            metadata = parse_metadata(self.headers.get("Upload-Metadata", ""))
        except ValueError as exc:
            self._reply(400, str(exc))
            return
        upload_id = uuid.uuid4().hex
        fd = os.open(tus.data_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.fsync(fd)
        os.close(fd)
        # The sidecar is written last: its presence is what makes the upload exist.
        info = {"id": upload_id, "length": int(length), "metadata": metadata,
                "created_at": now(), "completed_at": None}
        tus.save_info(upload_id, info)
        log.info("created upload %s (%s bytes, %s)", upload_id, length, metadata)
        if int(length) == 0:
            tus.completed(upload_id, info)
        self._reply(201, headers={"Location": tus.url + upload_id})

    def _head(self) -> None:
        tus = self.server.tus
        upload_id = self._upload_id()
        info = tus.info(upload_id) if upload_id else None
        if upload_id is None or info is None:
            self._reply(404, headers={"Cache-Control": "no-store"})
            return
        headers = {"Upload-Offset": str(tus.offset(upload_id)),
                   "Upload-Length": str(info["length"]), "Cache-Control": "no-store"}
        if info["metadata"]:
            headers["Upload-Metadata"] = encode_metadata(info["metadata"])
        self._reply(200, headers=headers)

    def _delete(self) -> None:
        tus = self.server.tus
        upload_id = self._upload_id()
        if upload_id is None or tus.info(upload_id) is None:
            self._reply(404, "no such upload")
            return
        lock = tus.upload_lock(upload_id)
        if not lock.acquire(timeout=_LOCK_WAIT_S):
            self._reply(423, "upload is busy")
            return
        try:
            # The sidecar first: the upload ceases to exist.
            for suffix in (".json", ".bin", ".pending"):
                with contextlib.suppress(FileNotFoundError):
                    (tus.store / f"{upload_id}{suffix}").unlink()
            fsync_dir(tus.store)
        finally:
            lock.release()
        log.info("terminated upload %s", upload_id)
        self._reply(204)

    def _patch(self) -> None:
        tus = self.server.tus
        upload_id = self._upload_id()
        info = tus.info(upload_id) if upload_id else None
        if upload_id is None or info is None:
            self._reply(404, "no such upload")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() \
                != OFFSET_CONTENT_TYPE:
            self._reply(415, f"Content-Type must be {OFFSET_CONTENT_TYPE}")
            return
        offset, length = self.headers.get("Upload-Offset", ""), self.headers.get(
            "Content-Length", "")
        if not _UINT.fullmatch(offset) or not _UINT.fullmatch(length):
            self._reply(400, "Upload-Offset and Content-Length must be non-negative integers")
            return
        try:
            algorithm, expected = self._checksum()
        except ValueError as exc:
            self._reply(400, str(exc))
            return
        lock = tus.upload_lock(upload_id)
        if not lock.acquire(timeout=_LOCK_WAIT_S):
            self._reply(423, "upload is locked by another request")
            return
        try:
            if tus.pending_path(upload_id).exists():
                # Under the lock no PATCH is in flight: a marker is a leftover of a
                # chunk whose undo failed.  Finish the undo before anything is appended.
                tus.undo_pending(upload_id)
            current = tus.offset(upload_id)
            if int(offset) != current:
                self._reply(409, f"Upload-Offset {offset} does not match the upload's "
                                 f"offset {current}")
                return
            if current + int(length) > info["length"]:
                self._reply(400, f"{length} bytes at offset {offset} exceed Upload-Length "
                                 f"{info['length']}")
                return
            if algorithm is None:
                new_offset = self._receive_direct(upload_id, int(length))
            else:
                verified = self._receive_verified(upload_id, int(length), algorithm, expected)
                if verified is None:
                    self._reply(460, f"{algorithm} checksum mismatch", drain=False)
                    return
                new_offset = verified
            if new_offset == info["length"]:
                tus.completed(upload_id, info)
        finally:
            lock.release()
        self._reply(204, headers={"Upload-Offset": str(new_offset)}, drain=False)

    def _checksum(self) -> tuple[str | None, bytes]:
        header = self.headers.get("Upload-Checksum")
        if header is None:
            return None, b""
        algorithm, _, encoded = header.strip().partition(" ")
        algorithm = algorithm.lower()
        if algorithm not in self.server.tus.checksum_algorithms:
            raise ValueError(f"unsupported checksum algorithm {algorithm!r}")
        try:
            expected = base64.b64decode(encoded.strip(), validate=True)
        except ValueError as exc:
            raise ValueError("Upload-Checksum digest is not base64") from exc
        if len(expected) != hashlib.new(algorithm).digest_size:
            raise ValueError(f"Upload-Checksum digest has the wrong length for {algorithm}")
        return algorithm, expected

    def _receive_direct(self, upload_id: str, length: int) -> int:
        """Append the body to the data file; on a cut connection keep what arrived, then abort."""
        path = self.server.tus.data_path(upload_id)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            got, complete = self._copy_body(fd, length, None, False)
            if self.server.tus.sync_every_patch:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not complete:
            log.info("upload %s: connection lost after %d of %d bytes; kept them",
                     upload_id, got, length)
            raise _Abort
        return path.stat().st_size

    def _receive_verified(self, upload_id: str, length: int, algorithm: str,
                          expected: bytes) -> int | None:
        """Append behind a pending marker, verify; None on mismatch (nothing counted).

        Costs a file and a directory fsync per chunk (the marker), which a
        disk-backed store notices; without them a crash could count unverified bytes.
        """
        tus = self.server.tus
        data = tus.data_path(upload_id)
        start = data.stat().st_size
        write_atomic(tus.pending_path(upload_id), str(start).encode(), 0o640)
        hasher = hashlib.new(algorithm)
        verified = False
        fd = os.open(data, os.O_WRONLY | os.O_APPEND)
        try:
            got, complete = self._copy_body(fd, length, hasher, tus.take_corrupt())
            if complete and hasher.digest() == expected:
                if tus.sync_every_patch:
                    os.fsync(fd)
                # The chunk counts from here: a crash before this unlink is durable only
                # sends the offset back (the client resends), never forward.
                tus.pending_path(upload_id).unlink()
                if tus.sync_every_patch:
                    fsync_dir(tus.store)
                verified = True  # only now: any failure above undoes the chunk
        finally:
            os.close(fd)
            if not verified:
                tus.undo_pending(upload_id)
        if verified:
            return start + length
        if not complete:
            log.info("upload %s: connection lost after %d of %d checksummed bytes; dropped",
                     upload_id, got, length)
            raise _Abort
        log.warning("upload %s: %s checksum mismatch on %d bytes", upload_id, algorithm, length)
        return None

    def _copy_body(self, fd: int, length: int, hasher: Any,
                   corrupt: bool) -> tuple[int, bool]:
        """Copy up to ``length`` body bytes to ``fd``: (bytes copied, whole body received)."""
        tus = self.server.tus
        cut = tus.take_cut()
        limit = length if cut is None else min(length, cut)
        size = min(_BUFFER, max(limit, 1))
        background = _BackgroundHash(hasher, size) if hasher is not None else None
        single = memoryview(bytearray(size if background is None else 0))
        got, failed = 0, False
        try:
            while got < limit and not failed:
                buf = single if background is None else background.free_buffer()
                filled, failed = self._read_block(buf, min(len(buf), limit - got))
                if corrupt and filled:
                    buf[0] ^= 0xFF  # damage on the way, as a bad link or proxy would
                    corrupt = False
                _write_all(fd, buf[:filled])
                if background is not None:
                    background.submit(buf, filled)
                got += filled
                tus.count(filled)
        finally:
            if background is not None:
                background.finish()
        if cut is not None and got < length:
            log.info("fault injection: cutting the connection after %d body bytes", got)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        return got, got == length

    def _read_block(self, buf: memoryview, want: int) -> tuple[int, bool]:
        """Fill ``buf[:want]`` from the body: (bytes read, connection failed)."""
        filled = 0
        while filled < want:
            try:
                # readinto1: one socket read per call, so a reset loses nothing counted.
                n = self.rfile.readinto1(buf[filled:want])
            except OSError:
                n = 0
            if not n:
                return filled, True
            filled += n
        return filled, False


class _BackgroundHash:
    """Hashes body blocks on a helper thread while the connection reads the next one.

    hashlib releases the GIL, so the digest no longer adds to the time the
    connection thread spends per byte.  Buffers rotate: one being read, the
    others waiting to be hashed.
    """

    def __init__(self, hasher: Any, size: int) -> None:
        self._hasher = hasher
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(_HASH_BUFFERS):
            self._free.put(memoryview(bytearray(size)))
        self._todo: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tus-hash", daemon=True)
        self._thread.start()

    def free_buffer(self) -> memoryview:
        return self._free.get()

    def submit(self, buf: memoryview, n: int) -> None:
        self._todo.put((buf, n))

    def finish(self) -> None:
        """Wait until every submitted block is hashed; re-raises what the helper met."""
        self._todo.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n = item
            try:
                if self._error is None:
                    self._hasher.update(buf[:n])
            except BaseException as exc:
                self._error = exc  # the digest is wrong now: finish() raises it
            finally:
                self._free.put(buf)  # never leave the connection thread waiting


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A development tus 1.0 server over HTTPS.")
    parser.add_argument("--store", required=True, type=Path, help="upload store directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, help="server key (PEM)")
    parser.add_argument("--devca", type=Path,
                        help="development CA directory: issue the server certificate there")
    parser.add_argument("--client-ca", type=Path, help="require client certificates from this CA")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE)
    parser.add_argument("--sync-every-patch", action="store_true",
                        help="fsync every acknowledged chunk, not only completed uploads")
    parser.add_argument("--max-active", type=int,
                        help="load cap: uploads handled at once; more get 503 + Retry-After")
    parser.add_argument("--retry-after", type=int, default=5,
                        help="Retry-After seconds sent with the load cap's 503 (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.devca is not None:
        from agent.devpki import DevCA

        issued = DevCA(args.devca).issue("localhost", "tus-server", server=True, client=False)
        args.cert, args.key = issued.cert_path, issued.key_path
    if args.cert is None or args.key is None:
        parser.error("give --cert and --key, or --devca")
    server = TusServer(args.store, args.host, args.port, certfile=args.cert, keyfile=args.key,
                       client_ca=args.client_ca, max_size=args.max_size,
                       sync_every_patch=args.sync_every_patch, max_active=args.max_active,
                       busy_retry_after=args.retry_after)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(server.url, flush=True)  # the one line a launcher reads
    # A timed wait: the signal may land on a handler thread, and an untimed wait
    # in the main thread would never look at the flag the handler sets.
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
