"""A GA/T 947-style camera written from docs/GAT947.md alone, on a real pseudo-terminal.

This is what a vendor would write from the document: its own framing (§2),
its own command and status tables (§4, §5), its own ZFY_INFO layout, and it
imports nothing from drivers/ (the driver's codec, drivers/gat947_wire.py,
is exactly what it must not share).  Tests dock it through the real driver,
so the document and the driver cannot drift apart; the conformance kit is
run against it with deliberate ``violations`` to show that each is named.

Scenario switches (a conforming camera having a bad day): ``noise`` (bytes
sent before the next answers, one string each), ``lose`` (command code ->
how many of its next answers are lost although the command was carried
out), ``busy`` (the next n answers are BUSY), ``clock_raw_ms`` (the clock
reads this raw value until it is set), ``battery`` / ``charge`` (None: a
one-byte battery answer), ``drop_port_on_msdc``, ``mount_on_msdc``.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import select
import struct
import threading
import time
import tty
from pathlib import Path

# §2: A5 5A | version 01 | command | seq | status | length (big-endian u16) | payload | CRC
SOF = bytes([0xA5, 0x5A])
HEAD = struct.Struct(">BBBBH")  # version, command, seq, status, length (after the SOF)
LIMIT = 1024

# §4, the command table.
INIT_DEVICE, GET_ID_CODE, GET_ZFY_INFO, WRITE_ZFY_INFO = 0x01, 0x02, 0x03, 0x04
GET_DEV_TIME, SYNC_DEV_TIME, READ_RESOLUTION, READ_BATTERY, SET_MSDC = (
    0x05, 0x06, 0x07, 0x08, 0x09)
EMPTY_PAYLOAD = {GET_ID_CODE, GET_ZFY_INFO, GET_DEV_TIME, READ_RESOLUTION, READ_BATTERY,
                 SET_MSDC}

# §5, the status table.
OK, UNKNOWN_COMMAND, BAD_PAYLOAD, AUTH_FAILED = 0x00, 0x01, 0x02, 0x03
NOT_AUTHENTICATED, LOCKED, BUSY, DEVICE_FAULT = 0x04, 0x05, 0x06, 0x07

# §4, ZFY_INFO: (offset, size) of serial, officer number, officer name, unit code, unit name.
ZFY = {"serial": (0, 7), "officer_id": (7, 6), "officer_name": (13, 32),
       "unit_code": (45, 12), "unit_name": (57, 32)}
ZFY_LEN = 89

# Deliberate departures from the document, for the conformance kit's own test.
VIOLATIONS = frozenset({
    "answers-damaged",        # §2: answers a request whose CRC is wrong
    "unknown-needs-login",    # §5: an unknown command before login gets NOT_AUTHENTICATED
    "status-byte-ignored",    # §5: a request with a non-zero status byte is carried out
    "sync-answers-new-time",  # §4: SyncDevTime answers the time set, not the clock before
    "battery-over-100",       # §4: the battery answer is 150
    "zfy-accepts-letters",    # §4: WriteZFYInfo accepts letters in the officer number
    "no-failure-reset",       # §3: a right password does not reset the failure count
    "slow-sync",              # §6: SyncDevTime answers after the command timeout
    "speaks-unasked",         # §1: sends a frame nobody asked for after each login
    "payload-ignored",        # §4: GetIDCode with a payload is answered OK
})


def crc(data: bytes) -> int:
    """§2: CRC-16/CCITT-FALSE; the document names binascii.crc_hqx(data, 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def frame(command: int, seq: int, status: int, payload: bytes) -> bytes:
    body = HEAD.pack(1, command, seq, status, len(payload)) + payload
    return SOF + body + crc(body).to_bytes(2, "big")


class DocCamera:
    """One camera on a pty: ``port`` is the slave path the driver opens."""

    def __init__(self, *, id_code: str = "DOC0001", firmware: str = "doc-1.0",
                 password: bytes = b"doc-pass", officer_id: str = "054321",
                 officer_name: str = "王警官", unit_code: str = "310101000000",
                 unit_name: str = "上海市黄浦区执法大队", clock_offset_s: float = 0.0,
                 storage: Path | None = None, mount_root: Path | None = None,
                 violations: frozenset[str] = frozenset(), slow_s: float = 0.0) -> None:
        unknown = violations - VIOLATIONS
        if unknown:
            raise ValueError(f"unknown violations: {sorted(unknown)}")
        self.id_code = id_code
        self.firmware = firmware
        self.password = password
        self.zfy = {"serial": id_code, "officer_id": officer_id, "officer_name": officer_name,
                    "unit_code": unit_code, "unit_name": unit_name}
        self.offset_s = clock_offset_s
        self.storage = storage
        self.mount_root = mount_root
        self.violations = violations
        self.slow_s = slow_s
        self.resolution = (1280, 720, 25)
        self.battery: int = 64
        self.charge: int | None = 0x01  # charging
        # Scenario switches.
        self.noise: list[bytes] = []
        self.lose: dict[int, int] = {}
        self.busy = 0
        self.clock_raw_ms: int | None = None
        self.drop_port_on_msdc = False
        self.mount_on_msdc = True
        # What happened: (monotonic time, command, seq, payload) per request.
        self.log: list[tuple[float, int, int, bytes]] = []
        self.logged_in = False
        self.failures = 0
        self.mounted: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._master = self._slave = -1
        self.port = ""
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> DocCamera:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes as sent
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="doccam")
        self._thread.start()
        return self

    def close(self) -> None:
        """Unplugged: the pty goes away."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def commands(self, code: int | None = None) -> list[tuple[float, int, int, bytes]]:
        with self._lock:
            return [entry for entry in self.log if code is None or entry[1] == code]

    def clock_ms(self) -> int:
        with self._lock:
            if self.clock_raw_ms is not None:
                return self.clock_raw_ms
            return round((time.time() + self.offset_s) * 1000)

    # --- the wire ---------------------------------------------------------------------------

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            if not ready:
                continue
            try:
                buf += os.read(self._master, 4096)
            except OSError:
                return
            for request in self._frames(buf):
                self._answer(*request)

    def _frames(self, buf: bytearray) -> list[tuple[int, int, int, bytes]]:
        """§2: skip to A5 5A; drop a bad frame from its SOF; resume at the next A5 5A."""
        found = []
        while True:
            start = buf.find(SOF)
            if start < 0:
                del buf[:max(0, len(buf) - 1)]
                return found
            del buf[:start]
            if len(buf) < 2 + HEAD.size:
                return found
            version, command, seq, status, length = HEAD.unpack_from(buf, 2)
            if version != 1 or length > LIMIT:
                del buf[:2]
                continue
            end = 2 + HEAD.size + length + 2
            if len(buf) < end:
                # §2: a complete good frame at a later A5 5A wins over this incomplete one.
                later = self._later_frame(buf)
                if later is None:
                    return found
                del buf[:later]
                continue
            good = int.from_bytes(buf[end - 2:end], "big") == crc(bytes(buf[2:end - 2]))
            payload = bytes(buf[2 + HEAD.size:end - 2])
            if good or "answers-damaged" in self.violations:
                found.append((command, seq, status, payload))
                del buf[:end]
            else:
                del buf[:2]  # §2: a camera drops a damaged request silently

    @staticmethod
    def _later_frame(buf: bytearray) -> int | None:
        at = buf.find(SOF, 1)
        while at >= 0 and at + 2 + HEAD.size <= len(buf):
            version, _c, _s, _t, length = HEAD.unpack_from(buf, at + 2)
            end = at + 2 + HEAD.size + length + 2
            if (version == 1 and length <= LIMIT and end <= len(buf)
                    and int.from_bytes(buf[end - 2:end], "big") == crc(bytes(buf[at + 2:
                                                                             end - 2]))):
                return at
            at = buf.find(SOF, at + 1)
        return None

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except OSError:
                return
            view = view[written:]

    def _answer(self, command: int, seq: int, status_byte: int, payload: bytes) -> None:
        with self._lock:
            self.log.append((time.monotonic(), command, seq, payload))
        if command & 0x80:
            return  # a response is never a request
        if self.busy > 0:
            self.busy -= 1
            status, data = BUSY, b""
        elif status_byte != 0 and "status-byte-ignored" not in self.violations:
            status, data = BAD_PAYLOAD, b""
        else:
            status, data = self._execute(command, payload)
        if command == SYNC_DEV_TIME and "slow-sync" in self.violations:
            time.sleep(self.slow_s)
        if self.lose.get(command, 0) > 0:
            self.lose[command] -= 1
        else:
            prefix = self.noise.pop(0) if self.noise else b""
            self._send(prefix + frame(command | 0x80, seq, status, data))
        if command == INIT_DEVICE and status == OK and "speaks-unasked" in self.violations:
            time.sleep(0.05)
            self._send(frame(0x80 | GET_DEV_TIME, 0, OK, struct.pack(">q", self.clock_ms())))
        if command == SET_MSDC and status == OK and self.drop_port_on_msdc:
            time.sleep(0.05)  # the answer leaves before the interface does
            self._stop.set()
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._master = self._slave = -1

    # --- §3, §4: the commands ---------------------------------------------------------------

    def _execute(self, command: int, payload: bytes) -> tuple[int, bytes]:
        known = {INIT_DEVICE, GET_ID_CODE, GET_ZFY_INFO, WRITE_ZFY_INFO, GET_DEV_TIME,
                 SYNC_DEV_TIME, READ_RESOLUTION, READ_BATTERY, SET_MSDC}
        if command not in known:
            if not self.logged_in and "unknown-needs-login" in self.violations:
                return NOT_AUTHENTICATED, b""
            return UNKNOWN_COMMAND, b""
        if command == INIT_DEVICE:
            return self._login(payload), b""
        if not self.logged_in:
            return NOT_AUTHENTICATED, b""
        if command in EMPTY_PAYLOAD and payload and "payload-ignored" not in self.violations:
            return BAD_PAYLOAD, b""
        if command == GET_ID_CODE:
            return OK, self.id_code.encode("ascii") + self.firmware.encode("ascii")
        if command == GET_ZFY_INFO:
            return OK, self._zfy_bytes()
        if command == WRITE_ZFY_INFO:
            return self._write_zfy(payload), b""
        if command == GET_DEV_TIME:
            return OK, struct.pack(">q", self.clock_ms())
        if command == SYNC_DEV_TIME:
            if len(payload) != 8:
                return BAD_PAYLOAD, b""
            before = self.clock_ms()
            new = struct.unpack(">q", payload)[0]
            with self._lock:
                self.clock_raw_ms = None
                self.offset_s = new / 1000 - time.time()
            answer = new if "sync-answers-new-time" in self.violations else before
            return OK, struct.pack(">q", answer)
        if command == READ_RESOLUTION:
            return OK, struct.pack(">HHB", *self.resolution)
        if command == READ_BATTERY:
            percent = 150 if "battery-over-100" in self.violations else self.battery
            return OK, bytes([percent]) + (b"" if self.charge is None else bytes([self.charge]))
        return self._switch(), b""

    def _login(self, password: bytes) -> int:
        if len(password) > 32:
            return BAD_PAYLOAD
        if self.failures >= 5:
            return LOCKED
        if password != self.password:
            self.failures += 1
            self.logged_in = False
            return AUTH_FAILED
        if "no-failure-reset" not in self.violations:
            self.failures = 0
        self.logged_in = True
        return OK

    def _zfy_bytes(self) -> bytes:
        out = bytearray(ZFY_LEN)
        for name, (offset, size) in ZFY.items():
            raw = b""
            for char in self.zfy[name]:  # §4: cut at the last whole character that fits
                if len(raw) + len(char.encode("gbk")) > size:
                    break
                raw += char.encode("gbk")
            out[offset:offset + len(raw)] = raw
        return bytes(out)

    def _write_zfy(self, payload: bytes) -> int:
        if len(payload) != ZFY_LEN:
            return BAD_PAYLOAD
        fields = {}
        for name, (offset, size) in ZFY.items():
            raw = payload[offset:offset + size].split(b"\0", 1)[0].rstrip(b" ")
            try:
                fields[name] = raw.decode("gbk")
            except UnicodeDecodeError:
                return BAD_PAYLOAD
        digits = ("officer_id", "unit_code")
        if "zfy-accepts-letters" not in self.violations and not all(
                fields[name].isascii() and (fields[name].isdigit() or not fields[name])
                for name in digits):
            return BAD_PAYLOAD
        if fields["serial"] not in ("", self.id_code):
            return BAD_PAYLOAD
        fields["serial"] = self.id_code
        self.zfy = fields
        return OK

    def _switch(self) -> int:
        """§8: the storage appears under the mount root, in one step."""
        if self.mounted is not None or not self.mount_on_msdc:
            return OK
        if self.storage is None or self.mount_root is None:
            return OK
        target = self.mount_root / self.id_code
        os.rename(self.storage, target)
        self.mounted = target
        return OK
