"""The gat947 driver: the wire codec, a camera on a real pseudo-terminal (the simulator),
mass storage after SetMSDC, and a whole dock through the Station.

Every camera here is a Gat947Sim on a real pty holding real OpenCV clips made by
make_camera; only the USB hardware is simulated.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import drivers
from agent.config import Config
from agent.custody import dsse
from agent.custody.keys import keyid_of, load_certificate
from agent.errors import ConfigError, DeviceError, DeviceGoneError
from agent.timeutil import parse_rfc3339, rfc3339
from drivers import gat947
from drivers.gat947 import Gat947Config, Gat947Detector, Gat947Device
from drivers.gat947_sim import Gat947Sim
from drivers.gat947_wire import (
    TIME,
    Charge,
    Command,
    Frame,
    FrameError,
    FrameParser,
    ZfyInfo,
    crc16_ccitt,
    decode,
    encode,
)
from drivers.simcam import GAP_S, make_camera
from tests.support.detectors import DockEvents
from tests.support.stations import running_station

PASSWORD = "Zfy#2024-dock"
OFFICER = "张警官"
UNIT = "北京市朝阳区城管执法大队"
UNIT_CODE = "110105000000"
OFFICER_ID = "012345"
SERIAL = "ZFY0042"
START = datetime(2024, 5, 6, 1, 2, 3, tzinfo=UTC)
CLIP_S = 0.5
WAIT_S = 10.0  # upper bound for the polling detector; the tests do not depend on its speed


class Rig:
    """A station directory: a mount root, a password file, simulated cameras on ptys."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.mount_root = tmp_path / "mnt"
        self.mount_root.mkdir()
        self.password_file = tmp_path / "camera.password"
        self.password_file.write_text(PASSWORD + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        self.sims: list[Gat947Sim] = []

    def camera(self, *, clips: int = 3, clock_offset_s: float = 0.0,
               **sim_options: Any) -> Gat947Sim:
        cam = make_camera(self.tmp / "internal", serial=SERIAL, officer_id=OFFICER_ID,
                          officer_name=OFFICER, unit_code=UNIT_CODE, unit_name=UNIT,
                          clips=clips, seconds=CLIP_S, width=160, height=120, fps=10.0,
                          start=START, clock_offset_s=clock_offset_s)
        sim = Gat947Sim.from_simcam(cam, self.mount_root, password=PASSWORD,
                                    **sim_options).start()
        self.sims.append(sim)
        return sim

    def config(self, sim: Gat947Sim, **overrides: Any) -> Gat947Config:
        values: dict[str, Any] = {
            "mount_root": self.mount_root, "ports": [sim.port],
            "password_file": self.password_file, "catalog_key": "simulated",
            "require_mount": False, "command_timeout_s": 0.2, "retries": 2,
            "mount_timeout_s": 3.0, "scan_interval_s": 0.05,
        }
        values.update(overrides)
        return Gat947Config(**values)

    def device(self, sim: Gat947Sim, **overrides: Any) -> Gat947Device:
        devices = Gat947Detector(self.config(sim, **overrides)).scan()
        assert len(devices) == 1
        device = devices[0]
        assert isinstance(device, Gat947Device)
        return device


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    for sim in r.sims:
        sim.close()


def _expected_clips() -> list[tuple[str, bool]]:
    """(recorded start, important) of make_camera's clips 1..3, in order (names hold seconds)."""
    starts = [START + timedelta(seconds=(k - 1) * (CLIP_S + GAP_S)) for k in (1, 2, 3)]
    return [(rfc3339(s.replace(microsecond=0)), k == 3) for k, s in enumerate(starts, 1)]


def _sent(sim: Gat947Sim, command: Command) -> list[Frame]:
    return [f for f in sim.requests if f.command == command]


# --- the codec: bytes ------------------------------------------------------------------------

def _crc_bit_by_bit(data: bytes) -> int:
    """CRC-16/CCITT-FALSE written from its definition (docs/GAT947.md §2), one bit at a time."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc_is_ccitt_false() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1  # the catalogued check value
    rng = random.Random(947)
    for size in (0, 1, 2, 89, 1024):
        data = bytes(rng.randrange(256) for _ in range(size))
        assert crc16_ccitt(data) == _crc_bit_by_bit(data)  # an independent implementation


def test_frames_encode_to_the_documented_bytes_and_back() -> None:
    request = encode(Frame(Command.GET_ZFY_INFO, 7))
    assert request == bytes.fromhex("a55a 01 03 07 00 0000 f44f")  # docs/GAT947.md §2 example
    payload = OFFICER.encode("gbk") + b"\x00\x01"
    response = Frame(Command.GET_ZFY_INFO | 0x80, 7, 0, payload)
    wire = encode(response)
    assert wire[:8] == bytes.fromhex("a55a 01 83 07 00 0008")  # big-endian length
    assert wire[8:-2] == payload
    assert wire[-2:] == binascii.crc_hqx(wire[2:-2], 0xFFFF).to_bytes(2, "big")
    assert decode(wire) == response

    # A stream: leading noise, two frames, delivered one byte at a time.
    parser = FrameParser()
    frames = []
    for byte in b"\x00\xa5\x13" + request + wire:
        parser.feed(bytes([byte]))
        frame = parser.next()
        if frame is not None:
            frames.append(frame)
    assert frames == [Frame(Command.GET_ZFY_INFO, 7), response]
    assert parser.pending == 0


def test_damaged_frames_are_rejected() -> None:
    good = encode(Frame(Command.SYNC_DEV_TIME | 0x80, 200, 0, TIME.pack(1_715_000_000_000)))
    for i in range(2, len(good)):
        damaged = bytearray(good)
        damaged[i] ^= 0x01
        with pytest.raises(FrameError):
            decode(bytes(damaged))
    flipped = bytearray(good)
    flipped[10] ^= 0x40  # a payload byte
    with pytest.raises(FrameError, match="checksum mismatch"):
        decode(bytes(flipped))
    with pytest.raises(FrameError, match="incomplete"):
        decode(good[:-1])
    with pytest.raises(FrameError, match="1 bytes after the frame"):
        decode(good + b"\x00")
    with pytest.raises(FrameError, match="exceeds 1024"):
        decode(bytes.fromhex("a55a 01 03 07 00 ffff") + b"\x00" * 16)

    # In a stream, the damaged frame is reported and the good one behind it still parsed.
    parser = FrameParser()
    parser.feed(bytes(flipped) + good)
    with pytest.raises(FrameError, match="checksum"):
        parser.next()
    assert parser.next() == decode(good)


def test_zfy_info_is_gbk_and_nul_padded() -> None:
    info = ZfyInfo(SERIAL, OFFICER_ID, OFFICER, UNIT_CODE, UNIT)
    raw = info.encode()
    assert len(raw) == 89
    assert raw[0:7] == b"ZFY0042" and raw[7:13] == b"012345"
    assert raw[13:45] == OFFICER.encode("gbk") + b"\x00" * 26  # 3 characters, 6 bytes
    assert raw[45:57] == b"110105000000"
    assert raw[57:89] == UNIT.encode("gbk") + b"\x00" * 8
    assert ZfyInfo.decode(raw) == (info, [])

    # Text longer than its field is cut at a character boundary, never inside a GBK pair.
    long_name = dataclasses.replace(info, officer_name="张" * 17, unit_code="1" * 13).encode()
    assert long_name[13:45] == "张".encode("gbk") * 16  # 16 characters, 32 bytes
    assert long_name[45:57] == b"1" * 12
    odd_cut = dataclasses.replace(info, officer_name="A" + "张" * 16).encode()
    assert odd_cut[13:45] == b"A" + "张".encode("gbk") * 15 + b"\x00"  # 31 bytes, NUL padded
    with pytest.raises(ValueError, match="officer_name: holds a NUL"):
        dataclasses.replace(info, officer_name="a\x00b").encode()
    with pytest.raises(ValueError, match=r"unit_name: .* is not representable in GBK"):
        dataclasses.replace(info, unit_name="\U0001f600").encode()
    # Space padding (some firmware) is dropped; bytes that are not GBK are kept, flagged.
    odd = bytearray(raw)
    odd[13:45] = "李四".encode("gbk") + b" " * 28
    odd[57:89] = b"\x81\x20bad".ljust(32, b"\x00")
    decoded, bad = ZfyInfo.decode(bytes(odd))
    assert decoded.officer_name == "李四"
    assert bad == ["unit_name"] and "\ufffd" in decoded.unit_name


# --- a camera on a pty -----------------------------------------------------------------------

def test_identify_speaks_the_protocol_and_decodes_gbk(rig: Rig,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim = rig.camera(clock_offset_s=-90.0)
    device = rig.device(sim)
    info = device.identify()
    assert (info.serial, info.officer_id, info.officer_name, info.unit_code, info.unit_name) \
        == (SERIAL, OFFICER_ID, OFFICER, UNIT_CODE, UNIT)
    assert (info.driver, info.vendor, info.model, info.firmware) == \
        ("gat947", "bwc-agent", "SimCam", "simcam-1.0")
    assert info.name_pattern is not None and info.clock is not None
    assert abs(parse_rfc3339(info.clock).timestamp() - (time.time() - 90.0)) < 5.0
    assert [f.command for f in sim.requests] == [Command.INIT_DEVICE, Command.GET_ID_CODE,
                                                 Command.GET_ZFY_INFO, Command.GET_DEV_TIME,
                                                 Command.READ_BATTERY, Command.READ_RESOLUTION]
    assert info.health is not None
    assert (info.health.battery_percent, info.health.charging, info.health.resolution) == \
        (87, "charging", (1920, 1080, 30))
    assert sim.requests[0].payload == PASSWORD.encode()
    # On the wire the names were GBK, not UTF-8.
    zfy_answer = decode(sim.responses[2]).payload
    assert OFFICER.encode("gbk") in zfy_answer and UNIT.encode("gbk") in zfy_answer
    assert OFFICER.encode("utf-8") not in zfy_answer
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(Gat947Detector(rig.config(sim)).password)


def test_wrong_password_is_refused_without_showing_it(rig: Rig,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim = rig.camera()
    wrong = "Xq7-not-it"
    rig.password_file.write_text(wrong + "\n", encoding="utf-8")
    device = rig.device(sim)
    with pytest.raises(DeviceError) as refused:
        device.identify()
    assert str(refused.value) == (f"camera {sim.port} refused the password "
                                  "(check devices.gat947.password_file)")
    assert [f.command for f in sim.requests] == [Command.INIT_DEVICE]  # no blind retries
    assert wrong not in caplog.text and wrong not in str(refused.value)
    # One password per docking: asking again (a second session, a presence check, a
    # battery reading) never sends it again, so the camera's failure count stays at one.
    for _ in range(5):
        with pytest.raises(DeviceError, match="refused the password"):
            device.identify()
    assert device.present() and device.read_health() is None
    assert [f.command for f in sim.requests] == [Command.INIT_DEVICE]
    assert "does not answer" not in caplog.text
    # Docked again (a new port object): one more try each time; the fifth locks it.
    device.close(wait=True)
    for _ in range(4):
        again = Gat947Device(sim.port, rig.config(sim), password=device.client._password,
                             entry=None)
        with pytest.raises(DeviceError, match=r"refused the password|is locked"):
            again.identify()
        again.close(wait=True)
    locked = Gat947Device(sim.port, rig.config(sim), password=device.client._password,
                          entry=None)
    with pytest.raises(DeviceError, match=f"camera {sim.port} is locked after too many"):
        locked.identify()
    assert len(_sent(sim, Command.INIT_DEVICE)) == 6


def test_password_file_readable_by_others_is_refused(rig: Rig) -> None:
    sim = rig.camera()
    rig.password_file.chmod(0o640)
    with pytest.raises(ConfigError) as refused:
        Gat947Detector(rig.config(sim))
    message = str(refused.value)
    assert str(rig.password_file) in message and "mode 0640" in message
    assert "chmod 600" in message and PASSWORD not in message
    rig.password_file.chmod(0o600)
    rig.password_file.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        Gat947Detector(rig.config(sim))


def test_sync_dev_time_corrects_the_clock_and_measures_the_offset(rig: Rig) -> None:
    sim = rig.camera(clock_offset_s=-3600.0)
    device = rig.device(sim)
    offset = device.sync_clock(time.time())
    assert offset is not None and abs(offset - -3600.0) < 1.0
    assert abs(sim.clock_offset_s) < 1.0
    [sync] = _sent(sim, Command.SYNC_DEV_TIME)
    assert abs(TIME.unpack(sync.payload)[0] / 1000 - time.time()) < 5.0
    info = device.identify()
    assert info.clock is not None and abs(parse_rfc3339(info.clock).timestamp() - time.time()) < 5.0


def test_other_commands_round_trip(rig: Rig) -> None:
    sim = rig.camera()
    client = rig.device(sim).client
    assert client.read_resolution() == (1920, 1080, 30)
    sim.busy_responses = 1  # BUSY is retried
    assert client.read_battery() == (87, Charge.CHARGING)
    assert len(_sent(sim, Command.READ_BATTERY)) == 2
    client.write_zfy_info(ZfyInfo(SERIAL, "654321", "李四", UNIT_CODE, "海淀执法大队"))
    assert sim.zfy.officer_name == "李四"
    zfy = client.get_zfy_info()
    assert (zfy.officer_id, zfy.officer_name, zfy.unit_name) == ("654321", "李四", "海淀执法大队")


def test_a_corrupted_response_is_retried(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    sim = rig.camera()
    device = rig.device(sim)
    device.identify()
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # what the dock and identify logged (INFO, when a level lets it through)
    sim.corrupt_responses = 1
    zfy = device.client.get_zfy_info()
    assert zfy.officer_name == OFFICER
    first, bad, retry = _sent(sim, Command.GET_ZFY_INFO)
    assert retry.seq == bad.seq != first.seq  # a resend, not a new exchange
    with pytest.raises(FrameError, match="checksum"):
        decode(sim.responses[-2])  # what the camera really sent
    # The detail is for the debug log only; nothing above it for a retry that worked.
    [detail] = [r for r in caplog.records if "attempt 1 of 3 failed" in r.getMessage()]
    assert detail.levelno == logging.DEBUG
    assert "GetZFYInfo" in detail.getMessage() and "checksum mismatch" in detail.getMessage()
    # What this exchange logged (on this thread): other threads of the process (a camera
    # simulator, a detector) may log at the same time on a busy machine.
    assert not [r for r in caplog.records if r.levelno >= logging.INFO
                and r.name.startswith("drivers.gat947") and r.thread == threading.get_ident()]


def test_a_camera_that_stops_answering_fails_after_the_retries(rig: Rig) -> None:
    sim = rig.camera()
    device = rig.device(sim)
    device.identify()
    sim.silent = True
    with pytest.raises(DeviceError) as failed:
        device.client.get_zfy_info()
    assert type(failed.value) is DeviceError  # not "gone": the port is still there
    assert str(failed.value) == (f"camera {sim.port}: reading the officer information failed: "
                                 "the camera did not answer (3 tries, 0.2 s each); check that "
                                 "it is switched on and seated in the dock")
    assert len(_sent(sim, Command.GET_ZFY_INFO)) == 1 + 3  # identify, then 1 + 2 retries
    assert device.attached() and not device.present()


def test_an_unplugged_camera_is_gone(rig: Rig) -> None:
    sim = rig.camera()
    device = rig.device(sim)
    device.identify()
    sim.close()
    with pytest.raises(DeviceGoneError, match=f"camera {sim.port} is gone"):
        device.identify()
    with pytest.raises(DeviceGoneError, match=f"camera {sim.port} is gone"):
        device.client.get_id_code()  # never reopened: the path may name another tty later
    assert not device.attached() and not device.present()


# --- mass storage after SetMSDC --------------------------------------------------------------

def test_set_msdc_mounts_the_storage_and_lists_the_clips(rig: Rig) -> None:
    sim = rig.camera(clips=3)
    device = rig.device(sim)
    assert os.listdir(rig.mount_root) == []
    listing = device.recordings()
    assert sim.mounted == rig.mount_root / SERIAL
    recs = sorted(listing.recordings, key=lambda r: r.path)
    assert [(r.recorded_start, r.important) for r in recs] == _expected_clips()
    assert [r.name.rsplit(".", 1)[1] for r in recs] == ["MP4", "AVI", "MP4"]
    assert all(r.path.startswith("DCIM/") and r.name.startswith(f"{SERIAL}_{OFFICER_ID}_")
               for r in recs)
    assert listing.skipped == []  # the simcam identity file is not on a real camera
    for rec in recs:
        on_disk = (rig.mount_root / SERIAL / rec.path).read_bytes()
        with device.open(rec) as stream:
            assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(on_disk).digest()
        assert device.stat(rec)[0] == len(on_disk)
    assert device.recordings().recordings == listing.recordings
    assert len(_sent(sim, Command.SET_MSDC)) == 1
    assert device.storage().identify().officer_name == OFFICER  # the protocol's identity
    first = (rig.mount_root / SERIAL / recs[0].path).read_bytes()
    device.release(recs[0], sha256=hashlib.sha256(first).hexdigest())
    assert not (rig.mount_root / SERIAL / recs[0].path).exists()


def test_a_volume_that_never_appears_fails_the_dock(rig: Rig) -> None:
    sim = rig.camera()
    sim.mount_on_msdc = False
    device = rig.device(sim, mount_timeout_s=0.3)
    with pytest.raises(DeviceError) as failed:
        device.recordings()
    assert str(failed.value) == (
        f"camera {sim.port} ({SERIAL}) was switched to USB storage but its storage did not "
        f"appear under {os.path.realpath(rig.mount_root)} within 0.3 s; check the automount "
        "rule (docs/OPERATIONS.md, serial cameras)")


def test_a_camera_whose_port_leaves_with_the_switch_stays_docked(rig: Rig) -> None:
    sim = rig.camera(drop_port_on_msdc=True)
    device = rig.device(sim)
    info = device.identify()
    assert len(device.recordings().recordings) == 3
    deadline = time.monotonic() + WAIT_S
    while os.path.exists(sim.port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(sim.port)
    assert device.present() and device.attached()
    assert device.identify() == dataclasses.replace(info, clock=None)
    sim.eject()
    assert not device.attached()


# --- the detector ----------------------------------------------------------------------------

def Events() -> DockEvents:
    return DockEvents(WAIT_S)


def test_the_detector_docks_a_port_once_and_undocks_it(rig: Rig) -> None:
    sim = rig.camera()
    config = rig.config(sim)
    detector = Gat947Detector(config)
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    try:
        events.wait(lambda log: log == [("dock", sim.port)])
        docked = next(iter(events.devices.values()))
        assert detector.scan() == [docked] and detector.scan()[0] is docked
        # A second detector (``run --once`` makes new ones) gets the same device object.
        assert Gat947Detector(config).scan()[0] is docked
        docked.identify()  # the port is open now; unplugging hangs it up
        sim.close()
        events.wait(lambda log: len(log) == 2)
        assert events.log == [("dock", sim.port), ("undock", sim.port)]
        assert detector.scan() == []
    finally:
        detector.stop()


class FakePort:
    """What serial.tools.list_ports reports for a port (USB enumeration cannot run here)."""

    def __init__(self, device: str, vid: int | None, pid: int | None) -> None:
        self.device, self.vid, self.pid = device, vid, pid


def test_discovery_matches_usb_ids_to_the_catalog(rig: Rig,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sim = rig.camera()
    # The camera's pty enumerated as a Novatek camera (catalog entry gat947-generic-a),
    # beside an FTDI adapter and a built-in UART that are not cameras.
    ports = [FakePort("/dev/ttyUSB7", 0x0403, 0x6001), FakePort("/dev/ttyS0", None, None),
             FakePort(sim.port, 0x0603, 0x8612)]
    monkeypatch.setattr(gat947.list_ports, "comports", lambda: ports)
    detector = Gat947Detector(rig.config(sim, ports=[], catalog_key=None))
    assert detector.ports() == [gat947.PortInfo(sim.port, "0603:8612")]
    [device] = detector.scan()
    info = device.identify()
    assert (info.serial, info.model, info.usb_id) == \
        (SERIAL, "DSJ body camera (Novatek platform)", "0603:8612")
    # A port given by path that does not exist is not docked.
    assert Gat947Detector(rig.config(sim, ports=["/dev/does-not-exist"])).scan() == []


# --- the whole dock through the Station ------------------------------------------------------

def test_station_offloads_and_seals_a_gat947_camera(
        rig: Rig, station_config: Callable[..., Config],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # drivers/__init__.py does not list gat947 yet: register it for this test only.
    monkeypatch.setitem(drivers.REGISTRY, gat947.KEY, gat947.SPEC)
    sim = rig.camera(clips=3, clock_offset_s=-600.0)
    config = station_config(f"""
        [devices.gat947]
        ports = ["{sim.port}"]
        password_file = "{rig.password_file}"
        mount_root = "{rig.mount_root}"
        catalog_key = "simulated"
        require_mount = false
        command_timeout_s = 0.5
        mount_timeout_s = 5.0
        """)
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary
        gat_reports = [r for r in summary.reports if r.handle == sim.port]
        assert len(gat_reports) == 1
        report = gat_reports[0]
        assert (report.serial, report.officer_id, report.new, len(report.copied)) == \
            (SERIAL, OFFICER_ID, 3, 3)
        assert report.clock_offset_s is not None and abs(report.clock_offset_s + 600.0) < 5.0
        store = station.store
        assert store is not None
        rows = sorted(store.clips(), key=lambda r: r["path"])
        synced = store.query_one("SELECT body FROM custody_log WHERE kind = 'device.clock_synced'")
        # A second dock (new detectors, same port) ingests nothing twice.
        again = [r for r in station.run_once().reports if r.handle == sim.port]
        assert (again[0].new, again[0].already_ingested) == (0, 3)
    assert synced is not None and abs(json.loads(synced["body"])["offset_s"] + 600.0) < 5.0
    assert abs(sim.clock_offset_s) < 1.0  # set by the offload's SyncDevTime
    cert = load_certificate(config.data_dir / "keys" / "station.pem")
    pub = cert.public_key()
    volume = rig.mount_root / SERIAL
    expected = [(rfc3339(parse_rfc3339(s).timestamp() - 600.0), imp) for s, imp in _expected_clips()]
    assert len(rows) == 3
    for row, (start, important) in zip(rows, expected, strict=True):
        assert row["state"] == "sealed"
        assert row["sha256"] == hashlib.sha256((volume / row["path"]).read_bytes()).hexdigest()
        envelope = json.loads(row["manifest"])
        payload = dsse.verify_envelope(envelope, {keyid_of(pub): pub},  # type: ignore[arg-type, dict-item]
                                       expected_type=dsse.MANIFEST)
        manifest = json.loads(payload)
        assert manifest["device"]["serial"] == SERIAL
        assert manifest["device"]["model"] == "SimCam"
        assert manifest["officer"]["id"] == OFFICER_ID
        assert manifest["officer"]["name"] == OFFICER
        assert manifest["officer"]["unit_name"] == UNIT
        assert manifest["officer"]["unit_code"] == UNIT_CODE
        # By the camera's clock, and corrected by the offset measured at the dock.
        assert manifest["recorded"]["camera_start"] == start
        corrected = parse_rfc3339(manifest["recorded"]["start"]).timestamp()
        assert abs(corrected - (parse_rfc3339(start).timestamp() + 600.0)) < 5.0
        assert manifest["recorded"]["important"] is important
        assert "clock.skew" in manifest["flags"]
