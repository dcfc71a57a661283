"""Single-pass copy of a recording into the vault: read once, hash and write overlapped.

The device is read exactly once.  Three threads share the work so that the
device read, SHA-256 and the vault write overlap (each releases the GIL in
its system call or in hashlib):

    reader (caller's thread) ──block──▶ hasher ──block──▶ writer ──▶ fsync
       ▲                                                    │
       └──────────── the block goes back to the budget ◀────┘

The reader fills blocks leased from a :class:`~agent.blockbudget.BlockBudget`
(the station's one budget, shared by every copy and verify), so the memory a
copy holds is at most ``depth`` blocks, and the memory of all copies at once
is at most the budget, whatever the file sizes and however many cameras are
docked.  Blocks are page-aligned and whole (the reader fills each one before
passing it on; only the last one of a file is short), so the writer writes
them with O_DIRECT straight from the block: no staging copy.  The temp file
is fsynced before :func:`copy_to_vault` returns; moving it into place is the
vault's job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agent.blockbudget import MIN_BLOCK, Block, BlockBudget, Stream
from agent.errors import AgentError, Cancelled, DeviceError, DeviceGoneError, StoreError

DIRECT_ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks


@dataclass(frozen=True)
class CopyResult:
    sha256: str
    size: int


class _Stage(threading.Thread):
    """A consumer thread that records the first exception it meets.

    Every block it takes is passed on (``forward``) or given back to the
    budget, even after an error, so the reader never waits for a block
    that nobody will release.  ``None`` ends the stream.
    """

    def __init__(self, name: str, stream: Stream, forward: queue.SimpleQueue[Block | None] | None
                 ) -> None:
        super().__init__(name=name, daemon=True)
        self.q: queue.SimpleQueue[Block | None] = queue.SimpleQueue()
        self.stream = stream
        self.forward = forward
        self.error: BaseException | None = None

    def consume(self, data: memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called after the end marker (fsync for the writer)."""

    def run(self) -> None:
        while True:
            block = self.q.get()
            if block is None:
                break
            if self.error is None:
                try:
                    with block.data() as data:
                        self.consume(data)
                except BaseException as exc:
                    # Its frames hold views of the block (a failed os.write's): cleared, or
                    # the block could not be unmapped and the error would be lost.
                    traceback.clear_frames(exc.__traceback__)
                    self.error = exc
            if self.forward is not None:
                self.forward.put(block)
            else:
                self.stream.give_back(block)
        if self.error is None:
            try:
                self.finish()
            except BaseException as exc:
                self.error = exc
        if self.forward is not None:
            self.forward.put(None)


class _Hasher(_Stage):
    def __init__(self, stream: Stream, forward: queue.SimpleQueue[Block | None]) -> None:
        super().__init__("ingest-hash", stream, forward)
        self.h = hashlib.sha256()

    def consume(self, data: memoryview) -> None:
        self.h.update(data)


class _Writer(_Stage):
    """Writes the vault copy with O_DIRECT where the file system allows it.

    Measured on a station-class disk (scripts/bench ingest, 4 GiB): buffered
    writes were throttled by the page cache's dirty-page limits to half the
    speed of ``cp``; direct writes ran at the disk's speed.  Direct I/O needs
    aligned memory, sizes and offsets: blocks are page-aligned and whole
    multiples of 64 KiB except the file's last one, whose unaligned tail goes
    through the page cache.  The copy never sits in the page cache, so the
    verify pass reads the disk.
    """

    def __init__(self, stream: Stream, fd: int, *, direct: bool) -> None:
        super().__init__("ingest-write", stream, None)
        self.fd = fd
        self.direct = direct
        self.written = 0

    def consume(self, data: memoryview) -> None:
        n = len(data)
        aligned = n - n % DIRECT_ALIGN if self.direct else n
        if aligned:
            _write_all(self.fd, data[:aligned])
        if n > aligned:
            # A short block is the file's last: its tail is not a whole block on disk.
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self.direct = False
            _write_all(self.fd, data[aligned:])
        self.written += n

    def finish(self) -> None:
        os.fsync(self.fd)
        # Every page is clean now: drop any that are cached, so the verify pass reads the disk.
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _open_temp(temp: Path) -> tuple[int, bool]:
    """Create the temp file, with O_DIRECT when the file system supports it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(temp, flags | os.O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O here (tmpfs, ...)
                raise
    return os.open(temp, flags, 0o600), False


class _Filler:
    """Fills a block from a device stream: ``readinto`` where the stream has it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.readinto: Callable[[Any], Any] | None = getattr(source, "readinto", None)

    def fill(self, block: Block) -> int:
        """Read until the block is full or the stream ends; the bytes read."""
        got = 0
        with memoryview(block.buf) as whole:
            while got < block.size:
                with whole[got:] as rest:
                    n = self._read(rest)
                if not n:
                    break
                got += n
        block.n = got
        return got

    def _read(self, into: memoryview) -> int:
        if self.readinto is not None:
            try:
                return int(self.readinto(into) or 0)
            except (NotImplementedError, io.UnsupportedOperation):
                self.readinto = None  # a stream with read() only
        data = self.source.read(len(into))
        into[:len(data)] = data
        return len(data)


def copy_to_vault(source: BinaryIO, temp: Path, *, chunk_size: int, queue_chunks: int,
                  cancel: threading.Event | None = None,
                  progress: Callable[[int], None] | None = None,
                  budget: BlockBudget | None = None) -> CopyResult:
    """Copy ``source`` to ``temp`` (created new, fsynced), hashing in the same pass.

    Blocks come from ``budget`` (the station's; by default a private one of
    ``queue_chunks`` blocks of ``chunk_size`` bytes).  ``progress(bytes_read_so_far)``
    is called after each block is read (for the station's screen); it must
    return quickly.

    Raises DeviceGoneError / DeviceError for the device side, StoreError for the
    vault side, Cancelled if ``cancel`` is set.  On any error the temp file is removed.
    """
    if budget is None:
        budget = BlockBudget.for_one(max(MIN_BLOCK, chunk_size), queue_chunks)
    try:
        fd, direct = _open_temp(temp)
    except OSError as exc:
        raise StoreError(f"cannot create {temp}: {exc.strerror}") from exc
    stream = budget.stream()
    writer = _Writer(stream, fd, direct=direct)
    hasher = _Hasher(stream, writer.q)
    hasher.start()
    writer.start()
    filler = _Filler(source)
    read_error: BaseException | None = None
    total = 0
    try:
        while writer.error is None and hasher.error is None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("copy cancelled: the agent is stopping")
            block = stream.acquire(cancel)
            try:
                n = filler.fill(block)
            except BaseException:
                stream.give_back(block)
                raise
            if not n:
                stream.give_back(block)
                break
            total += n
            hasher.q.put(block)
            if progress is not None:
                progress(total)
            if n < block.size:
                break  # the stream ended inside this block
    except AgentError as exc:
        read_error = exc
    except OSError as exc:
        read_error = DeviceError(f"read failed: {exc.strerror or exc}")
        read_error.__cause__ = exc
    except BaseException as exc:
        read_error = exc
    finally:
        hasher.q.put(None)
        hasher.join()
        writer.join()
        stream.close()
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
