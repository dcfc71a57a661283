"""The daemon's side of station-mounted volumes: when is the station done with a camera?

A volume the station mounted stays mounted while the station may still need
it, and is let go (:meth:`drivers.base.Detachable.detach`: the helper then
unmounts it) once

* its dock session is over and no release job for it is queued or running, and
* none of the camera's clips is still on its way: not copied yet (a session
  that stopped on a full disk is resumed while the camera stays docked), or,
  with a platform and ``retention.release = "after-ack"``, not yet
  acknowledged and released from the camera,

or, whatever is still on its way, ``[mount] hold_s`` after the session ended:
a platform that is offline for hours must not keep a camera mounted (and
exposed to a careless yank) for hours; what is left happens at the next dock.

The keeper never detaches on its own initiative at daemon stop or after a
crash: a volume still mounted when the daemon starts again is docked again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from agent.config import Config
from agent.store import Store
from drivers.base import Detachable, Device

log = logging.getLogger(__name__)

_COPY_PENDING = ("discovered", "copying")
_ACK_PENDING = ("copied", "sealed", "uploading", "uploaded", "acknowledged")


@dataclass
class _Held:
    device: Device
    serial: str | None  # None: the session failed before it knew (held until hold_s)
    since: float  # time.monotonic() when the last session ended


class Keeper:
    """Tracks station-mounted devices between the end of their session and their detach."""

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.hold_s = config.mount.hold_s if config.mount is not None else 0.0
        waits_for_ack = config.platform is not None and config.retention.release == "after-ack"
        self._states = _COPY_PENDING + (_ACK_PENDING if waits_for_ack else ())
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    @staticmethod
    def tracks(device: Device) -> bool:
        return isinstance(device, Detachable) and device.station_mounted()

    def session_ended(self, device: Device, serial: str | None) -> None:
        if not self.tracks(device):
            return
        with self._lock:
            self._held[device.handle] = _Held(device, serial, time.monotonic())

    def forget(self, handle: str) -> None:
        with self._lock:
            self._held.pop(handle, None)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _waiting(self, serial: str | None) -> int:
        if serial is None:
            return 1
        marks = ",".join("?" for _ in self._states)
        row = self.store.query_one(
            f"SELECT COUNT(*) AS n FROM clips WHERE device_serial = ? AND state IN ({marks})",
            (serial, *self._states))
        return int(row["n"]) if row is not None else 0

    def let_go(self, busy: set[str], *, now: float | None = None) -> list[str]:
        """Detach every held device that is idle and done (or held too long); their handles."""
        now = time.monotonic() if now is None else now
        with self._lock:
            candidates = [h for h in self._held.values() if h.device.handle not in busy]
        released = []
        for held in candidates:
            handle = held.device.handle
            if not held.device.present():
                self.forget(handle)
                continue
            expired = now - held.since >= self.hold_s
            waiting = 0 if expired else self._waiting(held.serial)
            if waiting:
                continue
            with self._lock:
                if self._held.get(handle) is not held:
                    continue  # docked again meanwhile
                del self._held[handle]
            try:
                assert isinstance(held.device, Detachable)
                held.device.detach()
            except Exception:
                log.exception("could not let %s go", handle)
                continue
            log.info("done with %s (%s)", handle,
                     "held for [mount] hold_s; the rest happens at the next dock" if expired
                     else "everything copied and released")
            released.append(handle)
        return released
