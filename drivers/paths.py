"""Names found on a device, and opening files by them without leaving the volume.

Everything here treats a device's names as untrusted data:

* :func:`stored_name` turns on-disk bytes into the name the station stores
  (UTF-8, else GBK as Chinese cameras write; ``%``, backslashes, control
  characters and undecodable bytes escaped as ``%XX``), from which the bytes
  can always be recovered, and says how, so the manifest can carry the flags;
  :func:`decode_name` gives a name for people (handles, messages).
* :func:`unsafe_reason` refuses relative paths that could name something
  outside the volume or confuse a reader (absolute, ``..``, NUL, control
  characters, backslashes).
* :func:`open_inside` opens a file one component at a time with
  ``dir_fd`` and ``O_NOFOLLOW``: a symlink anywhere on the path, a
  non-regular file, or a component on another file system is refused, so
  a hostile or corrupt volume cannot make the agent read outside it, block
  on a FIFO, or open a device node.

Invariant: no function here ever follows a symlink below the volume root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agent.errors import DeviceError, DeviceGoneError, RecordingMissingError

# errno values that mean "the medium went away" rather than "this file is bad".
# ENOTCONN and ECONNABORTED are what a FUSE or network volume gives once its
# daemon died or its connection was aborted: the camera is as gone as an unplugged one.
GONE_ERRNOS = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOMEDIUM,
                         errno.ENOTCONN, errno.ECONNABORTED})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


def printable_name(raw: bytes) -> str:
    """A name for the store and the log: decoded, with the raw bytes in hex when undecodable.

    Replacement characters alone would make two undecodable names the same.
    """
    text, flags = decode_name(raw)
    return f"{text} [{raw.hex()}]" if "name.undecodable" in flags else text


def decode_name(raw: bytes) -> tuple[str, tuple[str, ...]]:
    """Decode one on-disk name; returns (text, flags).

    Flags: ``()`` for UTF-8, ``("name.gbk",)`` when the bytes are not UTF-8
    but are GBK (the encoding of most Chinese camera firmware), and
    ``("name.undecodable",)`` when neither fits (replacement characters).
    """
    try:
        return raw.decode("utf-8"), ()
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gbk"), ("name.gbk",)
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), ("name.undecodable",)


def stored_name(raw: bytes, encoding: str | None = None) -> tuple[str, str | None,
                                                                 tuple[str, ...]]:
    """The name an on-disk name is stored under: (text, the path's encoding after it, flags).

    ``encoding`` is that of the path's directories so far (None while they are
    all ASCII): a name is decoded in it, else as UTF-8 then GBK while the path
    has none, else not at all.  The text is then escaped (:func:`escape`), so
    it is safe in a path (no backslash, no control character) and the exact
    bytes can always be recovered (docs/FORMATS.md section 1).  Flags:
    ``name.gbk`` (the path is GBK), ``name.undecodable`` (bytes that are not
    text in the path's encoding are escaped), ``name.escaped`` (the text has
    ``%XX`` escapes).
    """
    flags: tuple[str, ...] = ()
    for candidate in ("utf-8", "gbk"):
        if encoding not in (None, candidate):
            continue
        try:
            text = raw.decode(candidate)
        except UnicodeDecodeError:
            continue
        if not raw.isascii():
            encoding = candidate
        break
    else:
        text, flags = _undecoded(raw), ("name.undecodable",)
    if encoding == "gbk":
        flags = ("name.gbk", *flags)
    escaped = escape(text)
    if escaped != text:
        flags = (*flags, "name.escaped")
    return escaped, encoding, flags


def escaped_bytes(raw: bytes) -> str:
    """``raw`` with every byte outside printable ASCII escaped: never equal to a decoded name.

    For two on-disk names that decode alike (UTF-8 and GBK bytes of the same text).
    """
    return escape(_undecoded(raw))


def escape(text: str) -> str:
    """``%``, backslash and control characters as ``%XX``; undecodable bytes too.

    Undecodable bytes arrive as the lone surrogates U+DC80..U+DCFF
    (``surrogateescape``); each stands for one byte.
    """
    return _ESCAPED.sub(_escape_one, text)


_ESCAPED = re.compile(r"[%\\\x00-\x1f\x7f\udc80-\udcff]")  # what escape() writes as %XX


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"


def _undecoded(raw: bytes) -> str:
    # ASCII stays text; every other byte becomes a lone surrogate, escaped as %XX.
    return raw.decode("ascii", errors="surrogateescape")


def unsafe_reason(relpath: str) -> str | None:
    """Why ``relpath`` (decoded, '/'-separated) is not a safe path inside a volume, or None."""
    if not relpath:
        return "empty path"
    if relpath.startswith("/"):
        return "absolute path"
    if "\x00" in relpath:
        return "NUL character in name"
    if "\\" in relpath:
        return "backslash in name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in relpath):
        return "control character in name"
    for part in relpath.split("/"):
        if part == "":
            return "empty path component"
        if part in (".", ".."):
            return f"'{part}' path component"
    return None


def _raw_components(relpath: str | bytes) -> list[bytes]:
    """Split ``relpath`` into raw name components, refusing anything unsafe."""
    if isinstance(relpath, str):
        reason = unsafe_reason(relpath)
        if reason is not None:
            raise DeviceError(f"refusing path {relpath!r} on the device: {reason}")
        return [os.fsencode(p) for p in relpath.split("/")]
    # Raw bytes, as a listing read them: only structural checks.  Any other byte is
    # a name's (a backslash may be the second byte of a GBK character, a camera may
    # write a newline): each component goes to openat() alone, never to a shell.
    shown = relpath.decode("utf-8", errors="replace")
    if not relpath or relpath.startswith(b"/"):
        raise DeviceError(f"refusing path {shown!r} on the device: empty or absolute path")
    if b"\0" in relpath:
        raise DeviceError(f"refusing path {shown!r} on the device: NUL byte in name")
    parts = relpath.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise DeviceError(f"refusing path {shown!r} on the device: empty, '.' or '..' component")
    return parts


def _shown(relpath: str | bytes) -> str:
    if isinstance(relpath, bytes):
        return decode_name(relpath)[0]
    return relpath


def os_error(exc: OSError, what: str) -> DeviceError:
    """Convert an OSError met while using the device into DeviceError and its kinds."""
    text = exc.strerror or str(exc)
    if exc.errno in GONE_ERRNOS:
        return DeviceGoneError(f"{what}: device gone ({text})")
    if exc.errno == errno.ENOENT:
        return RecordingMissingError(f"{what}: {text}")
    return DeviceError(f"{what}: {text}")


def open_root(root: Path) -> int:
    """Open the volume root directory (the configured path may itself be a symlink)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise DeviceGoneError(f"volume {root} is gone (no such directory)") from exc
        raise os_error(exc, f"cannot open volume {root}") from exc


def _is_symlink(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def parent_dir(root: Path, relpath: str | bytes) -> Iterator[tuple[int, bytes, int]]:
    """Yield (fd of the parent directory, final name, st_dev of the root) for ``relpath``.

    Every directory component is opened with O_NOFOLLOW relative to the
    previous one and must be on the root's file system.
    """
    parts = _raw_components(relpath)
    shown = _shown(relpath)
    fd = open_root(root)
    try:
        root_dev = os.fstat(fd).st_dev
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (or ELOOP).
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR
                                                and _is_symlink(fd, part)):
                    raise DeviceError(
                        f"refusing {shown!r} on {root}: a directory on the path is a symlink"
                    ) from exc
                if exc.errno == errno.ENOTDIR:
                    raise DeviceError(
                        f"refusing {shown!r} on {root}: a path component is not a directory"
                    ) from exc
                raise os_error(exc, f"cannot open {shown!r} on {root}") from exc
            os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != root_dev:
                raise DeviceError(f"refusing {shown!r} on {root}: path crosses into another "
                                  "file system")
        yield fd, parts[-1], root_dev
    finally:
        os.close(fd)


class _GuardedRaw(io.RawIOBase):
    """A raw reader over an fd that turns a vanished medium into DeviceGoneError."""

    def __init__(self, fd: int, label: str) -> None:
        super().__init__()
        self._fd = fd
        self._label = label

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            return os.readv(self._fd, [buffer])
        except OSError as exc:
            raise os_error(exc, f"reading {self._label}") from exc

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return os.lseek(self._fd, offset, whence)
        except OSError as exc:
            raise os_error(exc, f"seeking in {self._label}") from exc

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            except OSError:
                # Read only: nothing is lost.  Linux frees the descriptor even when close
                # reports an error (a FUSE volume whose daemon died says ENOTCONN); the
                # reads before it have already said whether the device is gone.
                pass
            finally:
                super().close()


def guarded_stream(fd: int, label: str, buffer_size: int = 1 << 20) -> BinaryIO:
    """Wrap an open fd in a buffered binary stream whose read errors are DeviceError(s)."""
    return io.BufferedReader(_GuardedRaw(fd, label), buffer_size=buffer_size)


def open_inside(root: Path, relpath: str | bytes) -> BinaryIO:
    """Open the regular file ``relpath`` below ``root`` for reading, never leaving the volume.

    ``relpath`` is '/'-separated: text (encoded with the file-system
    encoding) or the raw on-disk bytes.  Symlinks anywhere on the path,
    non-regular files (FIFOs, devices, sockets, directories) and components
    on another file system are refused with DeviceError; a vanished volume
    raises DeviceGoneError.
    """
    shown = _shown(relpath)
    with parent_dir(root, relpath) as (dir_fd, name, root_dev):
        try:
            # O_NONBLOCK: opening a FIFO must not hang waiting for a writer.
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DeviceError(f"refusing {shown!r} on {root}: it is a symlink") from exc
            if exc.errno == errno.ENOENT:
                raise DeviceError(f"{shown!r} not found on {root}") from exc
            raise os_error(exc, f"cannot open {shown!r} on {root}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError(f"refusing {shown!r} on {root}: not a regular file")
        if st.st_dev != root_dev:
            raise DeviceError(f"refusing {shown!r} on {root}: on another file system")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return guarded_stream(fd, f"{shown!r} on {root}")
