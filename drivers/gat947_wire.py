"""GA/T 947-style wire protocol: frames, CRC-16, ZFY_INFO, and the serial client.

The framing and command set are defined in docs/GAT947.md; the Device and
Detector built on them are in drivers/gat947.py.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import select
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import serial

from agent.errors import ConfigError, DeviceError, DeviceGoneError

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- codec (docs/GAT947.md §2) ---------------------------------------------------------------

SOF = b"\xa5\x5a"
VERSION = 0x01
HEADER = struct.Struct(">2sBBBBH")  # SOF, version, command, seq, status, payload length
MAX_PAYLOAD = 1024
RESPONSE_BIT = 0x80
PASSWORD_MAX = 32
TIME = struct.Struct(">q")  # milliseconds since 1970-01-01T00:00:00Z
RESOLUTION = struct.Struct(">HHB")  # width, height, frames per second


class Command(enum.IntEnum):
    INIT_DEVICE = 0x01
    GET_ID_CODE = 0x02
    GET_ZFY_INFO = 0x03
    WRITE_ZFY_INFO = 0x04
    GET_DEV_TIME = 0x05
    SYNC_DEV_TIME = 0x06
    READ_RESOLUTION = 0x07
    READ_BATTERY = 0x08
    SET_MSDC = 0x09


# The vendor SDK's names, used in every message so support staff recognise them.
SDK_NAMES = {
    Command.INIT_DEVICE: "InitDevice", Command.GET_ID_CODE: "GetIDCode",
    Command.GET_ZFY_INFO: "GetZFYInfo", Command.WRITE_ZFY_INFO: "WriteZFYInfo",
    Command.GET_DEV_TIME: "GetDevTime", Command.SYNC_DEV_TIME: "SyncDevTime",
    Command.READ_RESOLUTION: "ReadDeviceResolution",
    Command.READ_BATTERY: "ReadDeviceBatteryDumpEnergy", Command.SET_MSDC: "SetMSDC",
}


class Status(enum.IntEnum):
    OK = 0x00
    UNKNOWN_COMMAND = 0x01
    BAD_PAYLOAD = 0x02
    AUTH_FAILED = 0x03
    NOT_AUTHENTICATED = 0x04
    LOCKED = 0x05
    BUSY = 0x06
    DEVICE_FAULT = 0x07


def command_name(code: int) -> str:
    try:
        return SDK_NAMES[Command(code & ~RESPONSE_BIT)]
    except ValueError:
        return f"command 0x{code:02x}"


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


class FrameError(ValueError):
    """Bytes that are not a valid frame (bad checksum, version or length)."""


@dataclass(frozen=True)
class Frame:
    command: int
    seq: int
    status: int = 0
    payload: bytes = b""


def encode(frame: Frame) -> bytes:
    """The wire bytes of ``frame``: SOF, header, payload, CRC over header and payload."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(SOF, VERSION, frame.command, frame.seq, frame.status, len(frame.payload))
    body = head[len(SOF):] + frame.payload
    return SOF + body + crc16_ccitt(body).to_bytes(2, "big")


class FrameParser:
    """Cuts frames out of a byte stream, resynchronising on SOF after garbage or damage."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed; FrameError for a bad one.

        A bad frame is dropped from its SOF only (not by its claimed length,
        which may be the damaged part), so a good frame behind it is found.
        """
        buf = self._buf
        start = buf.find(SOF)
        if start < 0:
            del buf[:-1 if buf.endswith(SOF[:1]) else len(buf)]
            return None
        del buf[:start]
        if len(buf) < HEADER.size:
            return None
        _sof, version, command, seq, status, length = HEADER.unpack_from(buf)
        if version != VERSION:
            del buf[:len(SOF)]
            raise FrameError(f"unsupported protocol version {version}")
        if length > MAX_PAYLOAD:
            del buf[:len(SOF)]
            raise FrameError(f"payload length {length} exceeds {MAX_PAYLOAD}")
        total = HEADER.size + length + 2
        if len(buf) < total:
            return None
        body = bytes(buf[len(SOF):total - 2])
        got, want = int.from_bytes(buf[total - 2:total], "big"), crc16_ccitt(body)
        if got != want:
            del buf[:len(SOF)]
            raise FrameError(f"checksum mismatch (frame says 0x{got:04x}, bytes give "
                             f"0x{want:04x})")
        del buf[:total]
        return Frame(command, seq, status, body[HEADER.size - len(SOF):])


def decode(data: bytes) -> Frame:
    """Exactly one frame from ``data``; FrameError if it is damaged, short or has extra bytes."""
    if not data.startswith(SOF):
        raise FrameError("does not start with the SOF bytes a5 5a")
    parser = FrameParser()
    parser.feed(data)
    frame = parser.next()
    if frame is None:
        raise FrameError(f"incomplete frame ({len(data)} bytes)")
    if parser.pending:
        raise FrameError(f"{parser.pending} bytes after the frame")
    return frame


ZFY_FIELDS = (("serial", 7), ("officer_id", 6), ("officer_name", 32), ("unit_code", 12),
              ("unit_name", 32))
ZFY_SIZE = sum(size for _, size in ZFY_FIELDS)  # 89


@dataclass(frozen=True)
class ZfyInfo:
    """ZFY_INFO: who the camera belongs to.  On the wire: GBK, each field NUL padded."""

    serial: str
    officer_id: str
    officer_name: str
    unit_code: str
    unit_name: str

    def encode(self) -> bytes:
        out = bytearray()
        for name, size in ZFY_FIELDS:
            try:
                raw = getattr(self, name).encode("gbk")
            except UnicodeEncodeError as exc:
                raise ValueError(f"ZFY_INFO {name}: not representable in GBK ({exc})") from exc
            if len(raw) > size or b"\0" in raw:
                raise ValueError(f"ZFY_INFO {name}: {len(raw)} bytes in GBK, at most {size} "
                                 "without NUL")
            out += raw.ljust(size, b"\0")
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> tuple[ZfyInfo, list[str]]:
        """The fields and the names of those that were not valid GBK (decoded with U+FFFD)."""
        if len(data) != ZFY_SIZE:
            raise FrameError(f"ZFY_INFO is {ZFY_SIZE} bytes, got {len(data)}")
        values: dict[str, str] = {}
        bad: list[str] = []
        offset = 0
        for name, size in ZFY_FIELDS:
            # NUL padded; some firmware pads with spaces.  GBK trail bytes are >= 0x40,
            # so stripping these bytes never cuts a character.
            raw = data[offset:offset + size].split(b"\0", 1)[0].rstrip(b" ")
            offset += size
            try:
                values[name] = raw.decode("gbk")
            except UnicodeDecodeError:
                values[name] = raw.decode("gbk", errors="replace")
                bad.append(name)
        return cls(**values), bad


class Password:
    """The camera password; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if len(value) > PASSWORD_MAX:
            raise ValueError(f"the password is longer than {PASSWORD_MAX} bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Password(<hidden>)"


def read_password(path: Path | None) -> Password:
    """The first line of ``path``; ConfigError if group or others may access the file."""
    if path is None:
        return Password(b"")
    where = "devices.gat947.password_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the camera password file {path}: "
                          f"{exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"{where}: the camera password file {path} is accessible by group "
                              f"or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"run: chmod 600 {path}")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise ConfigError(f"{where}: the camera password file {path} is empty "
                          "(leave password_file unset for cameras without a password)")
    if len(line) > PASSWORD_MAX:
        raise ConfigError(f"{where}: the password in {path} is longer than {PASSWORD_MAX} bytes")
    return Password(line)


# --- the client: one port, one owner thread ---------------------------------------------------

_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO})
# What pyserial lets through from a vanished port: its own errors, OSError, and termios.error
# (tcflush on a hung-up tty), which is not an OSError.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
_SETTLE_S = 0.02  # let the tail of a garbled answer arrive before it is flushed


class _NoAnswer(Exception):
    """No matching response before the deadline (one attempt)."""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


class Gat947Client:
    """The protocol on one serial port.

    Public methods may be called from any thread: each runs as a job on the
    port's single owner thread (a one-worker executor), which alone opens,
    reads, writes and closes the port.  Retries are that thread's business,
    so a command takes at most ``(retries + 1) * timeout_s`` plus a few ms.
    """

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

    def init_device(self) -> None:
        """InitDevice: log in with the password (again, even if logged in)."""
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
            log.warning("camera %s: ZFY_INFO field(s) %s are not valid GBK; kept with "
                        "replacement characters", self.port, ", ".join(bad))
        return info

    def write_zfy_info(self, info: ZfyInfo) -> None:
        self._call(self._command, Command.WRITE_ZFY_INFO, info.encode())

    def get_dev_time(self) -> float:
        """GetDevTime: the camera clock, seconds since the epoch (UTC)."""
        data = self._call(self._command, Command.GET_DEV_TIME, b"")
        self._need(Command.GET_DEV_TIME, data, TIME.size)
        return int(TIME.unpack(data)[0]) / 1000

    def sync_dev_time(self, now: float, since: float) -> tuple[float, float]:
        """SyncDevTime to ``now`` as of ``time.monotonic() == since``; (camera clock before, set).

        The value sent is ``now`` advanced by the time spent waiting for the
        port, so a busy port does not set the clock late.
        """
        return self._call(self._sync, now, since)

    def read_resolution(self) -> tuple[int, int, int]:
        """ReadDeviceResolution: (width, height, frames per second)."""
        data = self._call(self._command, Command.READ_RESOLUTION, b"")
        self._need(Command.READ_RESOLUTION, data, RESOLUTION.size)
        width, height, fps = RESOLUTION.unpack(data)
        return int(width), int(height), int(fps)

    def read_battery(self) -> int | None:
        """ReadDeviceBatteryDumpEnergy: percent left, None if the camera does not know (0xFF)."""
        data = self._call(self._command, Command.READ_BATTERY, b"")
        self._need(Command.READ_BATTERY, data, 1)
        return None if data[0] == 0xFF else min(int(data[0]), 100)

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

    def close(self) -> None:
        """Close the port once queued jobs are done; later calls raise DeviceGoneError."""
        if self._closed:
            return
        self._closed = True
        try:
            self._owner.submit(self._close_port)
        except RuntimeError:
            return
        self._owner.shutdown(wait=False)

    # --- the owner thread only ----------------------------------------------------------------

    def _need(self, command: Command, data: bytes, size: int, *, exact: bool = True) -> None:
        if len(data) < size or (exact and len(data) != size):
            raise DeviceError(f"camera {self.port}: {SDK_NAMES[command]} answered "
                              f"{len(data)} bytes, expected {'' if exact else 'at least '}{size}")

    def _hung_up_locked(self) -> bool:
        ser = self._serial
        if ser is None or not ser.is_open:
            return True
        poller = select.poll()
        poller.register(ser.fileno(), select.POLLHUP | select.POLLERR | select.POLLNVAL)
        return bool(poller.poll(0))

    def _open(self) -> serial.Serial:
        if self._gone is not None:
            raise DeviceGoneError(f"camera {self.port} is gone ({self._gone})")
        if self._serial is not None:
            return self._serial
        try:
            # exclusive: a second program (or a stray second client) on the port would
            # steal half of the answers.
            ser = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s,
                                write_timeout=self.timeout_s, exclusive=True)
        except _PORT_ERRORS as exc:
            raise self._port_error(exc, "opening the port") from exc
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

    def _port_error(self, exc: Exception, doing: str) -> DeviceError:
        code = getattr(exc, "errno", None)
        if code is None and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]  # termios.error carries (errno, text)
        with self._fd_lock:
            hung_up = self._serial is not None and self._hung_up_locked()
        text = (f"[Errno {code}] {exc.args[1]}" if isinstance(exc, termios.error)
                and len(exc.args) > 1 else str(exc))
        if code in _GONE_ERRNOS or hung_up or not os.path.exists(self.port):
            self._gone = f"{doing}: {text}"
            self._close_port()
            return DeviceGoneError(f"camera {self.port} is gone ({doing}: {text})")
        if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return DeviceError(f"camera {self.port} is busy: another program has the port open")
        return DeviceError(f"camera {self.port}: {doing} failed: {text}")

    def _login(self) -> None:
        status, _ = self._exchange(Command.INIT_DEVICE, self._password.reveal())
        if status == Status.AUTH_FAILED:
            raise DeviceError(f"camera {self.port} refused the password "
                              "(check devices.gat947.password_file)")
        if status == Status.LOCKED:
            raise DeviceError(f"camera {self.port} is locked after too many wrong passwords; "
                              "fix devices.gat947.password_file and power-cycle the camera")
        if status != Status.OK:
            raise self._status_error(Command.INIT_DEVICE, status)
        self._authenticated = True

    def _command(self, command: Command, payload: bytes) -> bytes:
        if not self._authenticated:
            self._login()
        status, data = self._exchange(command, payload)
        if status == Status.NOT_AUTHENTICATED:
            # The camera dropped the session (it rebooted, or the port was reopened).
            log.info("camera %s forgot the login; logging in again", self.port)
            self._authenticated = False
            self._login()
            status, data = self._exchange(command, payload)
        if status != Status.OK:
            raise self._status_error(command, status)
        return data

    def _sync(self, now: float, since: float) -> tuple[float, float]:
        if not self._authenticated:
            self._login()
        target = now + (time.monotonic() - since)
        data = self._command(Command.SYNC_DEV_TIME, TIME.pack(round(target * 1000)))
        self._need(Command.SYNC_DEV_TIME, data, TIME.size)
        return int(TIME.unpack(data)[0]) / 1000, target

    def _status_error(self, command: Command, status: int) -> DeviceError:
        try:
            text = Status(status).name.lower().replace("_", " ")
        except ValueError:
            text = "unknown status"
        return DeviceError(f"camera {self.port}: {SDK_NAMES[command]} failed: {text} "
                           f"(status 0x{status:02x})")

    def _exchange(self, command: Command, payload: bytes) -> tuple[int, bytes]:
        """Send one request and return (status, payload) of its response, retrying."""
        ser = self._open()
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        request = encode(Frame(command, seq, 0, payload))
        name = SDK_NAMES[command]
        attempts = self.retries + 1
        problem = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(_SETTLE_S)
            try:
                # Retries keep the seq: every command is idempotent (docs/GAT947.md §4), so
                # a late answer to an earlier attempt is as good as the awaited one.
                ser.reset_input_buffer()
                self._parser.clear()
                ser.write(request)
                frame = self._read_response(ser, command, seq)
            except FrameError as exc:
                problem = f"corrupt response ({exc})"
            except _NoAnswer:
                problem = f"no answer within {self.timeout_s:g} s"
            except _PORT_ERRORS as exc:
                raise self._port_error(exc, name) from exc
            else:
                if frame.status != Status.BUSY or attempt == attempts:
                    return frame.status, frame.payload
                problem = "camera busy"
                time.sleep(self.timeout_s / 4)
            log.warning("camera %s: %s attempt %d of %d failed: %s", self.port, name, attempt,
                        attempts, problem)
        raise DeviceError(f"camera {self.port}: {name} failed after {attempts} attempts: "
                          f"{problem}")

    def _read_response(self, ser: serial.Serial, command: Command, seq: int) -> Frame:
        deadline = time.monotonic() + self.timeout_s
        while True:
            frame = self._parser.next()
            if frame is not None:
                if frame.command == command | RESPONSE_BIT and frame.seq == seq:
                    return frame
                log.debug("camera %s: dropped a stale frame (%s, seq %d)", self.port,
                          command_name(frame.command), frame.seq)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _NoAnswer
            ser.timeout = remaining
            self._parser.feed(ser.read(max(1, ser.in_waiting)))


