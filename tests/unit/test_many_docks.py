"""Many cameras docked at once: each is read as soon as it is docked, fairly, in bounded memory.

Twelve simulated cameras with real clips, each read at a USB-like rate
(``devices.simulated.read_kib_s``), are docked together.  What must hold:

- parallel progress: no camera waits for another camera's session.  Each
  camera's stream stops after its first block until all twelve have read
  one (a gate); if the sessions ran a few at a time the gate would never
  open.  The assertion is on the gate, not on a clock.
- fair completion: every camera has its first clip in the vault before any
  camera's session ends (each clip takes about a second to read at that
  rate, a session three and its checks), and all end with every clip sealed.
  Counted in the order things happened (the progress registry's events, the
  figures the pages show), not by a clock.
- bounded memory: the block budget (``ingest.buffer_mib``) is never exceeded,
  by the count the budget keeps, not by the process's RSS.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from agent.config import Config
from agent.progress import ProgressRegistry
from agent.station import Station
from drivers.base import Recording
from tests.support.stations import FaultyDevice, camera, sim_devices

CAMERAS = 12


class _Recorder(ProgressRegistry):
    """The station's progress registry, also keeping the order in which things happened."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str, int]] = []  # (what, handle, clip_id, bytes)
        self._events_lock = threading.Lock()

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None:
        super().clip_bytes(handle, clip_id, done)
        with self._events_lock:
            self.events.append(("bytes", handle, clip_id, done))

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        super().clip_phase(handle, clip_id, rec, phase)
        if phase == "verifying":  # its bytes are in the vault
            with self._events_lock:
                self.events.append(("copied", handle, clip_id, rec.size))

    def finished(self, handle: str, errors: list[str]) -> None:
        super().finished(handle, errors)
        with self._events_lock:
            self.events.append(("finished", handle, "", 0))


class _Gate:
    """Holds each camera after its first block until every camera has read one."""

    def __init__(self, cameras: int) -> None:
        self.started: set[str] = set()
        self.cameras = cameras
        self.cond = threading.Condition()
        self.opened = False
        self.timed_out: int | None = None  # cameras started when the wait ran out

    def hook(self, handle: str) -> Callable[[Recording, int], None]:
        def on_read(_rec: Recording, done: int) -> None:
            if done == 0:
                return  # the first read of a clip goes through
            with self.cond:
                self.started.add(handle)
                if len(self.started) == self.cameras:
                    self.opened = True
                    self.cond.notify_all()
                if not self.cond.wait_for(lambda: self.opened, timeout=60):
                    self.timed_out = len(self.started)
                    self.opened = True  # let the others go: the test fails below
                    self.cond.notify_all()
        return on_read


def test_cameras_docked_together_are_read_side_by_side_fairly_within_the_budget(
        station_config: Callable[..., Config]) -> None:
    config = station_config("read_kib_s = 32\n[ingest]\nchunk_kib = 64\nbuffer_mib = 1\n")
    cams = [camera(config, clips=2, seconds=4, serial=f"SIM{i:04d}") for i in range(CAMERAS)]
    sources = {hashlib.sha256(p.read_bytes()).hexdigest()
               for cam in cams for p in (cam / "DCIM").rglob("*") if p.is_file()}
    assert len(sources) == 2 * CAMERAS
    station = Station(config)
    recorder = _Recorder()
    station.progress = recorder
    station.start(watch=False)
    try:
        gate = _Gate(CAMERAS)
        devices = [FaultyDevice(d, on_read=gate.hook(d.handle)) for d in sim_devices(station)]
        assert len(devices) == CAMERAS
        futures = [station.dock(device) for device in devices]
        reports = [f.result(timeout=300) for f in futures if f is not None]
        assert station.vault is not None and station.store is not None
        budget = station.vault.budget
        rows = station.store.clips()
    finally:
        station.stop()

    # Parallel progress: all twelve were being read at once.
    assert gate.timed_out is None, f"only {gate.timed_out} cameras were being read at once"
    first_finish = next(i for i, e in enumerate(recorder.events) if e[0] == "finished")
    reading = {e[1] for e in recorder.events[:first_finish] if e[0] == "bytes"}
    assert len(reading) == CAMERAS
    # Fair completion: every camera had a clip in the vault before any session ended.
    copied_first = {e[1] for e in recorder.events[:first_finish] if e[0] == "copied"}
    assert len(copied_first) == CAMERAS, f"{CAMERAS - len(copied_first)} cameras left behind"
    # Everything arrived, verified and sealed, each camera's report complete.
    assert len(reports) == CAMERAS and all(not r.failed for r in reports), reports
    assert sorted(len(r.copied) for r in reports) == [2] * CAMERAS
    assert {r["sha256"] for r in rows} == sources
    assert {(r["state"], r["verified"]) for r in rows} == {("sealed", 1)}
    # Bounded memory: the blocks in flight never exceeded the budget.
    assert budget is not None
    assert 0 < budget.peak <= budget.total == 1024 * 1024
    assert budget.held == 0  # an idle station keeps no blocks
