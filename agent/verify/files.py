"""Reading the files of a verification target as the untrusted layout they are.

A bundle comes from anyone: its "files" may be symbolic links (to
/dev/zero, to a secret elsewhere), FIFOs (a read never returns), devices,
or gigabytes of JSON.  Every read here:

- opens each path component relative to the one before it with
  ``O_NOFOLLOW`` (directories with ``O_DIRECTORY``), so no symbolic link is
  followed anywhere in the path, not only at its end;
- opens with ``O_NONBLOCK`` and then checks ``fstat``: only a regular file
  is read (opening a FIFO returns at once instead of waiting for a writer);
- reads at most a stated limit, and reports a larger file instead of
  reading it (``LIMITS`` below, documented in docs/FORMATS.md).

Problems are :class:`Unreadable` with a text for the report; nothing else
escapes for any file.  Clip bytes are not read into memory: they are hashed
from the same kind of descriptor (``hash_beneath``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import stat
import threading
from pathlib import Path

__all__ = ["LIMITS", "Unreadable", "hash_beneath", "hash_fd", "hash_file", "open_beneath",
           "open_file", "read_beneath", "read_file"]

MiB = 1024 * 1024
#: The largest file of each kind this verifier reads, in bytes.  Far above what an
#: exporter writes (a checkpoint is ~500 bytes, a manifest ~3 KiB, a log line ~400
#: bytes), low enough that a hostile bundle cannot exhaust memory.
LIMITS = {
    "small": 1 * MiB,  # bagit.txt, bag-info.txt, a certificate, an envelope, a manifest
    "tag-manifest": 64 * MiB,  # manifest-sha256.txt, tagmanifest-sha256.txt
    "log": 512 * MiB,  # entries.jsonl, proofs.json, checkpoints.jsonl
}
_HASH_BLOCK = 4 * MiB
_READ_AHEAD = 3
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class Unreadable(Exception):
    """A file that is not read: missing, a link, not a regular file, too large, or an I/O error."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(fd: int, what: str) -> int:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise Unreadable(f"{what} is {_kind(mode)}, not a regular file (not read)")
    return os.fstat(fd).st_size


def _open_error(exc: OSError, what: str) -> Unreadable:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link at the end / on the way
        return Unreadable(f"{what} is, or lies below, a symbolic link (not followed)")
    if isinstance(exc, FileNotFoundError):
        return Unreadable(f"{what} is missing")
    return Unreadable(f"cannot open {what}: {exc.strerror}")


def open_beneath(root: Path, rel: str) -> int:
    """A read-only descriptor of regular file ``rel`` below ``root``, no link followed."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Unreadable(f"{rel} is not a plain relative path")
    try:
        dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"cannot open the directory {root}: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dirfd)
            except OSError as exc:
                raise _open_error(exc, rel) from None
            os.close(dirfd)
            dirfd = child
        try:
            fd = os.open(parts[-1], _OPEN_FLAGS, dir_fd=dirfd)
        except OSError as exc:
            raise _open_error(exc, rel) from None
    finally:
        os.close(dirfd)
    try:
        _check_regular(fd, rel)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: Path, *, follow: bool = False) -> int:
    """A read-only descriptor of the regular file ``path``.

    ``follow``: the user named this path on the command line, so a symbolic
    link at its end is followed; a FIFO or a device is refused either way.
    """
    flags = _OPEN_FLAGS if not follow else _OPEN_FLAGS & ~os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(exc, str(path)) from None
    try:
        _check_regular(fd, str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, limit: int, what: str) -> bytes:
    too_big = Unreadable(f"{what} is larger than this verifier reads ({limit // MiB} MiB)")
    chunks: list[bytes] = []
    total = 0
    try:
        if os.fstat(fd).st_size > limit:
            raise too_big  # refused without reading it (a sparse file costs nothing to make)
        while total <= limit:
            data = os.read(fd, min(MiB, limit + 1 - total))
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            total += len(data)
    except OSError as exc:
        raise Unreadable(f"cannot read {what}: {exc.strerror}") from None
    raise too_big  # it grew while it was read


def read_beneath(root: Path, rel: str, limit: int) -> bytes:
    """The bytes of regular file ``rel`` below ``root`` (see the module doc); Unreadable if not."""
    fd = open_beneath(root, rel)
    try:
        return _read_fd(fd, limit, rel)
    finally:
        os.close(fd)


def read_file(path: Path, limit: int, *, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``follow``: see open_file)."""
    fd = open_file(path, follow=follow)
    try:
        return _read_fd(fd, limit, str(path))
    finally:
        os.close(fd)


def hash_fd(fd: int, what: str) -> tuple[str, int]:
    """SHA-256 and size of an open file, read ahead on a helper thread (hashing overlaps I/O)."""
    h = hashlib.sha256()
    size = 0
    blocks: queue.Queue[bytes | OSError] = queue.Queue(maxsize=_READ_AHEAD)
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                data = os.read(fd, _HASH_BLOCK)
                blocks.put(data)
                if not data:
                    return
        except OSError as exc:
            blocks.put(exc)

    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    reader = threading.Thread(target=read, name="verify-read", daemon=True)
    reader.start()
    try:
        while True:
            item = blocks.get()
            if isinstance(item, OSError):
                raise Unreadable(f"cannot read {what}: {item.strerror}")
            if not item:
                return h.hexdigest(), size
            h.update(item)
            size += len(item)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                blocks.get_nowait()
            reader.join(timeout=0.01)


def hash_beneath(root: Path, rel: str) -> tuple[str, int]:
    fd = open_beneath(root, rel)
    try:
        return hash_fd(fd, rel)
    finally:
        os.close(fd)


def hash_file(path: Path, *, follow: bool = False) -> tuple[str, int]:
    """SHA-256 and size of a regular file (``follow``: see open_file)."""
    fd = open_file(path, follow=follow)
    try:
        return hash_fd(fd, str(path))
    finally:
        os.close(fd)
