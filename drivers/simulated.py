"""Simulated cameras: a directory per camera under a watched root.

A camera is a directory directly below ``[devices.simulated].root`` that
holds ``BWC_DEVICE.json`` (its identity) and recordings anywhere below it
(usually ``DCIM/<date>/``).  Creating the directory docks the camera,
removing it undocks it; ``scripts/simcam`` builds one elsewhere and renames
it into place so the detector never sees half a camera.  If the directory
appears before its identity file, the camera docks when the file appears.

Identity file (JSON object, all strings unless noted)::

    serial, vendor, model, firmware, officer_id, officer_name, unit_code,
    unit_name, clock_offset_s (optional number: the camera clock minus the
    true time, to simulate a wrong clock)

Recording names follow the catalog entry ``catalog_key`` (GA/T 947 style),
which gives each recording its start time and important flag.
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

from __future__ import annotations

import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from agent.configschema import option
from agent.durable import makedirs_durable, write_atomic
from agent.errors import DeviceError
from agent.timeutil import rfc3339
from drivers import catalog as catalog_mod
from drivers.base import Detector, Device, DeviceContext, DeviceInfo, DriverSpec, Recording
from drivers.paths import open_inside
from drivers.volume import DockWatcher, VolumeDevice

log = logging.getLogger(__name__)

KEY = "simulated"
IDENTITY_FILE = "BWC_DEVICE.json"
IDENTITY_FIELDS = ("serial", "vendor", "model", "firmware", "officer_id", "officer_name",
                   "unit_code", "unit_name")
_MAX_IDENTITY_BYTES = 64 * 1024


@dataclass(frozen=True)
class SimulatedConfig:
    root: Path = option(doc="Directory whose subdirectories are simulated cameras "
                            "(created if missing).")
    catalog: Path | None = option(None, doc="Device catalog (name patterns); default: the "
                                            "catalog shipped with bwc-agent.")
    catalog_key: str = option("simulated", doc="Catalog entry of the simulated cameras.")
    read_kib_s: int = option(0, min=0, doc="Read at most this many KiB/s from each camera, "
                                           "as a slow USB camera does (0: as fast as the disk).")


def read_identity(camera_dir: Path) -> dict[str, Any]:
    """Parse and check the identity file; DeviceError names the file and every bad field."""
    where = camera_dir / IDENTITY_FILE
    try:
        with open_inside(camera_dir, IDENTITY_FILE) as stream:
            data = stream.read(_MAX_IDENTITY_BYTES + 1)
    except DeviceError as exc:  # keeps DeviceGoneError a DeviceGoneError
        raise type(exc)(f"{where}: cannot read the camera identity: {exc}") from exc
    if len(data) > _MAX_IDENTITY_BYTES:
        raise DeviceError(f"{where}: larger than {_MAX_IDENTITY_BYTES} bytes, not an identity")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeviceError(f"{where}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DeviceError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    problems = []
    for name in IDENTITY_FIELDS:
        if name not in doc:
            problems.append(f"field {name!r} is missing")
        elif not isinstance(doc[name], str):
            problems.append(f"field {name!r} must be a string, got {doc[name]!r}")
    if not problems and not doc["serial"].strip():
        problems.append("field 'serial' is empty")
    offset = doc.get("clock_offset_s", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, int | float):
        problems.append(f"field 'clock_offset_s' must be a number, got {offset!r}")
    if problems:
        raise DeviceError(f"{where}: " + "; ".join(problems))
    return doc


class SimulatedDevice(VolumeDevice):
    """One simulated camera directory, behaving like a mass-storage camera with a clock."""

    driver_key = KEY

    def __init__(self, camera_dir: Path, entry: catalog_mod.Entry, read_kib_s: int = 0) -> None:
        super().__init__(camera_dir, entry.extensions, ignore=(IDENTITY_FILE,))
        self.entry = entry
        self.read_bytes_s = read_kib_s * 1024

    def open(self, recording: Recording) -> BinaryIO:
        stream = super().open(recording)
        if not self.read_bytes_s:
            return stream
        return io.BufferedReader(_Throttled(stream, self.read_bytes_s))

    def identify(self) -> DeviceInfo:
        doc = read_identity(self.root)
        offset = float(doc.get("clock_offset_s", 0.0))
        return DeviceInfo(
            serial=doc["serial"], vendor=doc["vendor"], model=doc["model"],
            firmware=doc["firmware"], officer_id=doc["officer_id"],
            officer_name=doc["officer_name"], unit_code=doc["unit_code"],
            unit_name=doc["unit_name"], clock=rfc3339(time.time() + offset),
            driver=KEY, usb_id="", name_pattern=self.entry.name_pattern,
        )

    def annotate(self, recording: Recording) -> Recording:
        info = catalog_mod.parse_name(self.entry, recording.name)
        return replace(recording, recorded_start=info.recorded_start, important=info.important)

    def sync_clock(self, now: float) -> float | None:
        """Measure the camera clock against ``now`` and set it right (rewrites the identity)."""
        doc = read_identity(self.root)
        device_clock = time.time() + float(doc.get("clock_offset_s", 0.0))
        measured = round(device_clock - now, 3)
        if abs(measured) < 0.01:
            return measured  # already right: the camera is not written to (a later session)
        doc["clock_offset_s"] = round(now - time.time(), 3)
        text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        try:
            write_atomic(self.root / IDENTITY_FILE, text.encode("utf-8"))
        except OSError as exc:
            raise DeviceError(f"{self.root / IDENTITY_FILE}: cannot set the clock: "
                              f"{exc.strerror}") from exc
        log.info("clock of %s was off by %.3f s; set", self.root, measured)
        return measured

    def present(self) -> bool:
        try:
            st = os.stat(self.root / IDENTITY_FILE, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)


class _Throttled(io.RawIOBase):
    """Reads ``inner`` at ``bytes_s`` at most, in pieces of a tenth of a second.

    Paced by a schedule, not by sleeping after each piece: a piece may start
    once the bytes before it are due at the rate (``_due``), so the time the
    read itself takes (a busy disk, a thread waiting for the GIL beside 24
    other cameras) is part of the interval instead of adding to it, and the
    rate stays exact however many cameras are read at once.  Time the reader
    spends elsewhere (waiting for a memory block) is not banked: a camera's
    USB link does not read faster afterwards.
    """

    def __init__(self, inner: BinaryIO, bytes_s: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.bytes_s = bytes_s
        self.piece = max(1, bytes_s // 10)
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None  # when the next piece may start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        now = self._clock()
        if self._due is not None and self._due > now:
            self._sleep(self._due - now)
            now = self._due
        data = self.inner.read(min(len(buffer), self.piece))
        buffer[:len(data)] = data
        self._due = now + len(data) / self.bytes_s
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


class SimulatedDetector(DockWatcher):
    """Watches ``root``: a subdirectory holding BWC_DEVICE.json is a docked camera."""

    def __init__(self, config: SimulatedConfig) -> None:
        super().__init__(config.root)
        self.entry = catalog_mod.load(config.catalog).get(config.catalog_key)
        self.read_kib_s = config.read_kib_s

    def prepare(self) -> None:
        try:
            makedirs_durable(self.root)
        except OSError as exc:
            raise DeviceError(f"{self.root}: cannot create the simulated camera root: "
                              f"{exc.strerror}") from exc
        super().prepare()

    def watch_inside(self, name: str) -> bool:
        """Camera directories: their identity file may appear after them, or vanish."""
        try:
            return stat.S_ISDIR(os.stat(self.root / name, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def probe(self, name: str) -> Device | None:
        camera_dir = self.root / name
        try:
            if not stat.S_ISDIR(os.stat(camera_dir, follow_symlinks=False).st_mode):
                return None
            st = os.stat(camera_dir / IDENTITY_FILE, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return SimulatedDevice(camera_dir, self.entry, self.read_kib_s)


def make_detector(config: object, context: DeviceContext | None = None) -> Detector:
    """Simulated cameras are no USB devices: the device policy does not apply to them."""
    if not isinstance(config, SimulatedConfig):
        raise TypeError(f"simulated driver: expected SimulatedConfig, got {type(config).__name__}")
    return SimulatedDetector(config)


SPEC = DriverSpec(KEY, SimulatedConfig, make_detector)
