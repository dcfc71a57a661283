"""Devices the device policy refused: docked only so that the station records the refusal.

A detector that meets a device the policy refuses hands the station a
:class:`RefusedDevice` instead of a readable one.  It implements the Device
protocol so the dock machinery (one dock per docking, undock when it goes)
stays the same, but every method that would touch the device raises:
nothing on a refused device is ever listed, opened or deleted.  The station
records a ``device.refused`` custody log entry and an alert, then calls
:meth:`RefusedDevice.recorded`.

:class:`RefusalNotes` is the detector for devices the mount helper refused
(never mounted, so no driver sees them): it docks one RefusedDevice per
refusal note in ``[mount] run_dir``; recording the refusal deletes the note,
and the device is then reported undocked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

from agent.devicepolicy import Refusal
from agent.errors import DeviceError
from agent.mount import notes
from drivers.base import Device, DeviceInfo, Listing, Recording

log = logging.getLogger(__name__)

KEY = "refused"
NOTES_POLL_S = 1.0


class DeviceRefusedError(DeviceError):
    """Something tried to use a device the policy refused."""


class RefusedDevice:
    """A refused device: its facts for the record, and nothing else."""

    driver_key = KEY

    def __init__(self, refusal: Refusal, *, handle: str | None = None,
                 present: Callable[[], bool] | None = None,
                 on_recorded: Callable[[], None] | None = None) -> None:
        self.refusal = refusal
        self._handle = handle or refusal.handle
        self._present = present
        self._on_recorded = on_recorded

    @property
    def handle(self) -> str:
        return self._handle

    def _refuse(self) -> NoReturn:
        raise DeviceRefusedError(self.refusal.message())

    def identify(self) -> DeviceInfo:
        self._refuse()

    def recordings(self) -> Listing:
        self._refuse()

    def open(self, recording: Recording) -> BinaryIO:
        self._refuse()

    def stat(self, recording: Recording) -> tuple[int, float]:
        self._refuse()

    def release(self, recording: Recording, *, sha256: str,
                before_delete: Callable[[], None] | None = None) -> None:
        self._refuse()

    def sync_clock(self, now: float) -> float | None:
        return None

    def present(self) -> bool:
        return self._present() if self._present is not None else True

    def recorded(self) -> None:
        """The station has recorded the refusal (e.g. delete the helper's note)."""
        if self._on_recorded is not None:
            self._on_recorded()

    def __repr__(self) -> str:
        return f"RefusedDevice({self.handle!r})"


class RefusalNotes:
    """Docks a RefusedDevice for each refusal note the mount helper left in ``run_dir``."""

    def __init__(self, run_dir: Path, poll_s: float = NOTES_POLL_S) -> None:
        self.run_dir = run_dir
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._known: dict[Path, RefusedDevice] = {}
        self._on_dock: Callable[[Device], None] | None = None
        self._on_undock: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _device(self, path: Path, refusal: Refusal) -> RefusedDevice:
        return RefusedDevice(refusal, handle=f"refused:{path.name}",
                             present=path.exists, on_recorded=lambda: notes.drop_note(path))

    def _reconcile(self) -> list[Device]:
        with self._lock:
            pending = notes.pending_refusals(self.run_dir)
            paths = {path for path, _ in pending}
            for path in [p for p in self._known if p not in paths]:
                device = self._known.pop(path)
                if self._on_undock is not None:
                    self._on_undock(device.handle)
            for path, refusal in pending:
                if path in self._known:
                    continue
                if refusal is None:
                    log.warning("malformed refusal note %s removed", path)
                    notes.drop_note(path)
                    continue
                device = self._device(path, refusal)
                self._known[path] = device
                if self._on_dock is not None:
                    self._on_dock(device)
            return list(self._known.values())

    def scan(self) -> list[Device]:
        return self._reconcile()

    def start(self, on_dock: Callable[[Device], None], on_undock: Callable[[str], None]) -> None:
        with self._lock:
            self._on_dock, self._on_undock = on_dock, on_undock
            self._reconcile()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="refusal-notes")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_s):
            try:
                self._reconcile()
            except Exception:  # keep watching whatever one pass met
                log.exception("reading refusal notes in %s failed", self.run_dir)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._on_dock = self._on_undock = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
