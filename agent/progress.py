"""What the station is doing right now: an in-memory registry of dock sessions and copies.

The store holds what lasts (clip states, custody log); this registry holds
what only the running daemon knows and nobody needs after a restart: which
camera is in which dock, how many bytes of the clip being copied are done,
how fast, and which step each clip is in.  The dock session feeds it
through :class:`DockObserver` (``Offloader(observer=...)``), the station
through :meth:`ProgressRegistry.queued` / :meth:`ProgressRegistry.undocked`.
:mod:`agent.overview` joins the two into the figures the pages, the MQTT
status and ``bwc-agent status`` show.

Invariants:

* the registry is thread-safe (dock workers write, the web server and the
  MQTT status read); readers get copies (:meth:`ProgressRegistry.snapshot`),
  never the live objects;
* it is bounded: one entry per docked handle and one per recording listed on
  that camera; an undocked handle's entry is dropped;
* ``version`` increases on every change, so a reader can tell "nothing new"
  without comparing snapshots; :meth:`wait_changed` wakes waiting readers.
"""

from __future__ import annotations

import collections
import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.base import DeviceInfo, Recording

# Steps of one clip, in order.  "done" is sealed (or a duplicate of a sealed clip);
# "failed" is quarantined or reset for the next dock.
CLIP_PHASES = ("waiting", "copying", "verifying", "probing", "sealing", "done", "failed")
# Steps of one dock session.
SESSION_PHASES = ("queued", "identifying", "listing", "copying", "finished")

# Weight of the newest sample in the copy rate's moving average: smooth enough that
# the estimate does not jump per chunk, quick enough to follow a slower camera.
RATE_SMOOTHING = 0.3
# The throughput the metrics and the status show: bytes of the last 10 s, sampled twice a
# second at most (a scrape every 15 s sees the rate of the moment, not of the whole dock).
METER_WINDOW_S = 10.0
METER_SAMPLE_S = 0.5


@dataclass
class ClipProgress:
    clip_id: str
    path: str
    size: int
    phase: str = "waiting"
    done: int = 0


@dataclass
class DockProgress:
    """One docking of one camera, from the dock event until it is undocked."""

    handle: str
    phase: str = "queued"
    serial: str = ""
    officer_id: str = ""
    officer_name: str = ""
    model: str = ""
    battery: Any = None
    listed: list[tuple[str, int, float]] | None = None  # (path, size, mtime) of this docking
    unreadable: int = 0  # entries that could not be read and may hide recordings
    errors: list[str] = field(default_factory=list)
    clips: dict[str, ClipProgress] = field(default_factory=dict)  # clip_id -> progress
    bytes_per_s: float = 0.0
    _rate_mark: tuple[float, int] | None = None  # (monotonic time, bytes) of the last sample

    @property
    def running(self) -> bool:
        return self.phase != "finished"


class DockObserver(Protocol):
    """What a dock session reports while it runs (every method must return quickly)."""

    def identified(self, handle: str, info: DeviceInfo) -> None: ...

    def listed(self, handle: str, recordings: list[Recording], unreadable: int,
               todo: list[tuple[str, Recording]]) -> None:
        """The camera's recordings this docking, and the (clip_id, recording) to copy."""
        ...

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None: ...

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None: ...

    def finished(self, handle: str, errors: list[str]) -> None: ...


class ByteMeter:
    """Bytes moved since the daemon started (a counter) and the rate of the last seconds.

    Thread-safe and bounded: the bytes are kept in buckets of :data:`METER_SAMPLE_S`
    over :data:`METER_WINDOW_S`.  The total only grows (a copy that starts over counts
    the bytes read again: they were read again).
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.total = 0
        self._buckets: collections.deque[list[float]] = collections.deque(
            maxlen=int(METER_WINDOW_S / METER_SAMPLE_S) + 2)  # [start time, bytes]

    def add(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self.total += count
            now = self._clock()
            if self._buckets and now - self._buckets[-1][0] < METER_SAMPLE_S:
                self._buckets[-1][1] += count
            else:
                self._buckets.append([now, count])

    def rate(self) -> float:
        """Bytes per second over the last :data:`METER_WINDOW_S` (0 when idle that long)."""
        with self._lock:
            now = self._clock()
            while self._buckets and now - self._buckets[0][0] > METER_WINDOW_S:
                self._buckets.popleft()
            if not self._buckets:
                return 0.0
            moved = sum(b[1] for b in self._buckets)
            # Over the time since the oldest bucket began, at least one bucket's length
            # (a burst just now is not divided by ~0).
            return moved / max(now - self._buckets[0][0], METER_SAMPLE_S)


class ProgressRegistry:
    """The live figures of every dock; implements :class:`DockObserver`.

    ``ingested`` and ``uploaded`` meter the bytes read off cameras and the bytes the
    upload server confirmed (the metrics and the status show them).
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._docks: dict[str, DockProgress] = {}
        self._cond = threading.Condition()
        self.version = 0
        self.ingested = ByteMeter(clock)
        self.uploaded = ByteMeter(clock)

    # --- written by the station and the dock sessions ----------------------------------

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()

    def queued(self, handle: str) -> None:
        """A camera was docked: its session is queued (a new docking starts afresh)."""
        with self._cond:
            old = self._docks.get(handle)
            if old is not None and old.running:
                return  # the running session is followed by another: keep its figures
            self._docks[handle] = DockProgress(handle=handle)
            self._changed()

    def undocked(self, handle: str) -> None:
        with self._cond:
            if self._docks.pop(handle, None) is not None:
                self._changed()

    def identified(self, handle: str, info: DeviceInfo) -> None:
        with self._cond:
            dock = self._dock(handle)
            if dock is None:
                return
            dock.phase = "listing"
            dock.serial, dock.officer_id = info.serial, info.officer_id
            dock.officer_name, dock.model = info.officer_name, info.model
            dock.battery = getattr(info, "battery", None)
            dock.errors = []
            self._changed()

    def listed(self, handle: str, recordings: list[Recording], unreadable: int,
               todo: list[tuple[str, Recording]]) -> None:
        with self._cond:
            dock = self._dock(handle)
            if dock is None:
                return
            dock.phase = "copying"
            dock.listed = [(r.path, r.size, r.mtime) for r in recordings]
            dock.unreadable = unreadable
            dock.clips = {clip_id: ClipProgress(clip_id, rec.path, rec.size)
                          for clip_id, rec in todo}
            self._changed()

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        if phase not in CLIP_PHASES:
            raise ValueError(f"unknown clip phase {phase!r}")
        with self._cond:
            dock = self._dock(handle)
            if dock is None:
                return
            clip = dock.clips.get(clip_id)
            if clip is None:
                clip = dock.clips[clip_id] = ClipProgress(clip_id, rec.path, rec.size)
            if phase == "copying":
                clip.done = 0  # a retry starts over
                dock._rate_mark = (self._clock(), self._copied(dock))
            elif phase in ("verifying", "probing", "sealing", "done"):
                clip.done = clip.size
            clip.phase = phase
            self._changed()

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None:
        with self._cond:
            dock = self._dock(handle)
            if dock is None:
                return
            clip = dock.clips.get(clip_id)
            if clip is None:
                return
            before = clip.done
            clip.done = min(done, clip.size) if clip.size else done
            self.ingested.add(clip.done - before)
            now, total = self._clock(), self._copied(dock)
            mark = dock._rate_mark
            if mark is not None and now - mark[0] >= 0.2:
                sample = (total - mark[1]) / (now - mark[0])
                dock.bytes_per_s = (sample if dock.bytes_per_s == 0 else
                                    RATE_SMOOTHING * sample
                                    + (1 - RATE_SMOOTHING) * dock.bytes_per_s)
                dock._rate_mark = (now, total)
            self._changed()

    def finished(self, handle: str, errors: list[str]) -> None:
        with self._cond:
            dock = self._dock(handle)
            if dock is None:
                return
            dock.phase = "finished"
            dock.errors = list(errors)
            for clip in dock.clips.values():
                if clip.phase not in ("done", "failed"):
                    clip.phase = "failed" if errors else clip.phase
            self._changed()

    def _dock(self, handle: str) -> DockProgress | None:
        """The dock's entry; None once undocked (a session may outlive its camera briefly)."""
        dock = self._docks.get(handle)
        if dock is not None and dock.phase == "queued":
            dock.phase = "identifying"
        return dock

    @staticmethod
    def _copied(dock: DockProgress) -> int:
        return sum(c.done for c in dock.clips.values())

    # --- read by the pages and the status -------------------------------------------------

    def snapshot(self) -> list[DockProgress]:
        """A deep copy of every dock, sorted by handle (tiles keep their place)."""
        with self._cond:
            return [copy.deepcopy(self._docks[h]) for h in sorted(self._docks)]

    def wait_changed(self, since: int, timeout: float) -> int:
        """Block until ``version`` differs from ``since`` or ``timeout`` passes; the version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != since, timeout=timeout)
            return self.version


class NullObserver:
    """An observer that ignores everything (sessions run without a registry)."""

    def identified(self, handle: str, info: DeviceInfo) -> None:
        pass

    def listed(self, handle: str, recordings: list[Recording], unreadable: int,
               todo: list[tuple[str, Recording]]) -> None:
        pass

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        pass

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None:
        pass

    def finished(self, handle: str, errors: list[str]) -> None:
        pass
