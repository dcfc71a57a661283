"""Single-pass copy of a recording into the vault: read once, hash and write overlapped.

The device is read exactly once.  Three threads share the work so that the
device read, SHA-256 and the vault write overlap (each releases the GIL in
its system call or in hashlib):

    reader (caller's thread) ──chunk──▶ hash queue  ──▶ hasher
                              └────────▶ write queue ──▶ writer ──▶ fsync

Memory stays bounded: at most ``queue_chunks`` chunks wait in each queue, so
the peak is about ``2 × queue_chunks × chunk`` bytes whatever the file size.
The temp file is fsynced before :func:`copy_to_vault` returns; moving it into
place is the vault's job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import AgentError, Cancelled, DeviceError, DeviceGoneError, StoreError

_DONE = b""
DIRECT_ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks


@dataclass(frozen=True)
class CopyResult:
    sha256: str
    size: int


class _Stage(threading.Thread):
    """A consumer thread that records the first exception it meets."""

    def __init__(self, name: str, q: queue.Queue[bytes]) -> None:
        super().__init__(name=name, daemon=True)
        self.q = q
        self.error: BaseException | None = None

    def consume(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called after the end marker (fsync for the writer)."""

    def run(self) -> None:
        while True:
            chunk = self.q.get()
            if chunk is _DONE:
                break
            if self.error is None:
                try:
                    self.consume(chunk)
                except BaseException as exc:
                    self.error = exc
        if self.error is None:
            try:
                self.finish()
            except BaseException as exc:
                self.error = exc


class _Hasher(_Stage):
    def __init__(self, q: queue.Queue[bytes]) -> None:
        super().__init__("ingest-hash", q)
        self.h = hashlib.sha256()

    def consume(self, chunk: bytes) -> None:
        self.h.update(chunk)


class _Writer(_Stage):
    """Writes the vault copy with O_DIRECT where the file system allows it.

    Measured on a station-class disk (scripts/bench ingest, 4 GiB): buffered
    writes were throttled by the page cache's dirty-page limits to half the
    speed of ``cp``; direct writes ran at the disk's speed.  Direct I/O needs
    aligned memory, sizes and offsets, so chunks are gathered into one
    page-aligned staging buffer (a memory copy, far cheaper than the disk) and
    written whole; the unaligned tail goes through the page cache.  The copy
    never sits in the page cache, so the verify pass reads the disk.
    """

    def __init__(self, q: queue.Queue[bytes], fd: int, *, direct: bool, size: int) -> None:
        super().__init__("ingest-write", q)
        self.fd = fd
        self.direct = direct
        self.written = 0
        self.staging = mmap.mmap(-1, size) if direct else None  # page aligned
        self.view = memoryview(self.staging) if self.staging is not None else None
        self.fill = 0

    def consume(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.view is None:
            _write_all(self.fd, memoryview(chunk))
            return
        data = memoryview(chunk)
        while data:
            n = min(len(data), len(self.view) - self.fill)
            self.view[self.fill:self.fill + n] = data[:n]
            self.fill += n
            data = data[n:]
            if self.fill == len(self.view):
                _write_all(self.fd, self.view)
                self.fill = 0

    def finish(self) -> None:
        if self.view is not None:
            aligned = self.fill - self.fill % DIRECT_ALIGN
            if aligned:
                _write_all(self.fd, self.view[:aligned])
            if self.fill > aligned:
                # The tail is not a whole block: write it through the page cache.
                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                _write_all(self.fd, self.view[aligned:self.fill])
            self.view.release()
            assert self.staging is not None
            self.staging.close()
        os.fsync(self.fd)
        # Every page is clean now: drop any that are cached, so the verify pass reads the disk.
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _open_temp(temp: Path, chunk_size: int) -> tuple[int, bool]:
    """Create the temp file, with O_DIRECT when the file system supports it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if chunk_size % DIRECT_ALIGN == 0 and hasattr(os, "O_DIRECT"):
        try:
            return os.open(temp, flags | os.O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O here (tmpfs, ...)
                raise
    return os.open(temp, flags, 0o600), False


def copy_to_vault(source: BinaryIO, temp: Path, *, chunk_size: int, queue_chunks: int,
                  cancel: threading.Event | None = None,
                  progress: Callable[[int], None] | None = None) -> CopyResult:
    """Copy ``source`` to ``temp`` (created new, fsynced), hashing in the same pass.

    ``progress(bytes_read_so_far)`` is called after each block is read (for the
    station's screen); it must return quickly.

    Raises DeviceGoneError / DeviceError for the device side, StoreError for the
    vault side.  On any error the temp file is removed.
    """
    try:
        fd, direct = _open_temp(temp, chunk_size)
    except OSError as exc:
        raise StoreError(f"cannot create {temp}: {exc.strerror}") from exc
    hash_q: queue.Queue[bytes] = queue.Queue(maxsize=queue_chunks)
    write_q: queue.Queue[bytes] = queue.Queue(maxsize=queue_chunks)
    hasher = _Hasher(hash_q)
    writer = _Writer(write_q, fd, direct=direct, size=chunk_size)
    hasher.start()
    writer.start()
    read_error: BaseException | None = None
    total = 0
    try:
        while writer.error is None and hasher.error is None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("copy cancelled: the agent is stopping")
            try:
                chunk = source.read(chunk_size)
            except AgentError:
                raise
            except OSError as exc:
                raise DeviceError(f"read failed: {exc.strerror or exc}") from exc
            if not chunk:
                break
            total += len(chunk)
            hash_q.put(chunk)
            write_q.put(chunk)
            if progress is not None:
                progress(total)
    except BaseException as exc:
        read_error = exc
    finally:
        hash_q.put(_DONE)
        write_q.put(_DONE)
        hasher.join()
        writer.join()
        os.close(fd)
    failure = read_error or writer.error or hasher.error
    if failure is not None:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(failure, AgentError):
            raise failure
        if failure is writer.error and isinstance(failure, OSError):
            raise StoreError(f"writing {temp.name} into the vault failed: "
                             f"{failure.strerror}") from failure
        if isinstance(failure, OSError):
            raise DeviceGoneError(f"device read failed: {failure}") from failure
        raise failure
    return CopyResult(sha256=hasher.h.hexdigest(), size=total)
