"""The GA/T 947-style protocol on one serial port: login, commands, retries (docs/GAT947.md).

One owner thread per port (a one-worker executor) opens, reads, writes and
closes it; public methods may be called from any thread and run as jobs on
that thread, so frames never interleave.

Invariants:

* one login per docking: the password is sent when the session needs it
  (first command, or the camera says it forgot the login) and, once the
  camera refused it, never again on this port object, which lives as long
  as the docking.  A camera that locks after five wrong passwords is
  therefore locked after five dockings, not after three;
* retries are this thread's business: a timeout, a damaged answer or BUSY is
  resent after 20 ms (docs §6), so a command takes at most
  ``(retries + 1) * timeout_s`` plus a few milliseconds; a damaged header
  never throws away a good answer behind it (the parser resynchronises);
* messages say what failed in an installer's words (``reading the officer
  information failed: the data was damaged on the cable``); SDK names,
  sequence numbers and checksums go to the debug log;
* the password is never logged and never put in a message.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import serial

from agent.errors import DeviceError, DeviceGoneError
from drivers.gat947_wire import (
    DOING,
    RESOLUTION,
    RESPONSE_BIT,
    SDK_NAMES,
    TIME,
    ZFY_SIZE,
    Charge,
    Command,
    Frame,
    FrameError,
    FrameParser,
    Password,
    Status,
    ZfyInfo,
    command_name,
    encode,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO})
# What pyserial lets through from a vanished port: its own errors, OSError, and termios.error
# (tcflush on a hung-up tty), which is not an OSError.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
SETTLE_S = 0.02  # docs §6: let the tail of a garbled answer arrive, then resend
_FIRMWARE = "its firmware or adapter does not follow docs/GAT947.md"

# Why an exchange failed after its last attempt, in words an installer acts on.
_PLAIN = {
    "silent": "the camera did not answer ({attempts} tries, {timeout:g} s each); check that it "
              "is switched on and seated in the dock",
    "damaged": "the data was damaged on the cable ({attempts} tries); check the cable or the "
               "USB-serial adapter",
    "busy": "the camera stayed busy ({attempts} tries); dock it again in a minute",
}
_STATUS_PLAIN = {
    Status.UNKNOWN_COMMAND: "the camera does not support it (" + _FIRMWARE + ")",
    Status.BAD_PAYLOAD: "the camera refused the request as malformed (" + _FIRMWARE + ")",
    Status.NOT_AUTHENTICATED: "the camera asked for a login again right after one",
    Status.DEVICE_FAULT: "the camera reports a hardware fault (storage or clock); have it "
                         "checked",
}


def _pause(seconds: float) -> None:
    """Sleep between attempts (a seam: tests record the pauses the protocol asks for)."""
    time.sleep(seconds)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


class Gat947Client:
    """The protocol on one serial port (see the module docstring for the invariants)."""

    def __init__(self, port: str, *, password: Password, baudrate: int = 115200,
                 timeout_s: float = 1.0, retries: int = 2) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.retries = retries
        self._password = password
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gat947:{port}")
        self._fd_lock = threading.Lock()  # guards _serial against alive() polling a closed fd
        self._serial: serial.Serial | None = None
        self._parser = FrameParser()
        self._seq = 0
        self._authenticated = False
        self._refused: str | None = None
        self._gone: str | None = None
        self._closed = False

    # --- any thread ---------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise DeviceGoneError(f"camera {self.port}: the connection was closed (undocked)")
        try:
            future = self._owner.submit(fn, *args)
        except RuntimeError as exc:  # shut down meanwhile
            raise DeviceGoneError(f"camera {self.port}: the connection was closed") from exc
        return future.result()

    @property
    def refused(self) -> str | None:
        """The refusal of the password in this docking (then it is not sent again), or None."""
        return self._refused

    @property
    def gone(self) -> bool:
        """Whether the port disappeared (it is never reopened)."""
        return self._gone is not None

    def login(self) -> None:
        """InitDevice unless this docking's session is logged in already."""
        self._call(self._ensure_login)

    def init_device(self) -> None:
        """InitDevice now, even if logged in (never again after a refusal)."""
        self._call(self._login)

    def get_id_code(self) -> tuple[str, str]:
        """GetIDCode: (ID code, firmware version)."""
        data = self._call(self._command, Command.GET_ID_CODE, b"")
        self._need(Command.GET_ID_CODE, data, 7, exact=False)
        return _text(data[:7]), _text(data[7:])

    def get_zfy_info(self) -> ZfyInfo:
        data = self._call(self._command, Command.GET_ZFY_INFO, b"")
        self._need(Command.GET_ZFY_INFO, data, ZFY_SIZE)
        info, bad = ZfyInfo.decode(data)
        if bad:
            log.warning("camera %s: the officer information has unreadable characters in %s; "
                        "kept with replacement characters", self.port, ", ".join(bad))
        return info

    def write_zfy_info(self, info: ZfyInfo) -> None:
        self._call(self._command, Command.WRITE_ZFY_INFO, info.encode())

    def get_dev_time(self) -> float:
        """GetDevTime: the camera clock, seconds since the epoch (UTC); any int64 value."""
        data = self._call(self._command, Command.GET_DEV_TIME, b"")
        self._need(Command.GET_DEV_TIME, data, TIME.size)
        return int(TIME.unpack(data)[0]) / 1000

    def sync_dev_time(self, now: float, since: float) -> tuple[float, float, int]:
        """SyncDevTime to ``now`` as of ``time.monotonic() == since``.

        Returns (camera clock before the set, time sent, attempts sent) of the
        attempt that was answered.  Every attempt (a resend too) carries the
        time of the moment it is sent, so a lost answer never leaves the
        camera set to a time already past (docs §4).
        """
        return self._call(self._sync, now, since)

    def read_resolution(self) -> tuple[int, int, int]:
        """ReadDeviceResolution: (width, height, frames per second)."""
        data = self._call(self._command, Command.READ_RESOLUTION, b"")
        self._need(Command.READ_RESOLUTION, data, RESOLUTION.size)
        width, height, fps = RESOLUTION.unpack(data)
        return int(width), int(height), int(fps)

    def read_battery(self) -> tuple[int | None, Charge]:
        """ReadDeviceBatteryDumpEnergy: (percent or None if unknown, charge state).

        The charge state is the optional second byte (docs §4); a camera that
        sends one byte, or a value outside the table, gives ``Charge.UNKNOWN``.
        """
        data = self._call(self._command, Command.READ_BATTERY, b"")
        self._need(Command.READ_BATTERY, data, 1, exact=False)
        percent: int | None = data[0]
        if data[0] > 100:
            if data[0] != 0xFF:
                log.debug("camera %s: battery answer %d is not a percentage", self.port,
                          data[0])
            percent = None
        charge = Charge.UNKNOWN
        if len(data) >= 2:
            try:
                charge = Charge(data[1])
            except ValueError:
                log.debug("camera %s: unknown charge state %d", self.port, data[1])
        return percent, charge

    def set_msdc(self) -> None:
        """SetMSDC: the camera answers, then presents its storage as USB mass storage."""
        self._call(self._command, Command.SET_MSDC, b"")

    def alive(self) -> bool:
        """Whether the port is usable, without any I/O: it exists, or is open and not hung up."""
        if self._closed or self._gone is not None:
            return False
        with self._fd_lock:
            if self._serial is None:
                return os.path.exists(self.port)
            return not self._hung_up_locked()

    def close(self, *, wait: bool = False) -> None:
        """Close the port once queued jobs are done (``wait``: before returning).

        Later calls raise DeviceGoneError.
        """
        if not self._closed:
            self._closed = True
            try:
                self._owner.submit(self._close_port)
            except RuntimeError:
                return
        self._owner.shutdown(wait=wait)

    # --- the owner thread only ----------------------------------------------------------------

    def _need(self, command: Command, data: bytes, size: int, *, exact: bool = True) -> None:
        if len(data) < size or (exact and len(data) != size):
            log.debug("camera %s: %s answered %d bytes, expected %s%d", self.port,
                      SDK_NAMES[command], len(data), "" if exact else "at least ", size)
            raise DeviceError(f"camera {self.port}: {DOING[command]} failed: the camera's "
                              f"answer has the wrong size ({_FIRMWARE})")

    def _hung_up_locked(self) -> bool:
        ser = self._serial
        if ser is None or not ser.is_open:
            return True
        poller = select.poll()
        poller.register(ser.fileno(), select.POLLHUP | select.POLLERR | select.POLLNVAL)
        return bool(poller.poll(0))

    def _open(self, command: Command) -> serial.Serial:
        if self._gone is not None:
            raise DeviceGoneError(self._gone_message())
        if self._serial is not None:
            return self._serial
        try:
            # exclusive: a second program (or a stray second client) on the port would
            # steal half of the answers.
            ser = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s,
                                write_timeout=self.timeout_s, exclusive=True)
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, command) from exc
        with self._fd_lock:
            self._serial = ser
        self._authenticated = False
        self._parser.clear()
        return ser

    def _close_port(self) -> None:
        with self._fd_lock:
            ser, self._serial = self._serial, None
            if ser is not None:
                try:
                    ser.close()
                except _PORT_ERRORS as exc:
                    log.debug("closing %s: %s", self.port, exc)

    def _gone_message(self) -> str:
        return (f"camera {self.port} is gone: its serial port disappeared (unplugged, or "
                "switched to USB storage)")

    def _port_error(self, exc: Exception, command: Command) -> DeviceError:
        code = getattr(exc, "errno", None)
        if code is None and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]  # termios.error carries (errno, text)
        with self._fd_lock:
            hung_up = self._serial is not None and self._hung_up_locked()
        text = (f"[Errno {code}] {exc.args[1]}" if isinstance(exc, termios.error)
                and len(exc.args) > 1 else str(exc))
        log.debug("camera %s: %s: port error: %s", self.port, SDK_NAMES[command], text)
        if code in _GONE_ERRNOS or hung_up or not os.path.exists(self.port):
            self._gone = f"{SDK_NAMES[command]}: {text}"
            self._close_port()
            return DeviceGoneError(self._gone_message())
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return DeviceError(f"camera {self.port} is busy: another program has the port open")
        if code in (errno.EACCES, errno.EPERM):
            return DeviceError(f"camera {self.port}: the agent may not open the serial port "
                               "(its user needs read and write access, e.g. group dialout)")
        reason = os.strerror(code) if isinstance(code, int) else text
        return DeviceError(f"camera {self.port}: {DOING[command]} failed: the serial port "
                           f"reported an error ({reason})")

    def _ensure_login(self) -> None:
        if not self._authenticated:
            self._login()

    def _login(self) -> None:
        if self._refused is not None:
            # One attempt per docking: a camera counts wrong passwords and locks.
            raise DeviceError(self._refused)
        status, _ = self._exchange(Command.INIT_DEVICE, self._password.reveal())
        if status == Status.AUTH_FAILED:
            self._refused = (f"camera {self.port} refused the password "
                             "(check devices.gat947.password_file)")
        elif status == Status.LOCKED:
            self._refused = (f"camera {self.port} is locked after too many wrong passwords; "
                             "fix devices.gat947.password_file and power-cycle the camera")
        elif status != Status.OK:
            raise self._status_error(Command.INIT_DEVICE, status)
        if self._refused is not None:
            self._authenticated = False
            raise DeviceError(self._refused)
        self._authenticated = True

    def _command(self, command: Command, payload: bytes | Callable[[], bytes]) -> bytes:
        self._ensure_login()
        status, data = self._exchange(command, payload)
        if status == Status.NOT_AUTHENTICATED:
            # The camera dropped the session (it rebooted, or the port was reopened).
            log.info("camera %s forgot the login (it may have restarted); logging in again",
                     self.port)
            self._authenticated = False
            self._login()
            status, data = self._exchange(command, payload)
        if status != Status.OK:
            raise self._status_error(command, status)
        return data

    def _sync(self, now: float, since: float) -> tuple[float, float, int]:
        sent: list[float] = []

        def fresh() -> bytes:
            target = now + (time.monotonic() - since)
            sent.append(target)
            return TIME.pack(round(target * 1000))

        data = self._command(Command.SYNC_DEV_TIME, fresh)
        self._need(Command.SYNC_DEV_TIME, data, TIME.size)
        return int(TIME.unpack(data)[0]) / 1000, sent[-1], len(sent)

    def _status_error(self, command: Command, status: int) -> DeviceError:
        log.debug("camera %s: %s answered status 0x%02x", self.port, SDK_NAMES[command],
                  status)
        if status in (Status.AUTH_FAILED, Status.LOCKED):
            return DeviceError(f"camera {self.port}: {DOING[command]} failed: the camera wants "
                               "a login it refuses (check devices.gat947.password_file)")
        plain = next((text for code, text in _STATUS_PLAIN.items() if code == status),
                     f"the camera gave an answer this agent does not know (status {status})")
        return DeviceError(f"camera {self.port}: {DOING[command]} failed: {plain}")

    def _exchange(self, command: Command,
                  payload: bytes | Callable[[], bytes]) -> tuple[int, bytes]:
        """Send one request and return (status, payload) of its response, retrying.

        ``payload`` may be a function, called for every attempt (SyncDevTime sends
        the time of the moment).  Retries keep the seq: every command is idempotent
        (docs §4), so a late answer to an earlier attempt is as good as the awaited one.
        """
        ser = self._open(command)
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        name = SDK_NAMES[command]
        attempts = self.retries + 1
        kind = "silent"
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                _pause(SETTLE_S)
            body = payload() if callable(payload) else payload
            request = encode(Frame(command, seq, 0, body))
            try:
                ser.reset_input_buffer()
                self._parser.clear()
                ser.write(request)
                frame, damage = self._read_response(ser, command, seq)
            except _PORT_ERRORS as exc:
                raise self._port_error(exc, command) from exc
            if frame is None:
                kind = "damaged" if damage else "silent"
                detail = damage or f"no answer within {self.timeout_s:g} s"
            elif frame.status == Status.BUSY:
                kind, detail = "busy", "BUSY"
            else:
                return frame.status, frame.payload
            log.debug("camera %s: %s (seq %d) attempt %d of %d failed: %s", self.port, name,
                      seq, attempt, attempts, detail)
        plain = _PLAIN[kind].format(attempts=attempts, timeout=self.timeout_s)
        raise DeviceError(f"camera {self.port}: {DOING[command]} failed: {plain}")

    def _read_response(self, ser: serial.Serial, command: Command,
                       seq: int) -> tuple[Frame | None, str]:
        """The matching response, or None at the deadline; and the last damage seen.

        Damaged frames and stale answers are skipped, not fatal: a good answer
        may follow them within the same deadline.
        """
        deadline = time.monotonic() + self.timeout_s
        damage = ""
        while True:
            try:
                frame = self._parser.next()
            except FrameError as exc:
                damage = f"damaged answer ({exc})"
                log.debug("camera %s: skipped damaged bytes: %s", self.port, exc)
                continue
            if frame is not None:
                if frame.command == command | RESPONSE_BIT and frame.seq == seq:
                    return frame, damage
                log.debug("camera %s: dropped a stale frame (%s, seq %d)", self.port,
                          command_name(frame.command), frame.seq)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, damage
            ser.timeout = remaining
            self._parser.feed(ser.read(max(1, ser.in_waiting)))
