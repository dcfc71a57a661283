"""The driver contract: what the agent needs from a docked camera or recorder.

A driver module holds its KEY, its config model and its classes, and is
registered by key in ``drivers/__init__.py``.  Two roles:

* a Detector watches for docking and calls back with a Device handle;
* a Device identifies itself, lists its recordings and opens them.

Invariants every driver keeps:

* ``Recording.path`` is the path relative to the volume root as the device
  gives it (POSIX separators, decoded to Unicode).  The agent never uses it
  as a local file-system path; it is data.  Drivers that *do* open files by
  it must resolve it with :func:`drivers.paths.open_inside` (never leave
  the volume root, never follow a symlink).
* ``Device.open`` returns a binary stream over the recording's bytes as they
  are now; a device that disappears raises ``DeviceGoneError``.
* Things found on the device that are not recordings (symlinks, special
  files, unsafe names) are reported in ``Listing.skipped`` with a reason,
  never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from agent.devicepolicy import DevicePolicy


@dataclass(frozen=True)
class DeviceHealth:
    """Battery and recording set-up as a docked device reports them (None: not reported)."""

    battery_percent: int | None = None  # 0-100
    charging: str | None = None  # "charging", "full" or "not_charging"
    resolution: tuple[int, int, int] | None = None  # width, height, frames per second
    at: str = ""  # RFC 3339 UTC time of the reading

    def as_dict(self) -> dict[str, object]:
        resolution = None
        if self.resolution is not None:
            width, height, fps = self.resolution
            resolution = {"width": width, "height": height, "fps": fps}
        return {"battery_percent": self.battery_percent, "charging": self.charging,
                "resolution": resolution, "at": self.at}


@dataclass(frozen=True)
class DeviceInfo:
    """Identity of a docked device, as the device (or the catalog) states it."""

    serial: str
    vendor: str = ""
    model: str = ""
    firmware: str = ""
    officer_id: str = ""
    officer_name: str = ""
    unit_code: str = ""
    unit_name: str = ""
    clock: str | None = None  # device clock at identify(), RFC 3339 UTC, if the device has one
    driver: str = ""
    usb_id: str = ""  # "VID:PID" when known
    name_pattern: str | None = None  # catalog regex for recording names, if any
    health: DeviceHealth | None = None  # battery, charging, resolution at identify()
    flags: tuple[str, ...] = ()  # carried by every recording found in this docking


@dataclass(frozen=True)
class Recording:
    """One recording on a device.  ``path`` is relative to the volume root, POSIX style."""

    path: str
    size: int
    mtime: float  # seconds since the epoch, as the device's file system reports it
    recorded_start: str | None = None  # RFC 3339 UTC, from the name pattern or metadata
    important: bool = False
    name_flags: tuple[str, ...] = ()  # e.g. "name.gbk" when the name was decoded from GBK

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Skipped:
    """An entry on the device that is not ingested, and why (reported to the user)."""

    path: str
    reason: str


@dataclass
class Listing:
    recordings: list[Recording] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@runtime_checkable
class Device(Protocol):
    """A docked device.  One ingest worker thread owns it while docked."""

    @property
    def handle(self) -> str:
        """Stable text naming this docking (mount point, tty, directory)."""
        ...

    def identify(self) -> DeviceInfo: ...

    def recordings(self) -> Listing: ...

    def open(self, recording: Recording) -> BinaryIO:
        """Open the recording for reading; raises DeviceError / DeviceGoneError."""
        ...

    def stat(self, recording: Recording) -> tuple[int, float]:
        """Current (size, mtime) of the recording, to detect changes during a copy."""
        ...

    def sync_clock(self, now: float) -> float | None:
        """Set the device clock if supported; return the measured offset in seconds."""
        ...

    def release(self, recording: Recording, *, sha256: str,
                before_delete: Callable[[], None] | None = None) -> None:
        """Delete the recording from the device (only after a platform ack).

        Only if the file there is still ``recording`` (size, mtime) and its bytes
        hash to ``sha256``, checked on the very file that is deleted: a file swapped
        in under the name meanwhile is never deleted.  ``before_delete`` runs
        after the check, just before the deletion (the caller records that it
        starts).  Raises RecordingMissingError, RecordingChangedError, or
        DeviceError / DeviceGoneError (nothing was deleted, or the caller cannot know).
        """
        ...

    def present(self) -> bool:
        """Whether the device is still docked."""
        ...


@runtime_checkable
class HealthReporter(Protocol):
    """A device that can report its battery while docked (polled by the station)."""

    def read_health(self) -> DeviceHealth | None:
        """A fresh reading, or None when the device cannot be asked now (no I/O then)."""
        ...


@runtime_checkable
class Detachable(Protocol):
    """A device whose volume the station mounted itself (``bwc-agent mount``).

    ``detach()`` tells the mount helper the station is done with it for this
    docking (dock session and releases over), and the helper unmounts it.
    """

    def station_mounted(self) -> bool: ...

    def detach(self) -> None: ...


DockCallback = Callable[[Device], None]
UndockCallback = Callable[[str], None]  # handle


@runtime_checkable
class Detector(Protocol):
    """Watches for devices.  Calls ``on_dock`` once per docking, ``on_undock`` on removal."""

    def start(self, on_dock: DockCallback, on_undock: UndockCallback) -> None: ...

    def scan(self) -> list[Device]:
        """Devices docked right now (used by ``run --once`` and rescans; ``start``
        reports the devices docked already itself)."""
        ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class DeviceContext:
    """What a driver gets from the station besides its own table.

    ``policy`` judges USB devices before anything on them is read; a refused
    device is handed to ``on_dock`` as a :class:`drivers.refused.RefusedDevice`
    so the station records it.  ``run_dir`` is ``[mount] run_dir`` when the
    station mounts camera volumes itself (None otherwise).
    """

    policy: DevicePolicy = field(default_factory=DevicePolicy)
    run_dir: Path | None = None


@dataclass(frozen=True)
class DriverSpec:
    """What the registry knows of a driver: its key, its config model, its detector factory.

    ``make_detector(config, context)`` receives the validated instance of
    ``config_cls`` (the ``[devices.<key>]`` table) and the station's
    :class:`DeviceContext`, and returns a Detector.
    """

    key: str
    config_cls: type
    make_detector: Callable[[object, DeviceContext], Detector]
