"""Body cameras that speak a GA/T 947-style command protocol over a USB serial port.

Chinese body cameras (执法记录仪) come with vendor SDKs (InitDevice, GetIDCode,
GetZFYInfo, WriteZFYInfo, SyncDevTime, ReadDeviceResolution,
ReadDeviceBatteryDumpEnergy, SetMSDC) over a password-protected serial link.
There is no public wire specification; this module implements the framing and
command set fixed in docs/GAT947.md, onto which a vendor adapter maps a real
camera's protocol.  Layers:

* codec: :class:`Frame`, :func:`encode`, :func:`decode`, :class:`FrameParser`
  (big-endian, CRC-16/CCITT-FALSE) and :class:`ZfyInfo` (GBK, NUL padded);
* :class:`Gat947Client`: one camera port.  Every exchange runs on the port's
  single owner thread, so callers on any thread never interleave frames.
  Timeouts, corrupt responses and BUSY answers are retried; then a
  DeviceError names the port and the command.  A port that vanishes raises
  DeviceGoneError;
* :class:`Gat947Device`: the Device protocol.  identify() speaks the
  protocol; the first use of the recordings switches the camera to mass
  storage (SetMSDC), waits for its volume under ``mount_root`` and delegates
  to a :class:`drivers.mass_storage.MassStorageDevice` that holds the
  identity already known;
* :class:`Gat947Detector`: polls the serial ports (they have no file-system
  event to watch) and docks each port once.

Invariants: the password is never logged and never put in a message; a
device-provided name is never used to build a path (the volume is chosen
among the entries ``mount_root`` already holds); there is one Device object
per port in the process (:func:`_claim`), so no two detectors hand out a port
twice and the port's exclusive lock is taken once.
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

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
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import serial
from serial.tools import list_ports

from agent.configschema import option
from agent.errors import ConfigError, DeviceError, DeviceGoneError
from agent.timeutil import rfc3339
from drivers import catalog as catalog_mod
from drivers.base import Detector, Device, DeviceInfo, DriverSpec, Listing, Recording
from drivers.mass_storage import MassStorageConfig, MassStorageDevice, read_mounts, usb_for_source

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY = "gat947"

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


# --- the Device -------------------------------------------------------------------------------

MOUNTS_FILE = Path("/proc/self/mounts")
SYSFS_ROOT = Path("/sys")
_MOUNT_POLL_S = 0.05


class Gat947Device:
    """A camera docked on a serial port; its recordings are read after SetMSDC."""

    driver_key = KEY

    def __init__(self, port: str, config: Gat947Config, *, password: Password,
                 entry: catalog_mod.Entry | None, usb_id: str = "") -> None:
        self.port = port
        self.config = config
        self.entry = entry
        self.usb_id = usb_id
        self.client = Gat947Client(port, password=password, baudrate=config.baudrate,
                                   timeout_s=config.command_timeout_s, retries=config.retries)
        self.mount_root = Path(os.path.realpath(config.mount_root))
        self._lock = threading.RLock()
        self._info: DeviceInfo | None = None
        self._storage: MassStorageDevice | None = None

    @property
    def handle(self) -> str:
        return self.port

    def identify(self) -> DeviceInfo:
        """InitDevice, GetIDCode, GetZFYInfo and GetDevTime, as one DeviceInfo."""
        try:
            info = self._ask_identity()
        except DeviceError as exc:
            with self._lock:
                storage, known = self._storage, self._info
            if storage is not None and known is not None and storage.present():
                # The serial interface left (or went quiet) with the switch to mass storage,
                # as on most cameras: the identity stands, the clock cannot be read now.
                log.info("camera %s in mass-storage mode: identity from before the switch "
                         "(%s)", self.port, exc)
                return replace(known, clock=None)
            raise
        with self._lock:
            self._info = info
        return info

    def _ask_identity(self) -> DeviceInfo:
        client = self.client
        client.init_device()
        id_code, firmware = client.get_id_code()
        zfy = client.get_zfy_info()
        clock = client.get_dev_time()
        serial_no = id_code or zfy.serial
        if not serial_no:
            raise DeviceError(f"camera {self.port}: no ID code (GetIDCode and the ZFY_INFO "
                              "serial are both empty)")
        if zfy.serial and zfy.serial != serial_no:
            log.warning("camera %s: ZFY_INFO serial %r differs from the ID code %r; using the "
                        "ID code", self.port, zfy.serial, serial_no)
        entry = self.entry
        log.info("camera %s: %s, officer %s (%s)", self.port, serial_no, zfy.officer_id,
                 zfy.unit_code)
        return DeviceInfo(
            serial=serial_no, vendor=entry.vendor if entry else "",
            model=entry.model if entry else "", firmware=firmware,
            officer_id=zfy.officer_id, officer_name=zfy.officer_name,
            unit_code=zfy.unit_code, unit_name=zfy.unit_name, clock=rfc3339(clock),
            driver=KEY, usb_id=self.usb_id, name_pattern=entry.name_pattern if entry else None,
        )

    # --- recordings: through the mass-storage volume ----------------------------------------

    def storage(self) -> MassStorageDevice:
        """The camera's volume, switching the camera to mass storage on first use."""
        with self._lock:
            if self._storage is not None and self._storage.present():
                return self._storage
            info = self._info if self._info is not None else self.identify()
            before = set(self._entries())
            log.info("camera %s (%s): switching to mass storage (SetMSDC)", self.port,
                     info.serial)
            self.client.set_msdc()
            mount_point = self._wait_for_volume(info.serial, before)
            source = self._mount_source(mount_point)
            usb = usb_for_source(SYSFS_ROOT, source) if source else None
            extensions = (self.entry.extensions if self.entry is not None
                          else MassStorageConfig(mount_root=self.mount_root).extensions)
            self._storage = MassStorageDevice(
                mount_point, usb=usb, entry=self.entry, extensions=extensions,
                mounts_file=MOUNTS_FILE if self.config.require_mount else None, known=info)
            log.info("camera %s (%s): storage mounted at %s", self.port, info.serial,
                     mount_point)
            return self._storage

    def recordings(self) -> Listing:
        return self.storage().recordings()

    def open(self, recording: Recording) -> BinaryIO:
        return self.storage().open(recording)

    def stat(self, recording: Recording) -> tuple[int, float]:
        return self.storage().stat(recording)

    def release(self, recording: Recording) -> None:
        self.storage().release(recording)

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.mount_root)
        except OSError as exc:
            raise DeviceError(f"cannot list the mount root {self.mount_root}: "
                              f"{exc.strerror}") from exc

    def _mount_source(self, mount_point: Path) -> str | None:
        try:
            return read_mounts(MOUNTS_FILE).get(str(mount_point))
        except DeviceError:
            return None

    def _volume_names(self) -> list[str]:
        """Entries of mount_root that can be a camera volume now (never a symlink)."""
        mounts = read_mounts(MOUNTS_FILE) if self.config.require_mount else {}
        names = []
        for name in self._entries():
            path = self.mount_root / name
            try:
                if not stat.S_ISDIR(os.stat(path, follow_symlinks=False).st_mode):
                    continue
            except OSError:
                continue
            if self.config.require_mount and str(path) not in mounts:
                continue
            names.append(name)
        return names

    def _wait_for_volume(self, serial_no: str, before: set[str]) -> Path:
        """The entry named after the ID code, else the only entry that appeared since ``before``.

        Names come from listing ``mount_root``; the ID code is only compared
        with them, never joined into a path.
        """
        timeout = self.config.mount_timeout_s
        deadline = time.monotonic() + timeout
        new: list[str] = []
        while True:
            names = self._volume_names()
            for name in names:
                if name == serial_no:
                    return self.mount_root / name
            new = [n for n in names if n not in before]
            if len(new) == 1:
                return self.mount_root / new[0]
            if time.monotonic() >= deadline:
                break
            time.sleep(_MOUNT_POLL_S)
        more = ""
        if new:
            more = (f"; {len(new)} new volumes appeared and none is named {serial_no!r}: "
                    f"{', '.join(sorted(new))}")
        raise DeviceError(f"camera {self.port} ({serial_no}) was switched to mass storage "
                          f"(SetMSDC) but no volume appeared under {self.mount_root} within "
                          f"{timeout:g} s{more}; check the automounter (docs/GAT947.md)")

    # --- clock, presence ----------------------------------------------------------------------

    def sync_clock(self, now: float) -> float | None:
        """SyncDevTime to ``now``; the camera clock minus true time before, in seconds."""
        before, target = self.client.sync_dev_time(now, time.monotonic())
        offset = round(before - target, 3)
        log.info("camera %s: clock was off by %+.3f s; set (SyncDevTime)", self.port, offset)
        return offset

    def present(self) -> bool:
        """The volume is there, or the port is open and the camera answers."""
        with self._lock:
            storage = self._storage
        if storage is not None and storage.present():
            return True
        if not self.client.alive():
            return False
        try:
            self.client.get_id_code()
        except DeviceError as exc:
            log.info("camera %s does not answer: %s", self.port, exc)
            return False
        return True

    def attached(self) -> bool:
        """Still docked, judged without talking to the camera (used by the detector)."""
        if self.client.alive():
            return True
        with self._lock:
            storage = self._storage
        return storage is not None and storage.present()

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"Gat947Device({self.port!r})"


# One Device per port in the process: a second detector (``run --once`` makes new ones)
# gets the same object, so the Station's per-handle ownership and the port lock hold.
_LIVE: weakref.WeakValueDictionary[str, Gat947Device] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _claim(port: str, config: Gat947Config, make: Callable[[], Gat947Device]) -> Gat947Device:
    with _LIVE_LOCK:
        device = _LIVE.get(port)
        if device is not None and device.config == config and device.attached():
            return device
        if device is not None and not device.attached():
            device.close()
        device = make()
        _LIVE[port] = device
        return device


def _forget(device: Gat947Device) -> None:
    with _LIVE_LOCK:
        if _LIVE.get(device.port) is device:
            del _LIVE[device.port]
    device.close()


# --- configuration and detector ---------------------------------------------------------------

@dataclass(frozen=True)
class Gat947Config:
    mount_root: Path = option(doc="Directory where the automounter mounts a camera's storage "
                                  "after SetMSDC (e.g. /media/bwc-gat947); do not also give "
                                  "it to [devices.mass_storage].")
    ports: list[str] = option(default_factory=list,
                              doc="Serial devices of cameras (e.g. /dev/ttyACM0); empty: "
                                  "every USB serial port whose VID:PID the catalog lists.")
    baudrate: int = option(115200, min=1200, max=4_000_000, doc="Serial line speed.")
    password_file: Path | None = option(None, doc="File holding the camera password, first "
                                                  "line (mode 0600); unset: no password.")
    mount_timeout_s: float = option(20.0, min=0.1, max=600,
                                    doc="Seconds to wait for the volume after SetMSDC.")
    scan_interval_s: float = option(2.0, min=0.05, max=300,
                                    doc="Seconds between looks at the serial ports.")
    catalog: Path | None = option(None, doc="Device catalog (USB ids, name patterns); "
                                            "default: the catalog shipped with bwc-agent.")
    catalog_key: str | None = option(None, doc="Catalog entry for ports whose USB id is "
                                               "unknown (e.g. a port given by path).")
    require_mount: bool = option(True, doc="The volume must be a mount point (tests: false).")
    command_timeout_s: float = option(1.0, min=0.05, max=30,
                                      doc="Seconds to wait for each response.")
    retries: int = option(2, min=0, max=10,
                          doc="Resends after a timeout or a corrupt response.")


class PortInfo(NamedTuple):
    path: str
    usb_id: str  # "vvvv:pppp", "" when unknown


class Gat947Detector:
    """Polls the serial ports every ``scan_interval_s`` and docks each camera port once.

    A docked device stays docked while its port is open and not hung up, or
    (after SetMSDC, when most cameras drop the serial interface) while its
    volume is there.  Callbacks run on the polling thread, one at a time.
    """

    def __init__(self, config: Gat947Config) -> None:
        self.config = config
        self.catalog = catalog_mod.load(config.catalog)
        self.fallback = self.catalog.get(config.catalog_key) if config.catalog_key else None
        self.password = read_password(config.password_file)
        self._usb_ids = frozenset(u for e in self.catalog.entries for u in e.usb_ids)
        self._lock = threading.RLock()
        self._known: dict[str, Gat947Device] = {}
        self._on_dock: Callable[[Device], None] | None = None
        self._on_undock: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def ports(self) -> list[PortInfo]:
        """Candidate ports now: the configured ones that exist, else catalog USB ids."""
        by_path: dict[str, PortInfo] = {}
        try:
            for p in list_ports.comports():
                if p.vid is not None and p.pid is not None:
                    by_path[os.path.realpath(p.device)] = PortInfo(p.device,
                                                                   f"{p.vid:04x}:{p.pid:04x}")
        except (OSError, ValueError) as exc:
            log.warning("cannot list serial ports: %s", exc)
        if self.config.ports:
            return [PortInfo(path, by_path.get(os.path.realpath(path), PortInfo(path, "")).usb_id)
                    for path in self.config.ports if os.path.exists(path)]
        return sorted(p for p in by_path.values() if p.usb_id in self._usb_ids)

    def _device_for(self, port: PortInfo) -> Gat947Device:
        entry = self.catalog.match_usb(port.usb_id) if port.usb_id else None
        if entry is None:
            entry = self.fallback
        if entry is None:
            log.warning("camera port %s (USB %s) matches no catalog entry: no model, no name "
                        "pattern", port.path, port.usb_id or "unknown")
        return _claim(port.path, self.config, lambda: Gat947Device(
            port.path, self.config, password=self.password, entry=entry, usb_id=port.usb_id))

    def _reconcile(self) -> list[Gat947Device]:
        """Update the docked set, report changes if started; the devices docked now."""
        with self._lock:
            for path, device in list(self._known.items()):
                if not device.attached():
                    del self._known[path]
                    _forget(device)
                    log.info("undocked: %s", path)
                    if self._on_undock is not None:
                        self._on_undock(device.handle)
            for port in self.ports():
                if port.path in self._known:
                    continue
                device = self._device_for(port)
                self._known[port.path] = device
                log.info("docked: %s", port.path)
                if self._on_dock is not None:
                    self._on_dock(device)
            return list(self._known.values())

    def scan(self) -> list[Device]:
        return list(self._reconcile())

    def start(self, on_dock: Callable[[Device], None], on_undock: Callable[[str], None]) -> None:
        with self._lock:
            self._on_dock, self._on_undock = on_dock, on_undock
            # Devices handed out by an earlier scan() count as reported, like DockWatcher.
            self._reconcile()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="gat947-ports")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.wait(self.config.scan_interval_s):
            try:
                self._reconcile()
            except Exception:  # keep watching whatever one pass met
                log.exception("scanning serial ports for gat947 cameras failed")

    def stop(self) -> None:
        """Stop polling.  Docked devices stay open: a dock session may still be using one."""
        self._stopping.set()
        with self._lock:
            self._on_dock = self._on_undock = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def make_detector(config: object) -> Detector:
    if not isinstance(config, Gat947Config):
        raise TypeError(f"gat947 driver: expected Gat947Config, got {type(config).__name__}")
    return Gat947Detector(config)


SPEC = DriverSpec(KEY, Gat947Config, make_detector)

