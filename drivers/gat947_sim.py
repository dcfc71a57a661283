"""A simulated GA/T 947-style camera on a real pseudo-terminal, for tests and the demo.

:class:`Gat947Sim` opens a pty pair (``os.openpty``); the driver opens the
slave side (``sim.port``, e.g. /dev/pts/4) exactly as it opens /dev/ttyACM0,
and a thread answers on the master side with the framing and commands of
docs/GAT947.md: password check (and lock-out), GetIDCode, ZFY_INFO in GBK,
a device clock with an offset, resolution, battery, and SetMSDC, which
"mounts" the camera's storage by renaming its directory into ``mount_root``
in one step (atomic, so a watcher never sees half a volume).

The storage is a directory of real recordings; :meth:`Gat947Sim.from_simcam`
takes one made by :func:`drivers.simcam.make_camera` and its identity file.

Faults for tests: ``silent`` (requests are read and never answered),
``corrupt_responses`` (the next n answers carry a wrong CRC), ``busy_responses``
(the next n answers are BUSY), ``lost_answers`` (the next n requests are
carried out but their answers never arrive), ``noise`` (byte strings sent
before the next answers, one each: line noise, half frames, fake headers),
``dead_clock_ms`` (the clock reads this raw value until it is set: a dead
clock battery), ``mount_on_msdc = False`` (SetMSDC is accepted but no volume
appears), ``drop_port_on_msdc`` (the serial interface vanishes after SetMSDC,
as on most real cameras) and :meth:`close` (unplugged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
import tty
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.durable import fsync_dir
from drivers.gat947_wire import (
    EMPTY_REQUEST,
    PASSWORD_MAX,
    RESOLUTION,
    RESPONSE_BIT,
    TIME,
    Charge,
    Command,
    Frame,
    FrameError,
    FrameParser,
    Status,
    ZfyInfo,
    encode,
    zfy_refusal,
)
from drivers.simulated import IDENTITY_FILE

log = logging.getLogger(__name__)

_POLL_S = 0.05
_COMMANDS = frozenset(int(c) for c in Command)


class Gat947Sim:
    """One simulated camera: a pty, a clock, an identity and a storage directory."""

    def __init__(self, storage: Path, mount_root: Path, *, password: str | bytes, id_code: str,
                 zfy: ZfyInfo, firmware: str = "simcam-1.0", clock_offset_s: float = 0.0,
                 resolution: tuple[int, int, int] = (1920, 1080, 30), battery: int = 87,
                 charging: Charge = Charge.CHARGING, mount_name: str | None = None,
                 drop_port_on_msdc: bool = False, lockout_after: int = 5) -> None:
        self.storage = storage
        self.mount_root = mount_root
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        self.id_code = id_code
        self.zfy = zfy
        self.firmware = firmware
        self.resolution = resolution
        self.battery = battery
        self.charging = charging
        self.mount_name = mount_name or id_code
        self.drop_port_on_msdc = drop_port_on_msdc
        self.lockout_after = lockout_after
        # Fault switches, set by tests from their own thread.
        self.silent = False
        self.corrupt_responses = 0
        self.busy_responses = 0
        self.lost_answers = 0
        self.noise: list[bytes] = []
        self.dead_clock_ms: int | None = None
        self.mount_on_msdc = True
        # What happened, for tests to assert on.
        self.requests: list[Frame] = []
        self.request_times: list[float] = []  # time.monotonic() of each request's arrival
        self.responses: list[bytes] = []
        self.mounted: Path | None = None
        self._clock_lock = threading.Lock()
        self._clock_offset_s = clock_offset_s
        self._authenticated = False
        self._failures = 0
        self._master = -1
        self._slave = -1
        self.port = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_simcam(cls, camera_dir: Path, mount_root: Path, *, password: str | bytes,
                    **kwargs: Any) -> Gat947Sim:
        """A camera over a directory made by ``make_camera``; its identity file is consumed.

        A real camera's storage holds recordings only, so the identity file is
        removed after it is read into ZFY_INFO, the ID code and the clock.
        """
        identity = camera_dir / IDENTITY_FILE
        doc = json.loads(identity.read_text(encoding="utf-8"))
        identity.unlink()
        zfy = ZfyInfo(serial=doc["serial"], officer_id=doc["officer_id"],
                      officer_name=doc["officer_name"], unit_code=doc["unit_code"],
                      unit_name=doc["unit_name"])
        kwargs.setdefault("firmware", doc["firmware"])
        kwargs.setdefault("clock_offset_s", float(doc.get("clock_offset_s", 0.0)))
        return cls(camera_dir, mount_root, password=password, id_code=doc["serial"], zfy=zfy,
                   **kwargs)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> Gat947Sim:
        self._master, self._slave = os.openpty()
        # Raw mode: no echo, no line editing; and the slave stays open here so the master
        # never reads EIO before the driver opens the port.
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"gat947-sim:{self.port}")
        self._thread.start()
        log.info("simulated gat947 camera %s on %s", self.id_code, self.port)
        return self

    def close(self) -> None:
        """Unplug: stop answering and close the pty, so the port vanishes."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._hang_up()

    def _hang_up(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> Gat947Sim:
        return self.start() if self._thread is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- the clock ----------------------------------------------------------------------------

    @property
    def clock_offset_s(self) -> float:
        """The camera clock minus the true time."""
        with self._clock_lock:
            return self._clock_offset_s

    def device_time(self) -> float:
        return time.time() + self.clock_offset_s

    def _clock_ms(self) -> int:
        with self._clock_lock:
            if self.dead_clock_ms is not None:
                return self.dead_clock_ms
            return round((time.time() + self._clock_offset_s) * 1000)

    # --- storage ------------------------------------------------------------------------------

    def _mount(self) -> int:
        if self.mounted is not None or not self.mount_on_msdc:
            return Status.OK
        target = self.mount_root / self.mount_name
        try:
            os.rename(self.storage, target)  # the volume appears in one step
            fsync_dir(self.mount_root)
        except OSError as exc:
            log.error("simulated camera %s cannot mount at %s: %s", self.id_code, target, exc)
            return Status.DEVICE_FAULT
        self.mounted = target
        return Status.OK

    def eject(self) -> None:
        """Unmount: the volume leaves ``mount_root`` (back to the camera's storage)."""
        if self.mounted is not None:
            os.rename(self.mounted, self.storage)
            self.mounted = None

    # --- the serving thread -------------------------------------------------------------------

    def _serve(self) -> None:
        parser = FrameParser()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], _POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            parser.feed(data)
            while not self._stop.is_set():
                try:
                    frame = parser.next()
                except FrameError as exc:
                    # A damaged request is dropped silently; the host times out and resends.
                    log.debug("simulated camera %s dropped a request: %s", self.id_code, exc)
                    continue
                if frame is None:
                    break
                self._on_request(frame)

    def _on_request(self, frame: Frame) -> None:
        self.requests.append(frame)
        self.request_times.append(time.monotonic())
        if self.silent or frame.command & RESPONSE_BIT:
            return
        if self.busy_responses > 0:
            self.busy_responses -= 1
            status, payload = int(Status.BUSY), b""
        elif frame.status != 0:
            status, payload = int(Status.BAD_PAYLOAD), b""  # docs §5: requests carry 00
        else:
            status, payload = self._handle(frame.command, frame.payload)
        wire = encode(Frame(frame.command | RESPONSE_BIT, frame.seq, status, payload))
        if self.corrupt_responses > 0:
            self.corrupt_responses -= 1
            wire = wire[:-1] + bytes([wire[-1] ^ 0xFF])
        if self.lost_answers > 0:
            self.lost_answers -= 1
            wire = b""
        if self.noise and wire:
            wire = self.noise.pop(0) + wire
        self.responses.append(wire)
        view = memoryview(wire)
        while view:
            written = os.write(self._master, view)
            view = view[written:]
        if frame.command == Command.SET_MSDC and status == Status.OK and self.drop_port_on_msdc:
            time.sleep(_POLL_S)  # the answer leaves before the interface does
            self._stop.set()
            self._hang_up()

    def _handle(self, command: int, payload: bytes) -> tuple[int, bytes]:
        if command not in _COMMANDS:
            return Status.UNKNOWN_COMMAND, b""  # logged in or not (docs §5)
        if command == Command.INIT_DEVICE:
            if len(payload) > PASSWORD_MAX:
                return Status.BAD_PAYLOAD, b""  # not a password: not counted
            return self._login(payload), b""
        if not self._authenticated:
            return Status.NOT_AUTHENTICATED, b""
        if command in EMPTY_REQUEST and payload:
            return Status.BAD_PAYLOAD, b""
        if command == Command.GET_ID_CODE:
            return Status.OK, self.id_code.encode("ascii") + self.firmware.encode("ascii")
        if command == Command.GET_ZFY_INFO:
            return Status.OK, self.zfy.encode()
        if command == Command.WRITE_ZFY_INFO:
            if zfy_refusal(payload, self.id_code) is not None:
                return Status.BAD_PAYLOAD, b""
            written = ZfyInfo.decode(payload)[0]
            self.zfy = replace(written, serial=self.id_code)  # the ID code is the hardware's
            return Status.OK, b""
        if command == Command.GET_DEV_TIME:
            return Status.OK, TIME.pack(self._clock_ms())
        if command == Command.SYNC_DEV_TIME:
            if len(payload) != TIME.size:
                return Status.BAD_PAYLOAD, b""
            before = self._clock_ms()
            with self._clock_lock:
                self.dead_clock_ms = None
                self._clock_offset_s = TIME.unpack(payload)[0] / 1000 - time.time()
            return Status.OK, TIME.pack(before)
        if command == Command.READ_RESOLUTION:
            return Status.OK, RESOLUTION.pack(*self.resolution)
        if command == Command.READ_BATTERY:
            return Status.OK, bytes([self.battery, self.charging])
        # Command.SET_MSDC
        return self._mount(), b""

    def _login(self, password: bytes) -> int:
        if self._failures >= self.lockout_after:
            return Status.LOCKED
        if password != self.password:
            self._failures += 1
            self._authenticated = False
            return Status.AUTH_FAILED
        self._failures = 0
        self._authenticated = True
        return Status.OK
