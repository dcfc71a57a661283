"""A recorder for detector callbacks, shared by the driver tests."""

from __future__ import annotations

import threading
from collections.abc import Callable

from drivers.base import Device


class DockEvents:
    """Collects dock/undock callbacks; waits for a condition with threading.Condition."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.log: list[tuple[str, str]] = []
        self.devices: dict[str, Device] = {}  # by handle, in docking order
        self._cond = threading.Condition()

    def on_dock(self, device: Device) -> None:
        with self._cond:
            self.log.append(("dock", device.handle))
            self.devices[device.handle] = device
            self._cond.notify_all()

    def on_undock(self, handle: str) -> None:
        with self._cond:
            self.log.append(("undock", handle))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[list[tuple[str, str]]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.log), timeout=self.wait_s), self.log
