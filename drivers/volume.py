"""A camera volume as a directory tree: a Device over it, watching for docks.

:func:`walk` (drivers/walk.py) lists a volume without trusting it.
Everything that is not ingested is reported in ``Listing.skipped`` with a
reason (except the identity files a driver names in ``ignore``).

:class:`VolumeDevice` implements the Device protocol for such a tree.
It remembers the raw on-disk bytes of each path from its last listing,
because ``Recording.path`` is decoded text (maybe from GBK) and cannot be
encoded back reliably.

:class:`DockWatcher` is the detector skeleton both directory drivers share:
a docked device is an entry directly below a watched root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from agent.errors import DeviceError, RecordingChangedError, RecordingMissingError
from drivers.base import Device, DeviceInfo, Listing, Recording
from drivers.paths import open_inside, os_error, parent_dir, printable_name
from drivers.walk import NO_HARD_LINKS, walk

__all__ = ["DockWatcher", "VolumeDevice", "walk"]

log = logging.getLogger(__name__)


def _fsync_quietly(dir_fd: int) -> None:
    # Some device file systems refuse fsync on a directory (EINVAL); the
    # unlink itself has happened, and a resurrected clip is only re-seen.
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


_RELEASE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
HASH_BLOCK = 4 * 1024 * 1024


def _open_for_release(dir_fd: int, name: bytes, where: str) -> int:
    try:
        return os.open(name, _RELEASE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RecordingChangedError(f"{where} is now a symlink, not the recording "
                                        "(never followed, never deleted)") from exc
        if exc.errno == errno.ENOENT:
            raise RecordingMissingError(f"{where} no longer exists") from exc
        raise os_error(exc, f"opening {where} to check it") from exc


def _check_held(st: os.stat_result, recording: Recording, root_dev: int, where: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RecordingChangedError(f"{where} is no longer a regular file (never deleted)")
    if st.st_dev != root_dev:
        raise RecordingChangedError(f"{where} is on another file system (never deleted)")
    if st.st_nlink > 1:
        raise RecordingChangedError(f"{where} has {st.st_nlink} hard links ({NO_HARD_LINKS})")
    if st.st_size != recording.size or round(st.st_mtime * 1000) != round(
            recording.mtime * 1000):
        raise RecordingChangedError(f"changed on the camera since it was copied "
                                    f"(size {recording.size} -> {st.st_size})")


def _hash(fd: int, where: str) -> str:
    os.set_blocking(fd, True)
    digest = hashlib.sha256()
    try:
        while block := os.read(fd, HASH_BLOCK):
            digest.update(block)
    except OSError as exc:
        raise os_error(exc, f"re-reading {where} for the check") from exc
    return digest.hexdigest()


def _unlink_if_same(dir_fd: int, name: bytes, held: os.stat_result, where: str) -> None:
    """Unlink ``name`` if it still names the held file (same st_dev and st_ino)."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise RecordingChangedError(
                f"{where} was replaced on the camera while it was checked (another file "
                "under its name now): nothing deleted")
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise RecordingMissingError(f"cannot delete {where}: it no longer exists") from exc
        raise os_error(exc, f"deleting {where}") from exc
    _fsync_quietly(dir_fd)


class VolumeDevice:
    """The Device protocol over a directory tree (a mounted volume or a simulated camera).

    Subclasses provide ``identify()`` and may refine ``present()``,
    ``sync_clock()`` and ``annotate()`` (recorded start / important flag).
    """

    driver_key = "volume"

    def __init__(self, root: Path, extensions: Iterable[str], ignore: Iterable[str] = ()) -> None:
        self.root = root
        self.extensions = frozenset(extensions)
        self._ignore = tuple(ignore)
        self._raw: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def handle(self) -> str:
        # Printable UTF-8 whatever bytes the mount point's name has (a label in a
        # camera's code page): the handle goes into the store and the custody log.
        return printable_name(os.fsencode(self.root))

    def identify(self) -> DeviceInfo:
        raise NotImplementedError

    def annotate(self, recording: Recording) -> Recording:
        """Add what the name or metadata says (recorded start, important); default: nothing."""
        return recording

    def recordings(self) -> Listing:
        raw: dict[str, bytes] = {}
        listing = walk(self.root, self.extensions, self._ignore, raw)
        listing.recordings = [self.annotate(r) for r in listing.recordings]
        with self._lock:
            self._raw = raw
        log.debug("listed %s: %d recordings, %d skipped", self.root,
                  len(listing.recordings), len(listing.skipped))
        return listing

    def _raw_path(self, recording: Recording) -> bytes:
        with self._lock:
            raw = self._raw.get(recording.path)
        if raw is None:
            # Not in the last listing (e.g. a recording from a previous dock):
            # list again rather than guess how the name was encoded.
            listing = self.recordings()
            with self._lock:
                raw = self._raw.get(recording.path)
            if raw is None and all(s.path != recording.path for s in listing.skipped):
                # Nothing at all by that name: the file is gone (deleted on the camera, or
                # released by this station just before a crash), which is no I/O failure.
                raise RecordingMissingError(f"{recording.path!r} is not on {self.root} "
                                            "(not in its listing)")
        if raw is None:
            raise DeviceError(f"{recording.path!r} is not on {self.root} (not in its listing)")
        return raw

    def open(self, recording: Recording) -> BinaryIO:
        stream = open_inside(self.root, self._raw_path(recording))
        links = os.fstat(stream.fileno()).st_nlink
        if links > 1:  # swapped for a link since it was listed (drivers/walk.py)
            stream.close()
            raise DeviceError(f"refusing {recording.path!r} on {self.root}: it has {links} "
                              f"hard links ({NO_HARD_LINKS})")
        return stream

    def stat(self, recording: Recording) -> tuple[int, float]:
        raw = self._raw_path(recording)
        with parent_dir(self.root, raw) as (dir_fd, name, _dev):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise RecordingMissingError(f"{recording.path!r} no longer exists on "
                                                f"{self.root}") from exc
                raise os_error(exc, f"stat {recording.path!r} on {self.root}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError(f"{recording.path!r} on {self.root} is no longer a regular file")
        return st.st_size, st.st_mtime

    def sync_clock(self, now: float) -> float | None:
        return None

    def release(self, recording: Recording, *, sha256: str,
                before_delete: Callable[[], None] | None = None) -> None:
        """Unlink the recording if, and only if, it is the file that hashes to ``sha256``.

        The file is opened through its directory's descriptor without following
        a link or blocking on a FIFO, checked (regular, on the volume, one link,
        the recording's size and mtime), hashed from that descriptor and kept
        open; after ``before_delete``, its name must still lead to the same
        st_dev and st_ino (fstatat, no link followed) just before unlinkat.
        Anything swapped in under the name at any point is left alone
        (RecordingChangedError).
        """
        raw = self._raw_path(recording)
        where = f"{recording.path!r} on {self.root}"
        with parent_dir(self.root, raw) as (dir_fd, name, root_dev):
            fd = _open_for_release(dir_fd, name, where)
            try:
                held = os.fstat(fd)
                _check_held(held, recording, root_dev, where)
                digest = _hash(fd, where)
                if digest != sha256:
                    raise RecordingChangedError(f"bytes on the camera hash to {digest}, not "
                                                f"the acknowledged {sha256}")
                if before_delete is not None:
                    before_delete()
                _unlink_if_same(dir_fd, name, held, where)
            finally:
                os.close(fd)
        with self._lock:
            self._raw.pop(recording.path, None)
        log.info("released %s from %s", recording.path, self.root)

    def present(self) -> bool:
        try:
            return stat.S_ISDIR(os.stat(self.root).st_mode)
        except OSError:
            return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"



class DockWatcher:
    """A Detector skeleton: docked devices are entries directly below ``root``.

    Subclasses implement :meth:`probe` (is the entry ``name`` a docked device
    right now?).  File-system events (watchdog) and an optional periodic
    rescan only say *where* to look; the decision always comes from
    :meth:`probe`, so out-of-order or coalesced events cannot produce a
    wrong dock state.  Each handle is reported docked once until it is
    reported undocked; devices returned by :meth:`scan` count as reported,
    so calling ``scan()`` then ``start()`` (or only ``start()``, which
    reports what is already there) never reports a device twice.

    Only ``root`` is watched, not the trees below it (a camera holds
    thousands of files, and the ingest reading them must not flood the
    watcher).  An entry for which :meth:`watch_inside` is true (a camera
    directory, whose identity file may appear or vanish) gets a watch of its
    own, not recursive, while it exists.  Those watches are added and
    removed on the watchdog dispatch thread only (or before it starts), so
    the observer's lock and ours are never taken in opposite orders.

    Callbacks run on the watcher's threads, one at a time, in order; they
    must hand work off quickly (e.g. to a queue).
    """

    rescan_interval_s: float | None = None  # also re-check every so often (mount tables)

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._known: dict[str, str] = {}  # entry name -> device handle
        self._on_dock: Callable[[Device], None] | None = None
        self._on_undock: Callable[[str], None] | None = None
        self._observer: BaseObserver | None = None
        self._handler = _Handler(self._event)
        self._subwatches: dict[str, ObservedWatch] = {}  # dispatch thread only
        self._stopping = threading.Event()
        self._rescanner: threading.Thread | None = None

    def probe(self, name: str) -> Device | None:
        """The device docked as entry ``name`` of ``root`` now, or None."""
        raise NotImplementedError

    def watch_inside(self, name: str) -> bool:
        """Whether changes directly inside entry ``name`` can dock or undock it."""
        return False

    def prepare(self) -> None:
        """Check or create ``root`` before watching; raise DeviceError if unusable."""
        if not self.root.is_dir():
            raise DeviceError(f"{self.root}: not a directory (cannot watch it for devices)")

    def wait_for_change(self, timeout: float) -> None:
        """Block until something may have changed, or ``timeout`` seconds; default: sleep."""
        self._stopping.wait(timeout)

    def _names(self) -> list[str]:
        try:
            names = set(os.listdir(self.root))
        except OSError as exc:
            log.warning("cannot list %s: %s", self.root, exc.strerror)
            names = set()
        with self._lock:
            names.update(self._known)
        return sorted(names)

    def scan(self) -> list[Device]:
        devices: list[Device] = []
        with self._lock:
            for name in self._names():
                device = self._safe_probe(name)
                if device is not None:
                    self._known[name] = device.handle
                    devices.append(device)
        return devices

    def _safe_probe(self, name: str) -> Device | None:
        try:
            return self.probe(name)
        except Exception:  # one odd entry must not stop the detector thread
            log.exception("probing %s/%s failed", self.root, name)
            return None

    def reconcile(self, name: str) -> None:
        """Compare entry ``name`` with what was reported, and report the difference."""
        with self._lock:
            if self._on_dock is None or self._on_undock is None:
                return
            device = self._safe_probe(name)
            if device is not None and name not in self._known:
                self._known[name] = device.handle
                log.info("docked: %s", device.handle)
                self._on_dock(device)
            elif device is None and name in self._known:
                handle = self._known.pop(name)
                log.info("undocked: %s", handle)
                self._on_undock(handle)

    def reconcile_all(self) -> None:
        for name in self._names():
            self.reconcile(name)

    def _event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "deleted", "moved"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            rel = os.path.relpath(path, self.root)
            if rel in (".", "..") or rel.startswith("../"):
                continue
            name = rel.split(os.sep, 1)[0]
            self.reconcile(name)
            self._update_subwatch(name)

    def _update_subwatch(self, name: str) -> None:
        """Watch inside entry ``name`` while it needs it; call on the dispatch thread only."""
        observer = self._observer
        if observer is None:
            return
        want = self._safe_watch_inside(name)
        have = self._subwatches.get(name)
        if want and have is None:
            try:
                self._subwatches[name] = observer.schedule(
                    self._handler, str(self.root / name), recursive=False)
            except OSError:  # vanished meanwhile; its deletion event follows
                return
            # It may have completed before the watch was in place.
            self.reconcile(name)
        elif not want and have is not None:
            del self._subwatches[name]
            with contextlib.suppress(Exception):  # already gone with its directory
                observer.unschedule(have)

    def _safe_watch_inside(self, name: str) -> bool:
        try:
            return self.watch_inside(name)
        except Exception:
            log.exception("checking %s/%s failed", self.root, name)
            return False

    def start(self, on_dock: Callable[[Device], None], on_undock: Callable[[str], None]) -> None:
        self.prepare()
        with self._lock:
            self._on_dock, self._on_undock = on_dock, on_undock
        observer = Observer()
        self._observer = observer
        try:
            observer.schedule(self._handler, str(self.root), recursive=False)
            # Before the dispatch thread runs, this thread may add the watches.
            for name in self._names():
                self._update_subwatch(name)
            observer.start()
        except OSError as exc:
            self._observer = None
            raise DeviceError(f"cannot watch {self.root} for devices: {exc.strerror or exc}"
                              ) from exc
        if self.rescan_interval_s is not None:
            self._stopping.clear()
            self._rescanner = threading.Thread(target=self._rescan_loop, daemon=True,
                                               name=f"rescan:{self.root}")
            self._rescanner.start()
        # After the watch is in place, so nothing docked in between is missed.
        self.reconcile_all()

    def _rescan_loop(self) -> None:
        interval = self.rescan_interval_s or 1.0
        while not self._stopping.is_set():
            self.wait_for_change(interval)
            if self._stopping.is_set():
                return
            try:
                self.reconcile_all()
            except Exception:  # keep watching whatever one pass met
                log.exception("rescan of %s failed", self.root)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._on_dock = self._on_undock = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None
            self._subwatches.clear()
        if self._rescanner is not None:
            self._rescanner.join(timeout=10)
            self._rescanner = None


class _Handler(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._callback(event)
