"""Helpers to run a real station (store, vault, custody, simulated cameras) inside a test."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from agent.config import Config
from agent.errors import DeviceGoneError
from agent.station import Station
from drivers.base import DeviceInfo, Listing, Recording
from drivers.simcam import make_camera
from drivers.simulated import SimulatedDevice


@contextmanager
def running_station(config: Config) -> Iterator[Station]:
    station = Station(config)
    station.start(watch=False)
    try:
        yield station
    finally:
        station.stop()


def camera(config: Config, **kwargs: Any) -> Path:
    """Dock a simulated camera with real OpenCV clips under the configured simulated root."""
    kwargs.setdefault("clips", 3)
    kwargs.setdefault("seconds", 0.5)
    kwargs.setdefault("width", 160)
    kwargs.setdefault("height", 120)
    kwargs.setdefault("fps", 10.0)
    return make_camera(config.devices["simulated"].root, **kwargs)


def sealed_station(base: Path, clips: int = 2) -> Path:
    """A station under ``base`` (its station.toml) that docked a camera of ``clips`` clips
    and sealed them in one ``run --once``; returns ``base``."""
    from agent import config as config_mod
    from tests.conftest import write_station_config

    config = config_mod.load(write_station_config(base))
    camera(config, clips=clips)
    with running_station(config) as station:
        assert station.run_once().ok
    return base


def exported_station(base: Path, clips: int = 1,
                     before: Callable[[Station], None] | None = None) -> None:
    """A station under ``base`` (its station.toml, data directory ``base/data``) that
    docked a camera of ``clips`` short clips, sealed them in one ``run --once`` (after
    ``before(station)``, a dock of its own, where given) and exported them all to
    ``base/bundle``."""
    from agent import config as config_mod
    from agent.cli.main import main
    from tests.conftest import write_station_config

    config_path = write_station_config(base)
    config = config_mod.load(config_path)
    camera(config, clips=clips, seconds=0.3)
    with running_station(config) as station:
        if before is not None:
            before(station)
        assert station.run_once().ok
    assert main(["export", "--config", str(config_path), "--all", "--out",
                 str(base / "bundle")]) == 0


def rotated_station(base: Path) -> None:
    """A station under ``base`` that sealed one clip (camera CAM0001) and tagged it with
    case CASE-7, rotated its key, then sealed one more clip (CAM0002) with the new key, and
    exported both to ``base/bundle``.

    Its newest checkpoint covers the whole log (the daemon signs one when it stops), and
    there are several earlier ones (at each stop and at the rotation).
    """
    from agent.cli.main import main
    from tests.conftest import write_station_config

    config = write_station_config(base)

    def dock_and_run(serial: str) -> None:
        make_camera(base / "sim", serial=serial, clips=1, seconds=0.3, width=160, height=120,
                    fps=10.0)
        assert main(["run", "--once", "--config", str(config)]) == 0

    dock_and_run("CAM0001")
    db = sqlite3.connect(base / "data" / "state.db")
    try:
        (first,), = db.execute("SELECT clip_id FROM clips").fetchall()
    finally:
        db.close()
    assert main(["tag", "--config", str(config), "--clip", first, "--case", "CASE-7"]) == 0
    assert main(["keys", "rotate", "--config", str(config), "--reason", "yearly rotation"]) == 0
    dock_and_run("CAM0002")
    assert main(["export", "--all", "--config", str(config), "--out", str(base / "bundle")]) == 0


def sim_devices(station: Station) -> list[Any]:
    return [d for det in station._make_detectors() for d in det.scan()]


class _Hooked(io.RawIOBase):
    """A device stream that calls ``hook(bytes_so_far)`` before each read; True ends it there."""

    def __init__(self, inner: BinaryIO, hook: Callable[[int], bool | None]) -> None:
        self.inner, self.hook, self.done = inner, hook, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.hook(self.done):
            return b""  # a short read: the stream ends before the file does
        data = self.inner.read(n)
        self.done += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


class FaultyDevice:
    """A real simulated camera with a fault injected into its streams (a driver test seam).

    ``on_read(recording, offset)`` runs before every read of a recording's stream;
    it may change the real file on the camera, raise DeviceGoneError, or return
    True to end the stream there (a short read, as a flaky USB bridge gives).
    ``extra`` recordings are added to the listing (for names no file system allows).
    """

    def __init__(self, inner: SimulatedDevice,
                 on_read: Callable[[Recording, int], bool | None] | None = None,
                 extra: list[Recording] | None = None) -> None:
        self.inner = inner
        self.on_read = on_read
        self.extra = extra or []

    @property
    def handle(self) -> str:
        return self.inner.handle

    def identify(self) -> DeviceInfo:
        return self.inner.identify()

    def recordings(self) -> Listing:
        listing = self.inner.recordings()
        listing.recordings.extend(self.extra)
        return listing

    def open(self, recording: Recording) -> BinaryIO:
        stream = self.inner.open(recording)
        if self.on_read is None:
            return stream
        hook = self.on_read
        return io.BufferedReader(_Hooked(stream, lambda done: hook(recording, done)))

    def stat(self, recording: Recording) -> tuple[int, float]:
        return self.inner.stat(recording)

    def sync_clock(self, now: float) -> float | None:
        return self.inner.sync_clock(now)

    def release(self, recording: Recording, *, sha256: str,
                before_delete: Callable[[], None] | None = None) -> None:
        self.inner.release(recording, sha256=sha256, before_delete=before_delete)

    def present(self) -> bool:
        return self.inner.present()


def gone_after(limit: int) -> Callable[[Recording, int], None]:
    def hook(_rec: Recording, done: int) -> None:
        if done >= limit:
            raise DeviceGoneError("camera unplugged (USB disconnect)")
    return hook
