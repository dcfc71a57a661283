"""Battery and charging of docked cameras: kept with the device, shown in status, alerted.

Readings come from the drivers: ``DeviceInfo.health`` when a camera is
identified at the start of a dock session, and
:class:`drivers.base.HealthReporter` while it stays docked (the
:class:`HealthMonitor` asks every ``HEALTH_INTERVAL_S``).

Invariants:

* only the latest reading of a device is kept (``devices.health``, JSON,
  overwritten), so readings never grow the store; the reading at dock goes
  into the ``device.docked`` log entry and event;
* alerts are custody log entries and ``alert`` events, each code at most once
  per docking (the codes raised are kept with the reading until the next dock):
  ``device.battery_low`` (at or below ``LOW_BATTERY_PERCENT``) and
  ``device.not_charging`` (the camera says it is not charging below 100 %, or
  its battery fell by ``FALL_POINTS`` between two readings of one docking);
* the status (CLI and MQTT) reads the same column through
  :meth:`agent.store.Store.device_summaries`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError
from agent.store import Store
from agent.store.db import Tx
from drivers.base import Device, DeviceHealth, HealthReporter

log = logging.getLogger(__name__)

LOW_BATTERY_PERCENT = 20
FALL_POINTS = 2  # a docked camera that lost this much between two readings is not charging
HEALTH_INTERVAL_S = 60.0


def record(tx: Tx, serial: str, reading: DeviceHealth | None, *,
           new_docking: bool) -> list[dict[str, Any]]:
    """Keep ``reading`` as the device's latest and raise its alerts; the alerts raised.

    ``new_docking``: the reading opens a docking (alerts may be raised again).
    A missing reading keeps the last one (its ``at`` says how old it is).
    """
    row = tx.one("SELECT health FROM devices WHERE serial = ?", (serial,))
    if row is None:
        return []
    previous: dict[str, Any] | None = json.loads(row["health"]) if row["health"] else None
    if reading is None:
        if new_docking and previous and previous.get("alerted"):
            previous["alerted"] = []
            tx.execute("UPDATE devices SET health = ? WHERE serial = ?",
                       (json.dumps(previous), serial))
        return []
    current = reading.as_dict()
    alerted: list[str] = [] if new_docking or previous is None else list(
        previous.get("alerted", []))
    raised = []
    for code, message in assess(serial, None if new_docking else previous, current):
        if code in alerted:
            continue
        alerted.append(code)
        body = {"code": code, "serial": serial, "message": message,
                "battery_percent": current["battery_percent"], "charging": current["charging"]}
        log.warning("%s: %s", code, message)
        tx.log("alert", None, body)
        tx.event("alert", body)
        raised.append(body)
    current["alerted"] = alerted
    tx.execute("UPDATE devices SET health = ? WHERE serial = ?", (json.dumps(current), serial))
    return raised


def assess(serial: str, previous: dict[str, Any] | None,
           current: dict[str, Any]) -> list[tuple[str, str]]:
    """The alerts a reading calls for: (code, message for the people at the station)."""
    percent = current.get("battery_percent")
    charging = current.get("charging")
    alerts = []
    if percent is not None and percent <= LOW_BATTERY_PERCENT:
        state = {"charging": "; it is charging", "not_charging": " and it is not charging"}
        alerts.append(("device.battery_low", f"camera {serial} has {percent} % battery left"
                       + state.get(str(charging), "")))
    before = previous.get("battery_percent") if previous else None
    if charging == "not_charging" and (percent is None or percent < 100):
        level = f"battery {percent} %" if percent is not None else "battery level unknown"
        alerts.append(("device.not_charging", f"camera {serial} is docked but not charging "
                       f"({level}); check the dock's power and how the camera sits in it"))
    elif (charging not in ("charging", "full") and percent is not None and before is not None
          and percent <= before - FALL_POINTS):
        alerts.append(("device.not_charging", f"camera {serial} is docked but its battery fell "
                       f"from {before} % to {percent} %: it is not charging; check the dock's "
                       "power and how the camera sits in it"))
    return alerts


class HealthMonitor:
    """Asks docked cameras for their battery every ``interval_s`` (one thread).

    ``docked()`` returns the devices docked now by handle; a device that is
    not identified (no row names its handle) or cannot be asked is skipped.
    """

    def __init__(self, store: Store, docked: Callable[[], dict[str, Device]],
                 interval_s: float = HEALTH_INTERVAL_S) -> None:
        self.store = store
        self.docked = docked
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="device-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # the next round tries again
                log.exception("reading the battery of docked cameras failed")

    def refresh(self) -> list[str]:
        """One round: the serials whose reading was recorded."""
        recorded = []
        for handle, device in self.docked().items():
            if self._stop.is_set():
                break
            if not isinstance(device, HealthReporter):
                continue
            row = self.store.query_one("SELECT serial FROM devices WHERE docked_handle = ?",
                                       (handle,))
            if row is None:
                continue
            try:
                reading = device.read_health()
            except AgentError as exc:
                log.debug("%s: no battery reading: %s", handle, exc)
                continue
            if reading is None:
                continue
            with self.store.transaction() as tx:
                record(tx, row["serial"], reading, new_docking=False)
            recorded.append(str(row["serial"]))
        return recorded
