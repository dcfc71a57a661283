"""The conformance kit: drive a camera through every rule of docs/GAT947.md and say which hold.

For vendors and integrators, before a camera (or a vendor adapter) is
deployed: ``scripts/gat947-conformance PORT --password-file F``.  Each rule
is a named check (``seq-echo``, ``damaged-request-dropped``, ...) with the
section of the document it comes from; the report prints one line per check,
PASS, FAIL (the camera does not conform), WARN (allowed, but the agent must
work around it) or SKIP (needs an option), and the exit status is 0 only if
nothing failed.

The kit reads answers leniently (a wrong CRC, version, seq or length is
recorded against its rule, and the frame still used where it can be), so one
departure does not hide the others.  It leaves the camera as it found it:
officer information written back unchanged, clock set to the true time.
Destructive checks are opt-in, one per run: ``--lockout`` (five wrong
passwords; the camera must then be power-cycled) and ``--switch`` (SetMSDC;
most cameras then leave serial mode).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import serial

from drivers.gat947_wire import (
    HEADER,
    MAX_PAYLOAD,
    PASSWORD_MAX,
    RESOLUTION,
    RESPONSE_BIT,
    SOF,
    TIME,
    VERSION,
    ZFY_SIZE,
    Charge,
    Command,
    Frame,
    Password,
    Status,
    ZfyInfo,
    crc16_ccitt,
    encode,
)

C = Command
UNKNOWN_CODE = 0x7E  # not in the command table
CLOCK_TOLERANCE_S = 2.0  # cameras keep whole seconds; an exchange takes milliseconds


@dataclass
class Answer:
    """One frame read back, checked leniently."""

    command: int
    seq: int
    status: int
    payload: bytes
    crc_ok: bool
    version: int
    latency_s: float


@dataclass
class Result:
    check: str
    section: str
    title: str
    verdict: str  # PASS, FAIL, WARN, SKIP
    detail: str = ""

    def line(self) -> str:
        text = f"{self.verdict:<5} {self.section:<4} {self.check}: {self.title}"
        return text + (f" ({self.detail})" if self.detail else "")


@dataclass
class Kit:
    """One run against one port."""

    port: str
    password: Password
    timeout_s: float = 1.0
    baudrate: int = 115200
    lockout: bool = False
    switch: bool = False
    mount_root: Path | None = None
    mount_timeout_s: float = 20.0
    results: list[Result] = field(default_factory=list)
    _seq: int = 0
    _ser: serial.Serial | None = None
    _framing: dict[str, str] = field(default_factory=dict)  # rule -> first departure seen
    _slowest: tuple[float, str] = (0.0, "")
    _unasked: int = 0

    # --- running ----------------------------------------------------------------------------

    def run(self) -> list[Result]:
        self._ser = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s,
                                  write_timeout=self.timeout_s, exclusive=True)
        try:
            for step in (self._link, self._sessions, self._requests, self._commands,
                         self._zfy, self._clock, self._battery, self._lockout, self._switch):
                step()
            self._framing_results()
        finally:
            self._ser.close()
        return self.results

    def _result(self, check: str, section: str, title: str, ok: bool | None,
                detail: str = "", *, warn: bool = False) -> None:
        verdict = "SKIP" if ok is None else "PASS" if ok else "WARN" if warn else "FAIL"
        self.results.append(Result(check, section, title, verdict, "" if ok else detail))

    # --- the wire ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq % 250) + 1
        return self._seq

    def _write(self, data: bytes) -> None:
        assert self._ser is not None
        self._ser.reset_input_buffer()
        self._ser.write(data)

    def _read(self, until: Callable[[list[Answer]], bool], wait_s: float) -> list[Answer]:
        """Frames arriving within ``wait_s`` (or until ``until`` holds), read leniently."""
        assert self._ser is not None
        start = time.monotonic()
        deadline = start + wait_s
        buf = bytearray()
        answers: list[Answer] = []
        while time.monotonic() < deadline and not until(answers):
            self._ser.timeout = max(0.001, deadline - time.monotonic())
            buf += self._ser.read(max(1, self._ser.in_waiting))
            answers += self._cut(buf, time.monotonic() - start)
        return answers

    def _cut(self, buf: bytearray, elapsed: float) -> list[Answer]:
        found: list[Answer] = []
        while True:
            at = buf.find(SOF)
            if at < 0:
                del buf[:max(0, len(buf) - 1)]
                return found
            del buf[:at]
            if len(buf) < HEADER.size:
                return found
            _sof, version, command, seq, status, length = HEADER.unpack_from(buf)
            if length > MAX_PAYLOAD:
                self._framing.setdefault("length", f"an answer claims {length} payload bytes; "
                                         "is the length big-endian?")
                del buf[:2]
                continue
            end = HEADER.size + length + 2
            if len(buf) < end:
                return found
            crc_ok = int.from_bytes(buf[end - 2:end], "big") == crc16_ccitt(bytes(buf[2:end - 2]))
            found.append(Answer(command, seq, status, bytes(buf[HEADER.size:end - 2]), crc_ok,
                                version, elapsed))
            del buf[:end]

    def _ask(self, command: int, payload: bytes = b"", *, status: int = 0,
             seq: int | None = None, raw: bytes | None = None) -> Answer | None:
        """Send one request; its answer (matched by command, leniently by seq) or None."""
        seq = self._next_seq() if seq is None else seq
        self._write(raw if raw is not None else encode(Frame(command, seq, status, payload)))
        want = command | RESPONSE_BIT
        # Twice the timeout: a late answer is still seen, and timed against the rule.
        answers = self._read(lambda got: any(a.command == want for a in got),
                             2 * self.timeout_s)
        mine = [a for a in answers if a.command == want]
        if not mine:
            return None
        answer = mine[0]
        if answer.latency_s > self._slowest[0]:
            self._slowest = (answer.latency_s, f"command 0x{command:02x}")
        if not answer.crc_ok:
            self._framing.setdefault("crc", f"answer to command 0x{command:02x} has a wrong "
                                     "CRC-16/CCITT-FALSE")
        if answer.version != VERSION:
            self._framing.setdefault("version", f"answer has version {answer.version}")
        if answer.seq != seq:
            self._framing.setdefault("seq", f"sent seq {seq}, the answer has {answer.seq}")
        return answer

    def _login(self) -> bool:
        answer = self._ask(C.INIT_DEVICE, self.password.reveal())
        return answer is not None and answer.status == Status.OK

    def _status(self, answer: Answer | None) -> str:
        if answer is None:
            return "no answer"
        try:
            return Status(answer.status).name
        except ValueError:
            return f"status {answer.status}"

    def _expect(self, check: str, section: str, title: str, answer: Answer | None,
                status: Status) -> None:
        ok = answer is not None and answer.status == status
        self._result(check, section, title, ok, f"got {self._status(answer)}")

    # --- §1, §2: link and frames ------------------------------------------------------------

    def _idle(self) -> None:
        self._unasked += len(self._read(bool, self.timeout_s))

    def _link(self) -> None:
        self._idle()
        answer = self._ask(C.GET_ID_CODE)
        self._result("answers", "§2", "a well-formed request is answered", answer is not None,
                     f"no answer within {self.timeout_s:g} s")
        seq = self._next_seq()
        request = encode(Frame(C.GET_ID_CODE, seq))
        self._write(b"\x00\x13\xa5\xff" + request)
        got = self._read(lambda a: any(x.seq == seq for x in a), self.timeout_s)
        self._result("noise-skipped", "§2", "bytes before A5 5A are skipped", bool(got),
                     "the request after the noise was not answered")
        seq = self._next_seq()
        request = encode(Frame(C.GET_ID_CODE, seq))
        assert self._ser is not None
        self._ser.reset_input_buffer()
        for piece in (request[:3], request[3:7], request[7:]):
            self._ser.write(piece)
            time.sleep(0.03)
        got = self._read(lambda a: any(x.seq == seq for x in a), self.timeout_s)
        self._result("split-request", "§2", "a request arriving in pieces is answered",
                     bool(got), "no answer")
        for check, title, damage in (
                ("damaged-request-dropped", "a request with a wrong CRC is not answered",
                 lambda b: b[:-1] + bytes([b[-1] ^ 0x55])),
                ("version-dropped", "a request with another protocol version is not answered",
                 lambda b: b[:2] + bytes([0x02]) + b[3:])):
            self._write(damage(encode(Frame(C.GET_ID_CODE, self._next_seq()))))
            got = self._read(bool, self.timeout_s)
            self._result(check, "§2", title, not got, f"it was answered ({len(got)} frame(s))")
        seq = self._next_seq()
        fake = HEADER.pack(SOF, VERSION, C.GET_ID_CODE, seq, 0, MAX_PAYLOAD + 1)
        self._write(fake + encode(Frame(C.GET_ID_CODE, seq)))
        got = self._read(bool, self.timeout_s)
        self._result("resync-after-bad-length", "§2", "after a header claiming more than 1024 "
                     "bytes, the next A5 5A is parsed", len(got) == 1,
                     f"{len(got)} answer(s) to one good request")
        seq = self._next_seq()
        fake = HEADER.pack(SOF, VERSION, C.GET_ID_CODE, seq, 0, 200)
        self._write(fake + encode(Frame(C.GET_ID_CODE, seq)))
        got = self._read(bool, self.timeout_s)
        self._result("resync-after-fake-header", "§2", "a complete request behind a header "
                     "claiming a long payload is answered", len(got) == 1,
                     f"{len(got)} answer(s) within {self.timeout_s:g} s")
        self._flush()

    def _flush(self) -> None:
        """Fill whatever frame a camera that does not resynchronise still waits for."""
        assert self._ser is not None
        self._ser.write(bytes(MAX_PAYLOAD + HEADER.size + 2))
        self._read(lambda _got: False, self.timeout_s / 2)

    def _framing_results(self) -> None:
        for check, rule, title in (
                ("crc", "crc", "answers carry a correct CRC-16/CCITT-FALSE (not over the SOF)"),
                ("answer-version", "version", "answers carry protocol version 01"),
                ("seq-echo", "seq", "answers echo the request's seq"),
                ("big-endian-length", "length", "answer lengths are big-endian, at most 1024")):
            self._result(check, "§2", title, rule not in self._framing,
                         self._framing.get(rule, ""))
        self._result("answer-time", "§6", f"every answer completes within {self.timeout_s:g} s",
                     self._slowest[0] <= self.timeout_s,
                     f"{self._slowest[1]} took {self._slowest[0]:.3f} s")
        self._result("silent-when-idle", "§1", "the camera never speaks unasked",
                     not self._unasked, f"{self._unasked} frame(s) arrived unasked")

    # --- §3, §5: sessions, the password -----------------------------------------------------

    def _sessions(self) -> None:
        # A wrong password first: it ends any session left from an earlier program (a
        # camera may not see a port being closed, docs §3).
        wrong = (self.password.reveal() + b"-not-it")[-PASSWORD_MAX:]
        self._expect("wrong-password", "§3", "a wrong password answers AUTH_FAILED",
                     self._ask(C.INIT_DEVICE, wrong), Status.AUTH_FAILED)
        self._expect("login-first", "§3", "commands before InitDevice answer NOT_AUTHENTICATED",
                     self._ask(C.GET_ZFY_INFO), Status.NOT_AUTHENTICATED)
        self._expect("unknown-command", "§5", "an unknown command answers UNKNOWN_COMMAND, "
                     "logged in or not", self._ask(UNKNOWN_CODE), Status.UNKNOWN_COMMAND)
        self._expect("long-password", "§3", f"a password longer than {PASSWORD_MAX} bytes "
                     "answers BAD_PAYLOAD", self._ask(C.INIT_DEVICE, b"x" * (PASSWORD_MAX + 1)),
                     Status.BAD_PAYLOAD)
        answer = self._ask(C.INIT_DEVICE, self.password.reveal())
        self._expect("login", "§3", "the right password answers OK", answer, Status.OK)
        if answer is None or answer.status != Status.OK:
            return
        # Four wrong, one right, four wrong, one right: with the count reset by the right
        # password the camera never reaches five in a row.
        statuses = []
        for attempt in (wrong,) * 4 + (self.password.reveal(),) + (wrong,) * 4 + (
                self.password.reveal(),):
            statuses.append(self._status(self._ask(C.INIT_DEVICE, attempt)))
        self._result("right-password-resets", "§3", "a right password resets the count of "
                     "wrong ones", statuses[4] == statuses[9] == "OK",
                     "after 4 + 4 wrong passwords with a right one between: "
                     + ", ".join(statuses))
        self._expect("unknown-command-logged-in", "§5", "an unknown command answers "
                     "UNKNOWN_COMMAND when logged in", self._ask(UNKNOWN_CODE),
                     Status.UNKNOWN_COMMAND)

    # --- §4, §5: requests -------------------------------------------------------------------

    def _requests(self) -> None:
        if not self._login():
            self._result("requests", "§4", "request rules (needs a login)", None,
                         "login failed")
            return
        self._idle()  # after a login too
        self._expect("status-byte", "§5", "a request with a non-zero status byte answers "
                     "BAD_PAYLOAD", self._ask(C.GET_ID_CODE, status=0x01), Status.BAD_PAYLOAD)
        self._expect("empty-payload", "§4", "a payload where none is expected answers "
                     "BAD_PAYLOAD", self._ask(C.GET_ID_CODE, b"\x00"), Status.BAD_PAYLOAD)
        seq = self._next_seq()
        first = self._ask(C.GET_ZFY_INFO, seq=seq)
        again = self._ask(C.GET_ZFY_INFO, seq=seq)
        self._result("same-seq-answered", "§4", "a resent request (same seq) is answered "
                     "again, the same", first is not None and again is not None
                     and first.payload == again.payload, "the resend got a different answer "
                     "or none")

    def _commands(self) -> None:
        answer = self._ask(C.GET_ID_CODE)
        ok = (answer is not None and answer.status == Status.OK
              and 7 <= len(answer.payload) <= 7 + 32
              and all(0x21 <= b <= 0x7E for b in answer.payload[:7])
              and all(0x20 <= b <= 0x7E for b in answer.payload[7:]))
        self._result("id-code", "§4", "GetIDCode answers a 7-character ID code and an ASCII "
                     "firmware version of at most 32 bytes", ok,
                     f"got {self._status(answer)}, {answer.payload!r}" if answer else "no answer")
        answer = self._ask(C.READ_RESOLUTION)
        ok = answer is not None and answer.status == Status.OK and len(
            answer.payload) == RESOLUTION.size
        detail = f"got {self._status(answer)}"
        if ok and answer is not None:
            width, height, fps = RESOLUTION.unpack(answer.payload)
            ok = width > 0 and height > 0 and 0 < fps <= 240
            detail = f"{width}x{height} at {fps} fps"
        self._result("resolution", "§4", "ReadDeviceResolution answers width, height, fps", ok,
                     detail)

    def _zfy(self) -> None:
        answer = self._ask(C.GET_ZFY_INFO)
        if answer is None or answer.status != Status.OK or len(answer.payload) != ZFY_SIZE:
            self._result("zfy-info", "§4", "GetZFYInfo answers 89 bytes of ZFY_INFO", False,
                         f"got {self._status(answer)}"
                         + (f", {len(answer.payload)} bytes" if answer else ""))
            return
        raw = answer.payload
        info, bad = ZfyInfo.decode(raw)
        self._result("zfy-info", "§4", "GetZFYInfo answers 89 bytes of GBK fields", not bad,
                     f"not valid GBK: {', '.join(bad)}")
        id_answer = self._ask(C.GET_ID_CODE)
        id_code = id_answer.payload[:7].decode("ascii", "replace") if id_answer else ""
        self._result("zfy-serial", "§4", "the ZFY_INFO serial is the ID code",
                     info.serial == id_code, f"{info.serial!r} and {id_code!r}", warn=True)
        checks = [
            ("zfy-write", "WriteZFYInfo of the same officer information answers OK", raw,
             Status.OK),
            ("zfy-refuses-length", "WriteZFYInfo of 88 bytes answers BAD_PAYLOAD", raw[:-1],
             Status.BAD_PAYLOAD),
            ("zfy-refuses-letters", "WriteZFYInfo with letters in the officer number answers "
             "BAD_PAYLOAD", raw[:7] + b"12AB56" + raw[13:], Status.BAD_PAYLOAD),
            ("zfy-refuses-bad-gbk", "WriteZFYInfo with a name that is not GBK answers "
             "BAD_PAYLOAD", raw[:13] + b"\x81\x20".ljust(32, b"\0") + raw[45:],
             Status.BAD_PAYLOAD),
            ("zfy-refuses-serial", "WriteZFYInfo with another device serial answers "
             "BAD_PAYLOAD", b"ZZZ9999" + raw[7:], Status.BAD_PAYLOAD),
        ]
        for check, title, payload, status in checks:
            self._expect(check, "§4", title, self._ask(C.WRITE_ZFY_INFO, payload), status)
        after = self._ask(C.GET_ZFY_INFO)
        self._result("zfy-unchanged", "§4", "refused writes change nothing",
                     after is not None and after.payload == raw,
                     "the officer information changed")
        if after is not None and after.payload != raw:
            self._ask(C.WRITE_ZFY_INFO, raw)  # put it back

    # --- §4: the clock ----------------------------------------------------------------------

    def _camera_time(self) -> float | None:
        answer = self._ask(C.GET_DEV_TIME)
        if answer is None or answer.status != Status.OK or len(answer.payload) != TIME.size:
            return None
        return int(TIME.unpack(answer.payload)[0]) / 1000

    def _set(self, when: float) -> float | None:
        answer = self._ask(C.SYNC_DEV_TIME, TIME.pack(round(when * 1000)))
        if answer is None or answer.status != Status.OK or len(answer.payload) != TIME.size:
            return None
        return int(TIME.unpack(answer.payload)[0]) / 1000

    def _clock(self) -> None:
        before = self._camera_time()
        self._result("get-dev-time", "§4", "GetDevTime answers an int64 of milliseconds",
                     before is not None, "no valid answer")
        self._expect("sync-refuses-short", "§4", "SyncDevTime with 4 bytes answers BAD_PAYLOAD",
                     self._ask(C.SYNC_DEV_TIME, b"\x00" * 4), Status.BAD_PAYLOAD)
        ahead = time.time() + 100.0
        old = self._set(ahead)
        self._result("sync-answers-old-clock", "§4", "SyncDevTime answers the clock before the "
                     "set", old is not None and before is not None
                     and abs(old - before) <= CLOCK_TOLERANCE_S,
                     f"read {before}, SyncDevTime answered {old}")
        read = self._camera_time()
        self._result("sync-sets-clock", "§4", "the clock reads the time set",
                     read is not None and abs(read - (time.time() + 100.0)) <= CLOCK_TOLERANCE_S,
                     f"set {ahead:.3f}, read {read}")
        seq = self._next_seq()
        now = time.time()
        self._ask(C.SYNC_DEV_TIME, TIME.pack(round(now * 1000)), seq=seq)
        later = time.time()
        self._ask(C.SYNC_DEV_TIME, TIME.pack(round(later * 1000)), seq=seq)  # a resend
        read = self._camera_time()
        self._result("sync-resend", "§4", "a resent SyncDevTime (same seq, later time) sets the "
                     "later time", read is not None and abs(read - time.time())
                     <= CLOCK_TOLERANCE_S, f"read {read}, true {time.time():.3f}")

    # --- §4: the battery --------------------------------------------------------------------

    def _battery(self) -> None:
        answer = self._ask(C.READ_BATTERY)
        if answer is None or answer.status != Status.OK or not 1 <= len(answer.payload) <= 2:
            self._result("battery", "§4", "ReadDeviceBatteryDumpEnergy answers a percentage",
                         False, f"got {self._status(answer)}")
            return
        percent = answer.payload[0]
        self._result("battery", "§4", "the battery is 0-100 % or FF (unknown)",
                     percent <= 100 or percent == 0xFF, f"answered {percent}")
        if len(answer.payload) == 1:
            self._result("charge-state", "§4", "the battery answer says whether it charges",
                         False, "one byte: charging cannot be told", warn=True)
            return
        known = {int(c) for c in Charge}
        self._result("charge-state", "§4", "the charge state is 00, 01, 02 or FF",
                     answer.payload[1] in known, f"answered {answer.payload[1]}")

    # --- destructive, opt-in ----------------------------------------------------------------

    def _lockout(self) -> None:
        title = "five wrong passwords in a row lock the camera (LOCKED)"
        if not self.lockout:
            self._result("lockout", "§3", title + "; give --lockout, then power-cycle", None)
            return
        wrong = (self.password.reveal() + b"-not-it")[-PASSWORD_MAX:]
        statuses = [self._status(self._ask(C.INIT_DEVICE, wrong)) for _ in range(5)]
        locked = self._ask(C.INIT_DEVICE, self.password.reveal())
        self._result("lockout", "§3", title, statuses == ["AUTH_FAILED"] * 5
                     and locked is not None and locked.status == Status.LOCKED,
                     ", ".join(statuses) + f", then the right one: {self._status(locked)}")

    def _switch(self) -> None:
        title = "SetMSDC answers OK and the storage appears"
        if not self.switch:
            self._result("set-msdc", "§8", title + "; give --switch", None)
            return
        if not self._login():
            self._result("set-msdc", "§8", title, False, "login failed")
            return
        before = set(os.listdir(self.mount_root)) if self.mount_root else set()
        answer = self._ask(C.SET_MSDC)
        self._expect("set-msdc", "§8", "SetMSDC answers OK", answer, Status.OK)
        if self.mount_root is None:
            return
        deadline = time.monotonic() + self.mount_timeout_s
        new: set[str] = set()
        while time.monotonic() < deadline and not new:
            new = set(os.listdir(self.mount_root)) - before
            time.sleep(0.05)
        self._result("storage-appears", "§8", f"the storage appears under {self.mount_root} "
                     f"within {self.mount_timeout_s:g} s", bool(new), "nothing appeared")


def report(port: str, results: list[Result]) -> str:
    """The printed report: one line per check, then the counts."""
    lines = [f"gat947 conformance of {port} (docs/GAT947.md, protocol version {VERSION})"]
    lines += ["  " + r.line() for r in results]
    count = {v: sum(1 for r in results if r.verdict == v) for v in ("PASS", "FAIL", "WARN",
                                                                     "SKIP")}
    lines.append(f"{count['PASS']} conform, {count['FAIL']} do not, {count['WARN']} "
                 f"warning(s), {count['SKIP']} skipped")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gat947-conformance",
        description="Check a camera (or a vendor adapter) on a serial port against "
                    "docs/GAT947.md: every command, error and timing rule.  Exit status 0 "
                    "if it conforms, 1 if not, 2 for a usage error or a port that cannot be "
                    "opened.")
    parser.add_argument("port", help="serial port of the camera, e.g. /dev/ttyACM0")
    parser.add_argument("--password-file", type=Path,
                        help="file holding the camera password on its first line (mode 0600)")
    parser.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                        help="the command timeout the camera must meet (default 1.0)")
    parser.add_argument("--baudrate", type=int, default=115200)
    destructive = parser.add_mutually_exclusive_group()
    destructive.add_argument("--lockout", action="store_true",
                             help="also check the lock-out after five wrong passwords (the "
                                  "camera must be power-cycled afterwards)")
    destructive.add_argument("--switch", action="store_true",
                             help="finally send SetMSDC and check that the storage appears "
                                  "(most cameras then leave serial mode)")
    parser.add_argument("--mount-root", type=Path,
                        help="with --switch: where the automounter mounts the storage")
    parser.add_argument("--mount-timeout", type=float, default=20.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    from agent.errors import ConfigError
    from drivers.gat947_wire import read_password

    try:
        password = read_password(args.password_file)
    except ConfigError as exc:
        print(f"gat947-conformance: {exc}", file=sys.stderr)
        return 2
    kit = Kit(args.port, password, timeout_s=args.timeout, baudrate=args.baudrate,
              lockout=args.lockout, switch=args.switch, mount_root=args.mount_root,
              mount_timeout_s=args.mount_timeout)
    try:
        results = kit.run()
    except (serial.SerialException, OSError) as exc:
        print(f"gat947-conformance: cannot use {args.port}: {exc}", file=sys.stderr)
        return 2
    print(report(args.port, results))
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
