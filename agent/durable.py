"""Durable file writes: temp file in the same directory, write, fsync, rename, fsync dir.

``os.replace`` alone survives a process crash but not a power cut at the
dock: without the two fsyncs the rename can reach the disk before the data,
or not at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (creations, renames, unlinks) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    target = Path(path)
    # A fresh, unpredictable name opened with O_EXCL (which never follows a symlink):
    # the directory may be a camera's, and whatever was planted there is not written to.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def makedirs_durable(path: str | os.PathLike[str], mode: int = 0o750) -> Path:
    """Create ``path`` and its missing parents, fsyncing each parent that gained an entry."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, mode)
        fsync_dir(directory.parent)
    return target


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[str]:
    """Delete temp files that write_atomic() left behind when a crash cut it short."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = [p.name for p in folder.iterdir()
               if p.name.startswith(".") and ".tmp-" in p.name and p.is_file()]
    for name in removed:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    if removed:
        fsync_dir(folder)
    return removed
