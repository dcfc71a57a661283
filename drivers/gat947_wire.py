"""GA/T 947-style wire protocol: frames, CRC-16, the stream parser, ZFY_INFO, the password.

The framing and command set are defined in docs/GAT947.md; the client that
speaks them on a serial port is drivers/gat947_client.py, the Device and
Detector built on it drivers/gat947.py.

Invariants of the parser (docs/GAT947.md §2): whatever bytes it is fed, it
never raises anything but :class:`FrameError`, never holds more than one
frame's worth of bytes once drained, and does a bounded amount of work per
byte; a damaged or fake header never hides a good frame behind it.
"""

from __future__ import annotations

import binascii
import enum
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError

# --- codec (docs/GAT947.md §2) ---------------------------------------------------------------

SOF = b"\xa5\x5a"
VERSION = 0x01
HEADER = struct.Struct(">2sBBBBH")  # SOF, version, command, seq, status, payload length
MAX_PAYLOAD = 1024
MAX_FRAME = HEADER.size + MAX_PAYLOAD + 2
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


# The vendor SDK's names: for the debug log and for vendors (the conformance kit), never
# in a message for the people at the station (those say what the step does, see DOING).
SDK_NAMES = {
    Command.INIT_DEVICE: "InitDevice", Command.GET_ID_CODE: "GetIDCode",
    Command.GET_ZFY_INFO: "GetZFYInfo", Command.WRITE_ZFY_INFO: "WriteZFYInfo",
    Command.GET_DEV_TIME: "GetDevTime", Command.SYNC_DEV_TIME: "SyncDevTime",
    Command.READ_RESOLUTION: "ReadDeviceResolution",
    Command.READ_BATTERY: "ReadDeviceBatteryDumpEnergy", Command.SET_MSDC: "SetMSDC",
}

# What each command does, in the words of an IT installer.
DOING = {
    Command.INIT_DEVICE: "logging in", Command.GET_ID_CODE: "reading the camera's ID",
    Command.GET_ZFY_INFO: "reading the officer information",
    Command.WRITE_ZFY_INFO: "writing the officer information",
    Command.GET_DEV_TIME: "reading the camera clock",
    Command.SYNC_DEV_TIME: "setting the camera clock",
    Command.READ_RESOLUTION: "reading the video resolution",
    Command.READ_BATTERY: "reading the battery level",
    Command.SET_MSDC: "switching the camera to USB storage",
}

# Commands whose request payload is empty (anything else is BAD_PAYLOAD, docs §4).
EMPTY_REQUEST = frozenset({Command.GET_ID_CODE, Command.GET_ZFY_INFO, Command.GET_DEV_TIME,
                           Command.READ_RESOLUTION, Command.READ_BATTERY, Command.SET_MSDC})


class Status(enum.IntEnum):
    OK = 0x00
    UNKNOWN_COMMAND = 0x01
    BAD_PAYLOAD = 0x02
    AUTH_FAILED = 0x03
    NOT_AUTHENTICATED = 0x04
    LOCKED = 0x05
    BUSY = 0x06
    DEVICE_FAULT = 0x07


class Charge(enum.IntEnum):
    """The optional second byte of the battery answer (docs/GAT947.md §4)."""

    NOT_CHARGING = 0x00
    CHARGING = 0x01
    FULL = 0x02
    UNKNOWN = 0xFF


def command_name(code: int) -> str:
    try:
        return SDK_NAMES[Command(code & ~RESPONSE_BIT)]
    except ValueError:
        return f"command 0x{code:02x}"


def crc16_ccitt(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor.

    binascii's CRC-HQX is this very CRC, computed in C: the parser may check a
    candidate frame at every SOF of hostile input, so the speed matters.
    """
    return binascii.crc_hqx(data, 0xFFFF)


class FrameError(ValueError):
    """Bytes that are not a valid frame (bad checksum, version or length, cut short)."""


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


def _header_problem(version: int, length: int) -> str | None:
    if version != VERSION:
        return f"unsupported protocol version {version}"
    if length > MAX_PAYLOAD:
        return f"payload length {length} exceeds {MAX_PAYLOAD}"
    return None


class FrameParser:
    """Cuts frames out of a byte stream, resynchronising at the next SOF after damage.

    Rules (docs/GAT947.md §2): bytes before an SOF are skipped; a frame with a
    wrong version, a length above 1024 or a wrong CRC is dropped from its SOF
    only (not by its claimed length, which may be the damaged field); and while
    the frame at the head is still incomplete, a complete frame with a good CRC
    that starts at a later SOF among the bytes received wins: the head's header
    was damaged or fake (it claimed more bytes than were sent) and is dropped.

    Bounded: each later SOF is looked at once per head (its header when it is
    complete, its CRC when its bytes are), so a burst of SOF bytes costs linear
    work, and once :meth:`next` returned None the buffer holds less than one
    frame (:data:`MAX_FRAME` bytes).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan_from = 1  # where the search for later SOFs resumes (head unchanged)
        self._waiting: list[tuple[int, int]] = []  # later frames: (start, end), incomplete

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._new_head()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _new_head(self) -> None:
        self._scan_from = 1
        self._waiting.clear()

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._new_head()

    def next(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed; FrameError for a bad one.

        After a FrameError the bad bytes are gone: call again for what follows.
        """
        buf = self._buf
        start = buf.find(SOF)
        if start < 0:
            keep = 1 if buf.endswith(SOF[:1]) else 0
            if len(buf) > keep:
                self._drop(len(buf) - keep)
            return None
        if start:
            self._drop(start)
        if len(buf) < HEADER.size:
            return None
        _sof, version, command, seq, status, length = HEADER.unpack_from(buf)
        problem = _header_problem(version, length)
        if problem is not None:
            self._drop(len(SOF))
            raise FrameError(problem)
        total = HEADER.size + length + 2
        if len(buf) >= total:
            got = int.from_bytes(buf[total - 2:total], "big")
            want = crc16_ccitt(memoryview(buf)[len(SOF):total - 2])
            if got != want:
                self._drop(len(SOF))
                raise FrameError(f"checksum mismatch (frame says 0x{got:04x}, bytes give "
                                 f"0x{want:04x})")
            payload = bytes(buf[HEADER.size:total - 2])
            self._drop(total)
            return Frame(command, seq, status, payload)
        later = self._complete_frame_behind()
        if later is None:
            return None
        self._drop(later)
        raise FrameError(f"a header claiming {length} payload bytes was followed by a complete "
                         f"frame {later} bytes later; dropped the header")

    def _complete_frame_behind(self) -> int | None:
        """Start of the first complete, valid frame behind the incomplete head, if any."""
        buf = self._buf
        pos = self._scan_from
        while True:
            pos = buf.find(SOF, pos)
            if pos < 0:
                self._scan_from = max(1, len(buf) - 1)  # an SOF may straddle the end
                break
            if pos + HEADER.size > len(buf):
                self._scan_from = pos  # its header is not complete: look again later
                break
            _sof, version, _c, _q, _s, length = HEADER.unpack_from(buf, pos)
            if _header_problem(version, length) is None:
                self._waiting.append((pos, pos + HEADER.size + length + 2))
            pos += 1
        found = None
        still = []
        for begin, end in self._waiting:
            if end > len(buf):
                still.append((begin, end))
                continue
            if int.from_bytes(buf[end - 2:end], "big") == crc16_ccitt(
                    memoryview(buf)[begin + len(SOF):end - 2]):
                found = begin if found is None else min(found, begin)
            # a complete candidate with a bad CRC is not a frame: forgotten
        self._waiting = still
        return found


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


# --- ZFY_INFO (docs/GAT947.md §4) ------------------------------------------------------------

ZFY_FIELDS = (("serial", 7), ("officer_id", 6), ("officer_name", 32), ("unit_code", 12),
              ("unit_name", 32))
ZFY_SIZE = sum(size for _, size in ZFY_FIELDS)  # 89
ZFY_DIGITS = frozenset({"officer_id", "unit_code"})


def fit_gbk(name: str, text: str, size: int) -> bytes:
    """``text`` in GBK, cut at the last whole character that fits in ``size`` bytes.

    ValueError if it holds a NUL or a character GBK cannot represent.
    """
    out = bytearray()
    for char in text:
        try:
            raw = char.encode("gbk")
        except UnicodeEncodeError as exc:
            raise ValueError(f"ZFY_INFO {name}: {char!r} is not representable in GBK") from exc
        if raw == b"\0":
            raise ValueError(f"ZFY_INFO {name}: holds a NUL character")
        if len(out) + len(raw) > size:
            break
        out += raw
    return bytes(out)


@dataclass(frozen=True)
class ZfyInfo:
    """ZFY_INFO: who the camera belongs to.  On the wire: GBK, each field NUL padded."""

    serial: str
    officer_id: str
    officer_name: str
    unit_code: str
    unit_name: str

    def encode(self) -> bytes:
        """89 bytes; text longer than its field is cut at a character boundary (docs §4)."""
        out = bytearray()
        for name, size in ZFY_FIELDS:
            out += fit_gbk(name, getattr(self, name), size).ljust(size, b"\0")
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


def zfy_refusal(payload: bytes, id_code: str) -> str | None:
    """Why a camera refuses this WriteZFYInfo payload with BAD_PAYLOAD (docs §4), or None."""
    if len(payload) != ZFY_SIZE:
        return f"ZFY_INFO is {ZFY_SIZE} bytes, got {len(payload)}"
    info, bad = ZfyInfo.decode(payload)
    if bad:
        return f"not valid GBK: {', '.join(bad)}"
    for name in ZFY_DIGITS:
        value = getattr(info, name)
        if not all("0" <= c <= "9" for c in value):
            return f"{name} holds something other than ASCII digits"
    if info.serial not in ("", id_code):
        return "the device serial is not the camera's ID code"
    return None


# --- the password (docs/GAT947.md §3) --------------------------------------------------------

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
