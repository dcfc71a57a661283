"""Real file systems for tests: a tmpfs of a given size, a FAT image served by fusefat.

Mounting needs root (CI runs as root); elsewhere the tests that need it are
skipped, saying why.  Every mount is undone when its context ends, also when
the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting {what} needs root")


def _unmount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


@contextlib.contextmanager
def tmpfs(point: Path, *, size: str = "4m", readonly: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``point`` (created if missing)."""
    _need_root("a tmpfs")
    point.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if readonly else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        _unmount(point)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        block = b"\0" * (1 << 16)
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:  # the last partial block, byte by byte
                f.write(b"\0")
        except OSError:
            pass
    assert shutil.disk_usage(directory).free < (1 << 16)
    return filler


def fat_image(path: Path, *, size_mb: int = 16) -> Path:
    """An empty FAT file-system image (mkfs.vfat) at ``path``."""
    if shutil.which("mkfs.vfat") is None:
        pytest.skip("mkfs.vfat (dosfstools) is not installed")
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-n", "BWCCAM", str(path)], check=True, capture_output=True)
    return path


class FuseFat:
    """A FAT image mounted with fusefat; ``kill()`` ends its daemon as a crash would."""

    def __init__(self, image: Path, point: Path, *, writable: bool) -> None:
        self.image, self.point, self.writable = image, point, writable
        self.pid: int | None = None

    def mount(self) -> None:
        _need_root("a FUSE file system")
        if shutil.which("fusefat") is None or not os.path.exists("/dev/fuse"):
            pytest.skip("fusefat or /dev/fuse is not available")
        self.point.mkdir(parents=True, exist_ok=True)
        options = ["-o", "rw+" if self.writable else "ro"]
        # -f: the daemon stays in the foreground, so its pid is ours to kill (it then
        # prints a debug trace, which nobody reads).
        proc = subprocess.Popen(["fusefat", "-f", *options, str(self.image), str(self.point)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.point):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"fusefat could not mount {self.image}")
            time.sleep(0.02)
        self.pid = proc.pid
        self._proc = proc

    def kill(self) -> None:
        """SIGKILL the daemon: every later access to the mount fails with ENOTCONN."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)

    def unmount(self) -> None:
        if self.pid is None:
            return
        subprocess.run(["fusermount", "-u", "-z", str(self.point)], check=False,
                       capture_output=True)
        if self._proc.poll() is None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self.pid = None


@contextlib.contextmanager
def fusefat(image: Path, point: Path, *, writable: bool = False) -> Iterator[FuseFat]:
    mounted = FuseFat(image, point, writable=writable)
    mounted.mount()
    try:
        yield mounted
    finally:
        mounted.unmount()


def copy_tree_into(source: Path, target: Path) -> None:
    """Copy files and directories (contents only: FAT keeps no modes or owners)."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            shutil.copyfile(path, dest)


def loop_first_directory(image: Path) -> None:
    """Corrupt a FAT12/16 image: its first directory (cluster 2) is made to contain itself.

    The first subdirectory of the directory at cluster 2 gets cluster 2 as its
    start: ``<first>/<sub>`` is ``<first>`` again, as on a damaged card.  Use an
    image on which the first thing created was that directory, then its subdirectory.
    """
    data = bytearray(image.read_bytes())
    sector = int.from_bytes(data[0x0B:0x0D], "little")
    per_cluster = data[0x0D]
    reserved = int.from_bytes(data[0x0E:0x10], "little")
    fats, fat_size = data[0x10], int.from_bytes(data[0x16:0x18], "little")
    root_entries = int.from_bytes(data[0x11:0x13], "little")
    assert fat_size, "FAT12/16 only"
    data_start = (reserved + fats * fat_size) * sector + root_entries * 32
    first = data_start  # cluster 2
    subdirs = []
    for offset in range(first, first + per_cluster * sector, 32):
        entry = data[offset:offset + 32]
        if entry[0] == 0:
            break
        attr = entry[11]
        if entry[0] == 0xE5 or attr == 0x0F or entry[:1] == b".":
            continue  # deleted, long-name slot, "." or ".."
        if attr & 0x10:
            subdirs.append(offset)
    assert subdirs, "no subdirectory in the first directory"
    data[subdirs[0] + 26:subdirs[0] + 28] = (2).to_bytes(2, "little")
    image.write_bytes(bytes(data))


@contextlib.contextmanager
def bind_mount(source: Path, point: Path) -> Iterator[Path]:
    """``source`` bind-mounted at ``point`` (same file system, same inodes)."""
    _need_root("a bind mount")
    result = subprocess.run(["mount", "--bind", str(source), str(point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        _unmount(point)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """``directory`` made read-only in place (a read-only bind mount over itself)."""
    _need_root("a read-only bind mount")
    for args in (["--bind", str(directory), str(directory)],
                 ["-o", "remount,bind,ro", str(directory)]):
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _unmount(directory)
            pytest.skip(f"cannot make {directory} read-only here: {result.stderr.strip()}")
    try:
        yield directory
    finally:
        _unmount(directory)
