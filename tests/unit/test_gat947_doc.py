"""The driver against a camera written from docs/GAT947.md alone (tests/support/gat947_doccam.py).

The camera shares no code with the driver: if the document and the driver
drift apart, these fail.  Every camera answers on a real pseudo-terminal; the
dock runs through the real Station, store and custody log.  Each test is one
point a camera written this way found: battery, the clock set that stays
right, frame resync, one login per dock, retry timing, SetMSDC recovery,
plain messages, a clock out of range.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import devicehealth
from agent.cli import status as status_cli
from agent.config import Config
from agent.errors import DeviceError
from agent.station import Station
from agent.timeutil import parse_rfc3339
from drivers import gat947_client
from drivers.gat947 import Gat947Config, Gat947Detector, Gat947Device
from drivers.gat947_sim import Gat947Sim
from drivers.gat947_wire import ZfyInfo
from drivers.simcam import make_camera
from drivers.simulated import IDENTITY_FILE
from tests.support import gat947_doccam as doc
from tests.support.gat947_doccam import DocCamera
from tests.support.stations import running_station

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "doc-pass"
SERIAL = "DOC0001"
WAIT_S = 15.0


class Dock:
    """A station directory with a password file, a mount root and cameras on ptys."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mount_root = tmp / "mnt"
        self.mount_root.mkdir()
        self.password_file = tmp / "camera.password"
        self.set_password(PASSWORD)
        self.cameras: list[Any] = []

    def set_password(self, password: str) -> None:
        self.password_file.write_text(password + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)

    def camera(self, *, clips: int = 2, **options: Any) -> DocCamera:
        storage = make_camera(self.tmp / "internal", serial=SERIAL, officer_id="054321",
                              clips=clips, seconds=0.5, width=160, height=120, fps=10.0,
                              start=datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC))
        (storage / IDENTITY_FILE).unlink()  # a camera's storage holds recordings only
        camera = DocCamera(storage=storage, mount_root=self.mount_root, **options).start()
        self.cameras.append(camera)
        return camera

    def toml(self, port: str, **overrides: Any) -> str:
        values = {"ports": [port], "password_file": str(self.password_file),
                  "mount_root": str(self.mount_root), "catalog_key": "simulated",
                  "require_mount": False, "command_timeout_s": 0.3, "mount_timeout_s": 5.0,
                  "scan_interval_s": 0.05}
        values.update(overrides)
        return "[devices.gat947]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                              for k, v in values.items())

    def config(self, port: str, **overrides: Any) -> Gat947Config:
        values: dict[str, Any] = {
            "ports": [port], "password_file": self.password_file,
            "mount_root": self.mount_root, "catalog_key": "simulated", "require_mount": False,
            "command_timeout_s": 0.3, "mount_timeout_s": 3.0, "scan_interval_s": 0.05}
        values.update(overrides)
        return Gat947Config(**values)

    def device(self, port: str, **overrides: Any) -> Gat947Device:
        [device] = Gat947Detector(self.config(port, **overrides)).scan()
        assert isinstance(device, Gat947Device)
        return device


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    d = Dock(tmp_path)
    yield d
    for camera in d.cameras:
        camera.close()


def _events(station: Station, kind: str | None = None) -> list[dict[str, Any]]:
    assert station.store is not None
    rows = station.store.query("SELECT payload FROM outbox ORDER BY id")
    events = [json.loads(r["payload"]) for r in rows]
    return [e for e in events if kind is None or e["type"] == kind]


def _log(station: Station, kind: str) -> list[dict[str, Any]]:
    assert station.store is not None
    return [json.loads(r["body"]) for r in station.store.query(
        "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]


def _names(camera: DocCamera) -> list[int]:
    return [command for _at, command, _seq, _payload in camera.commands()]


# --- the whole dock --------------------------------------------------------------------------

def test_a_camera_written_from_the_document_is_docked_with_battery_and_a_clock_set_first(
        dock: Dock, station_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    camera = dock.camera(clock_offset_s=93.5)
    camera.battery, camera.charge = 15, 0x00  # low and not charging
    camera.drop_port_on_msdc = True  # as most cameras do
    config = station_config(dock.toml(camera.port))
    caplog.set_level(logging.INFO)
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary
        [report] = [r for r in summary.reports if r.handle == camera.port]
        assert (report.serial, len(report.copied)) == (SERIAL, 2)
        status = status_cli.collect(config, station.store)  # type: ignore[arg-type]
        docked = _events(station, "device.docked")
        alerts = {e["data"]["code"]: e["data"] for e in _events(station, "alert")}
        synced = _log(station, "device.clock_synced")
        assert station.store is not None
        manifests = [json.loads(r["manifest"]) for r in station.store.clips()]

    # One login; the clock measured, set and read back, all before the switch to storage.
    assert _names(camera) == [doc.INIT_DEVICE, doc.GET_ID_CODE, doc.GET_ZFY_INFO,
                              doc.GET_DEV_TIME, doc.READ_BATTERY, doc.READ_RESOLUTION,
                              doc.GET_DEV_TIME, doc.SYNC_DEV_TIME, doc.GET_DEV_TIME,
                              doc.SET_MSDC]
    assert abs(camera.offset_s) < 1.0
    [synced_body] = synced
    assert abs(synced_body["offset_s"] - 93.5) < 1.0
    assert abs(report.clock_offset_s - 93.5) < 1.0  # type: ignore[operator]
    for envelope in manifests:
        manifest = json.loads(base64.b64decode(envelope["payload"]))
        assert abs(manifest["device"]["clock_offset_s"] - 93.5) < 1.0
        assert "clock.skew" not in manifest["flags"]  # within media.max_clock_skew_s (300 s)
    # The serial port leaving with the switch is what most cameras do: nothing to warn of.
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING
             and r.name.startswith(("drivers.gat947", "agent.offload"))]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert "Errno" not in caplog.text

    # Battery, charging and resolution: in the status, the docked event, and alerts.
    [device] = [d for d in status["devices"] if d["serial"] == SERIAL]
    assert (device["battery_percent"], device["charging"], device["resolution"]) == \
        (15, "not_charging", {"width": 1280, "height": 720, "fps": 25})
    assert abs(parse_rfc3339(device["health_at"]).timestamp() - time.time()) < 60
    [event] = docked
    assert event["data"]["health"]["battery_percent"] == 15
    assert event["data"]["health"]["charging"] == "not_charging"
    assert alerts["device.battery_low"]["message"] == (
        f"camera {SERIAL} has 15 % battery left and it is not charging")
    assert alerts["device.not_charging"]["message"].startswith(
        f"camera {SERIAL} is docked but not charging (battery 15 %)")
    assert status_cli.battery_text(device).startswith(
        "  battery 15 % NOT CHARGING, 1280x720@25 (at ")


def test_status_command_shows_the_battery(dock: Dock, station_config: Callable[..., Config],
                                          tmp_path: Path) -> None:
    camera = dock.camera(clips=1)
    station_config(dock.toml(camera.port))
    config_file = tmp_path / "station.toml"
    once = subprocess.run([sys.executable, "-m", "agent.cli.main", "run", "--once", "--config",
                           str(config_file)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert once.returncode == 0, once.stderr
    text = subprocess.run([sys.executable, "-m", "agent.cli.main", "status", "--config",
                           str(config_file)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert re.search(rf"{SERIAL} .* battery 64 % charging, 1280x720@25 \(at \S+Z\)",
                     text.stdout), text.stdout
    as_json = subprocess.run([sys.executable, "-m", "agent.cli.main", "status", "--config",
                              str(config_file), "--json"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    [device] = json.loads(as_json.stdout)["devices"]
    assert (device["battery_percent"], device["charging"]) == (64, "charging")


def test_an_unidentified_camera_is_not_reported_as_zero_recordings(
        dock: Dock, station_config: Callable[..., Config], tmp_path: Path) -> None:
    camera = dock.camera(clips=1)
    dock.set_password("not-the-password")
    station_config(dock.toml(camera.port))
    once = subprocess.run([sys.executable, "-m", "agent.cli.main", "run", "--once", "--config",
                           str(tmp_path / "station.toml")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert once.returncode == 1
    assert f"{camera.port}: nothing read: identify failed: camera {camera.port} refused the " \
        "password (check devices.gat947.password_file)" in once.stdout
    assert "recordings" not in once.stdout
    assert _names(camera) == [doc.INIT_DEVICE]


# --- one login per dock, in daemon mode ------------------------------------------------------

def _idle(station: Station) -> None:
    """Until no dock session runs (a second session may follow the first at once)."""
    deadline = time.monotonic() + WAIT_S
    quiet_since = None
    while time.monotonic() < deadline:
        with station._active_lock:
            busy = any(not f.done() for f in station._active.values())
        if busy or not station.reports:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.02)
    raise AssertionError("the station did not settle")


@pytest.mark.parametrize("right", [False, True], ids=["wrong-password", "right-password"])
def test_one_login_per_dock_in_daemon_mode(dock: Dock, station_config: Callable[..., Config],
                                           caplog: pytest.LogCaptureFixture,
                                           right: bool) -> None:
    camera = dock.camera(clips=1)
    camera.drop_port_on_msdc = True  # as most cameras do
    if not right:
        dock.set_password("not-the-password")
    config = station_config(dock.toml(camera.port))
    caplog.set_level(logging.INFO)
    station = Station(config)
    station.start(watch=True)
    try:
        _idle(station)
        assert station.health is not None
        station.health.refresh()  # a battery reading while docked logs in no further
        unidentified = [e["data"] for e in _events(station, "alert")
                        if e["data"]["code"] == "device.unidentified"]
    finally:
        station.stop()
    assert _names(camera).count(doc.INIT_DEVICE) == 1
    assert "does not answer" not in caplog.text
    if right:
        assert unidentified == []
        assert camera.mounted is not None
        # Docked again in the same docking (the station starts a second session at start,
        # a rescan, a resume): the clock set before the switch is not "failed" then.
        noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                 and r.name.startswith(("drivers.gat947", "agent.offload"))]
        assert noisy == []
    else:
        assert unidentified and all("refused the password" in a["message"]
                                    for a in unidentified)
        assert camera.failures == 1


# --- the clock -------------------------------------------------------------------------------

def test_a_lost_sync_answer_is_resent_with_a_fresh_time_and_read_back(dock: Dock) -> None:
    camera = dock.camera(clock_offset_s=93.5)
    camera.lose[doc.SYNC_DEV_TIME] = 1
    device = dock.device(camera.port)
    offset = device.sync_clock(time.time())
    assert offset is not None and abs(offset - 93.5) < 0.5  # measured before the set
    assert abs(camera.offset_s) < 0.5  # not left slow by a resend of a time already past
    sent = [(at, struct.unpack(">q", payload)[0] / 1000)
            for at, command, _seq, payload in camera.commands(doc.SYNC_DEV_TIME)]
    assert len(sent) == 2
    (first_at, first), (again_at, again) = sent
    assert again - first == pytest.approx(again_at - first_at, abs=0.05)  # a fresh time
    assert again - first >= 0.3  # the resend came after the command timeout
    assert _names(camera)[-1] == doc.GET_DEV_TIME  # read back


def test_a_camera_that_does_not_keep_the_time_is_reported(dock: Dock) -> None:
    camera = dock.camera(clock_offset_s=-40.0)
    device = dock.device(camera.port)
    device.identify()
    camera.clock_raw_ms = 946_684_800_000  # stuck at 2000-01-01 whatever it is told
    original = camera._execute

    def stuck(command: int, payload: bytes) -> tuple[int, bytes]:
        status, data = original(command, payload)
        if command == doc.SYNC_DEV_TIME:
            camera.clock_raw_ms = 946_684_800_000
        return status, data

    camera._execute = stuck  # type: ignore[method-assign]
    with pytest.raises(DeviceError) as failed:
        device.sync_clock(time.time())
    assert re.fullmatch(rf"camera {re.escape(camera.port)}: setting the camera clock failed: "
                        r"it still reads -\d+\.\d s off after being set twice; the camera's "
                        "clock may be faulty", str(failed.value))
    assert len(camera.commands(doc.SYNC_DEV_TIME)) == 2


YEAR_10000_MS = 253_402_300_800_000
YEAR_9000_MS = 221_845_392_000_000  # a date, but corrected recording times would be none


@pytest.mark.parametrize("raw_ms", [YEAR_10000_MS, 2**63 - 1, -2**63, YEAR_9000_MS],
                         ids=["year-10000", "int64-max", "int64-min", "year-9000"])
def test_a_clock_out_of_range_is_a_clock_to_correct(dock: Dock, raw_ms: int) -> None:
    camera = dock.camera()
    camera.clock_raw_ms = raw_ms  # a dead clock battery, damaged firmware
    device = dock.device(camera.port)
    info = device.identify()
    assert info.serial == SERIAL and info.clock is None and info.flags == ("clock.invalid",)
    offset = device.sync_clock(time.time())
    assert offset == pytest.approx(raw_ms / 1000 - time.time(), rel=1e-6, abs=5)
    assert camera.clock_raw_ms is None and abs(camera.offset_s) < 1.0
    fixed = device.identify()
    assert fixed.flags == () and fixed.clock is not None


@pytest.mark.parametrize("raw_ms", [YEAR_10000_MS, YEAR_9000_MS], ids=["year-10000",
                                                                         "year-9000"])
def test_recordings_of_a_camera_with_a_dead_clock_are_flagged(
        dock: Dock, station_config: Callable[..., Config], raw_ms: int) -> None:
    camera = dock.camera()
    camera.clock_raw_ms = raw_ms
    config = station_config(dock.toml(camera.port))
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary
        assert station.store is not None
        rows = station.store.clips()
        [synced] = _log(station, "device.clock_synced")
    assert len(rows) == 2
    for row in rows:
        manifest = json.loads(base64.b64decode(json.loads(row["manifest"])["payload"]))
        assert "clock.invalid" in manifest["flags"]
        assert manifest["device"]["clock_offset_s"] is None
    assert synced["offset_s"] > 2e11  # the camera was ~7,000 years ahead, now set
    assert abs(camera.offset_s) < 1.0


def test_text_longer_than_a_field_is_cut_at_a_character_boundary(dock: Dock) -> None:
    camera = dock.camera()
    camera.zfy["officer_name"] = "张" * 17  # 34 bytes of GBK for a 32-byte field
    device = dock.device(camera.port)
    assert device.identify().officer_name == "张" * 16
    device.client.write_zfy_info(ZfyInfo(SERIAL, "054321", "A" + "李" * 16, "310101000000",
                                         "黄浦"))
    assert camera.zfy["officer_name"] == "A" + "李" * 15  # 31 bytes: no half character


# --- frames: resync --------------------------------------------------------------------------

def _answer_of(command: int, seq: int, payload: bytes) -> bytes:
    return doc.frame(command | 0x80, seq, doc.OK, payload)


NOISE: dict[str, Callable[[bytes], bytes]] = {
    "line-noise": lambda good: b"\x00\xff\x13\xa5\x5a\x01",
    "half-frame": lambda good: good[:20],
    "wrong-version": lambda good: bytes([0xA5, 0x5A, 0x02]) + good[3:],
    "damaged-frame": lambda good: good[:-1] + bytes([good[-1] ^ 0x01]),
    "fake-long-header": lambda good: bytes([0xA5, 0x5A, 0x01, 0x83, 0x00, 0x00, 0x03, 0xE8]),
    "header-over-1024": lambda good: bytes([0xA5, 0x5A, 0x01, 0x83, 0x00, 0x00, 0x7F, 0xFF]),
}


@pytest.mark.parametrize("kind", NOISE)
def test_damage_before_an_answer_does_not_cost_an_attempt(dock: Dock, kind: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    camera = dock.camera()
    device = dock.device(camera.port, command_timeout_s=2.0)
    device.identify()
    good = _answer_of(doc.GET_ZFY_INFO, 0, camera._zfy_bytes())
    camera.noise = [NOISE[kind](good)]
    started = time.monotonic()
    info = device.client.get_zfy_info()
    took = time.monotonic() - started
    assert (info.serial, info.officer_id) == (SERIAL, "054321")
    assert len(camera.commands(doc.GET_ZFY_INFO)) == 2  # identify's, and this one: no resend
    assert took < 1.0  # well inside the 2 s timeout: the header did not swallow the answer


# --- retries ---------------------------------------------------------------------------------

def test_busy_is_retried_after_the_documented_20_ms(dock: Dock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    camera = dock.camera()
    device = dock.device(camera.port, command_timeout_s=2.0)
    device.identify()
    pauses: list[float] = []
    real_pause = gat947_client._pause

    def record(seconds: float) -> None:
        pauses.append(seconds)
        real_pause(seconds)

    monkeypatch.setattr(gat947_client, "_pause", record)
    camera.busy = 2
    assert device.client.read_battery()[0] == 64
    assert pauses == [0.02, 0.02]
    times = [at for at, *_ in camera.commands(doc.READ_BATTERY)][-3:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.02 <= gap < 0.4 for gap in gaps), gaps  # not a quarter of the 2 s timeout


@pytest.mark.parametrize("drops_port", [True, False], ids=["port-leaves", "port-stays"])
def test_a_lost_set_msdc_answer_is_recovered_when_the_volume_appears(dock: Dock,
                                                                     drops_port: bool) -> None:
    camera = dock.camera()
    camera.drop_port_on_msdc = drops_port
    camera.lose[doc.SET_MSDC] = 3  # every answer lost; the resends find the port gone, or not
    device = dock.device(camera.port)
    assert len(device.recordings().recordings) == 2
    assert camera.mounted == dock.mount_root / SERIAL
    assert len(camera.commands(doc.SET_MSDC)) == (1 if drops_port else 3)


def test_a_failed_switch_without_a_volume_says_both(dock: Dock) -> None:
    camera = dock.camera()
    camera.lose[doc.SET_MSDC] = 3
    camera.mount_on_msdc = False
    device = dock.device(camera.port, mount_timeout_s=0.3)
    with pytest.raises(DeviceError) as failed:
        device.recordings()
    assert str(failed.value) == (
        f"camera {camera.port}: switching the camera to USB storage failed: the camera did not "
        "answer (3 tries, 0.3 s each); check that it is switched on and seated in the dock; "
        f"and no storage appeared under {dock.mount_root} within 0.3 s")


# --- messages --------------------------------------------------------------------------------

def test_failures_are_said_in_plain_words_with_the_detail_at_debug(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "storage").mkdir()
    (tmp_path / "mnt").mkdir()
    sim = Gat947Sim(tmp_path / "storage", tmp_path / "mnt", password=PASSWORD, id_code=SERIAL,
                    zfy=ZfyInfo(SERIAL, "054321", "王警官", "310101000000", "黄浦")).start()
    try:
        password = tmp_path / "pw"
        password.write_text(PASSWORD + "\n", encoding="utf-8")
        password.chmod(0o600)
        config = Gat947Config(mount_root=tmp_path / "mnt", ports=[sim.port],
                              password_file=password, command_timeout_s=0.2)
        [device] = Gat947Detector(config).scan()
        assert isinstance(device, Gat947Device)
        device.identify()
        caplog.set_level(logging.DEBUG)
        sim.corrupt_responses = 3
        with pytest.raises(DeviceError) as failed:
            device.client.get_zfy_info()
    finally:
        sim.close()
    assert str(failed.value) == (
        f"camera {sim.port}: reading the officer information failed: the data was damaged on "
        "the cable (3 tries); check the cable or the USB-serial adapter")
    detail = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG
              and "GetZFYInfo" in r.getMessage() and "checksum mismatch" in r.getMessage()]
    assert len(detail) == 3
    louder = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert not [m for m in louder if re.search(r"GetZFYInfo|0x[0-9a-f]{2}|checksum", m)]


# --- battery while docked --------------------------------------------------------------------

def test_the_battery_is_read_again_while_docked_and_alerts_once_per_docking(
        dock: Dock, station_config: Callable[..., Config]) -> None:
    camera = dock.camera(clips=1)  # keeps its serial port in storage mode
    camera.charge = None  # an older firmware: percent only, charging unknown
    config = station_config(dock.toml(camera.port))
    with running_station(config) as station:
        station.run_once()
        assert station.store is not None
        monitor = devicehealth.HealthMonitor(station.store, station.docked_devices)
        camera.battery = 60  # fell from 64 while docked: it is not charging
        assert monitor.refresh() == [SERIAL]
        camera.battery = 57
        assert monitor.refresh() == [SERIAL]
        alerts = [e["data"] for e in _events(station, "alert")]
        [device] = station.store.device_summaries()
        station.run_once()  # docked again: a new docking may alert again
        camera.battery = 50
        monitor.refresh()
        again = [e["data"] for e in _events(station, "alert")]
    assert [a["code"] for a in alerts] == ["device.not_charging"]
    assert alerts[0]["message"] == (f"camera {SERIAL} is docked but its battery fell from 64 % "
                                    "to 60 %: it is not charging; check the dock's power and "
                                    "how the camera sits in it")
    assert (device["battery_percent"], device["charging"]) == (57, None)
    assert [a["code"] for a in again] == ["device.not_charging"] * 2


# --- the document's tables are the driver's ---------------------------------------------------

def _table(section: str) -> list[list[str]]:
    text = (ROOT / "docs" / "GAT947.md").read_text(encoding="utf-8")
    part = text.split(section, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [line for line in part.splitlines() if line.startswith("|")][2:]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_the_documents_tables_are_the_drivers_and_the_document_cameras() -> None:
    from drivers.gat947_wire import SDK_NAMES, ZFY_FIELDS, Command, Status
    commands = {int(row[0], 16): row[1] for row in _table("## 4. Commands")}
    assert commands == {int(c): name for c, name in SDK_NAMES.items()}
    assert commands[doc.SET_MSDC] == "SetMSDC" and commands[doc.READ_BATTERY] == \
        "ReadDeviceBatteryDumpEnergy"
    statuses = {int(row[0], 16): row[1] for row in _table("## 5. Status codes")}
    assert statuses == {int(s): s.name for s in Status}
    assert statuses[doc.NOT_AUTHENTICATED] == "NOT_AUTHENTICATED" and statuses[doc.BUSY] == \
        "BUSY"
    zfy = [(int(row[0]), int(row[1])) for row in _table("### ZFY_INFO (89 bytes)")]
    offsets = [sum(size for _, size in ZFY_FIELDS[:i]) for i in range(len(ZFY_FIELDS))]
    assert zfy == list(zip(offsets, [size for _, size in ZFY_FIELDS], strict=True))
    assert zfy == sorted(doc.ZFY.values())
    assert {int(c) for c in Command} == set(commands)
