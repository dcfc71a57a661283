"""The simulated driver: camera directories with an identity file, docked by watchdog."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.configschema import load_section
from agent.errors import DeviceError
from drivers import REGISTRY, catalog, simcam
from drivers.base import Detector
from drivers.simulated import (
    IDENTITY_FILE,
    SimulatedConfig,
    SimulatedDetector,
    SimulatedDevice,
    make_detector,
)
from tests.support.detectors import DockEvents

REPO_CATALOG = Path(__file__).resolve().parents[2] / "config" / "devices.toml"
WAIT_S = 15.0  # upper bound for watchdog delivery; the tests do not depend on its speed

IDENTITY = {
    "serial": "SIM0042", "vendor": "bwc-agent", "model": "SimCam", "firmware": "1.2.3",
    "officer_id": "010203", "officer_name": "李四", "unit_code": "110105000000",
    "unit_name": "朝阳执法大队",
}


def Events() -> DockEvents:
    return DockEvents(WAIT_S)


@pytest.fixture
def entry() -> catalog.Entry:
    return catalog.load(REPO_CATALOG).get("simulated")


def make_dir_camera(root: Path, name: str, identity: dict[str, object] | None = None) -> Path:
    cam = root / name
    (cam / "DCIM" / "20240105").mkdir(parents=True)
    (cam / IDENTITY_FILE).write_text(json.dumps(identity or IDENTITY, ensure_ascii=False))
    (cam / "DCIM" / "20240105" / "SIM0042_010203_20240105083015_0001_IMP.MP4").write_bytes(b"v1")
    (cam / "DCIM" / "20240105" / "SIM0042_010203_20240105090000_0002.AVI").write_bytes(b"v22")
    (cam / "DCIM" / "20240105" / "thumb.jpg").write_bytes(b"j")
    return cam


@pytest.fixture
def detector(tmp_path: Path) -> Iterator[SimulatedDetector]:
    det = SimulatedDetector(SimulatedConfig(root=tmp_path / "sim", catalog=REPO_CATALOG))
    yield det
    det.stop()


def test_spec_and_config_validation(tmp_path: Path) -> None:
    assert REGISTRY["simulated"].config_cls is SimulatedConfig
    problems: list[str] = []
    cfg = load_section(SimulatedConfig, {"root": "sim"}, "devices.simulated", problems)
    assert problems == [] and cfg.catalog is None
    assert SimulatedDetector(SimulatedConfig(root=tmp_path)).entry.key == "simulated"
    load_section(SimulatedConfig, {"rot": "x"}, "devices.simulated", problems)
    assert "devices.simulated.rot: unknown key (allowed here: catalog, catalog_key, read_kib_s, root)" \
        in problems
    assert "devices.simulated.root: required key is missing" in problems
    det = make_detector(SimulatedConfig(root=tmp_path, catalog=REPO_CATALOG))
    assert isinstance(det, Detector)


def test_identify_and_recordings(tmp_path: Path, entry: catalog.Entry) -> None:
    device = SimulatedDevice(make_dir_camera(tmp_path, "cam"), entry)
    info = device.identify()
    assert (info.serial, info.officer_id, info.officer_name, info.unit_name, info.driver) == (
        "SIM0042", "010203", "李四", "朝阳执法大队", "simulated")
    assert info.name_pattern == entry.name_pattern
    listing = device.recordings()
    assert [(r.name, r.recorded_start, r.important) for r in listing.recordings] == [
        ("SIM0042_010203_20240105083015_0001_IMP.MP4", "2024-01-05T00:30:15.000Z", True),
        ("SIM0042_010203_20240105090000_0002.AVI", "2024-01-05T01:00:00.000Z", False),
    ]
    # The identity file is not a recording and not reported; the thumbnail is reported.
    assert [(s.path, s.reason) for s in listing.skipped] == [
        ("DCIM/20240105/thumb.jpg", "not a recording type")]
    with device.open(listing.recordings[1]) as f:
        assert f.read() == b"v22"


def test_a_slow_camera_reads_at_its_rate(tmp_path: Path, entry: catalog.Entry) -> None:
    cam = make_dir_camera(tmp_path, "cam")
    data = os.urandom(150 * 1024)
    (cam / "DCIM" / "20240105" / "SIM0042_010203_20240105090000_0002.AVI").write_bytes(data)
    device = SimulatedDevice(cam, entry, read_kib_s=1000)
    rec = device.recordings().recordings[1]
    started = time.monotonic()
    with device.open(rec) as f:
        pieces = []
        while chunk := f.read(64 * 1024):
            pieces.append(chunk)
    assert b"".join(pieces) == data
    assert time.monotonic() - started >= 0.14  # 150 KiB at 1000 KiB/s
    assert [len(p) for p in pieces] == [65536, 65536, 22528]  # whole reads, as from a disk


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "BWC_DEVICE.json: not valid UTF-8 JSON"),
    ("[1, 2]", "BWC_DEVICE.json: expected a JSON object, got list"),
    (json.dumps({k: v for k, v in IDENTITY.items() if k != "officer_id"}),
     "BWC_DEVICE.json: field 'officer_id' is missing"),
    (json.dumps(dict(IDENTITY, serial=7)), "BWC_DEVICE.json: field 'serial' must be a string"),
    (json.dumps(dict(IDENTITY, clock_offset_s="fast")),
     "BWC_DEVICE.json: field 'clock_offset_s' must be a number"),
])
def test_malformed_identity_names_file_and_field(tmp_path: Path, entry: catalog.Entry,
                                                 content: str, message: str) -> None:
    cam = make_dir_camera(tmp_path, "cam")
    (cam / IDENTITY_FILE).write_text(content)
    with pytest.raises(DeviceError, match=message):
        SimulatedDevice(cam, entry).identify()


def test_identity_file_symlink_is_refused(tmp_path: Path, entry: catalog.Entry) -> None:
    cam = make_dir_camera(tmp_path, "cam")
    outside = tmp_path / "other.json"
    outside.write_text(json.dumps(IDENTITY))
    (cam / IDENTITY_FILE).unlink()
    (cam / IDENTITY_FILE).symlink_to(outside)
    with pytest.raises(DeviceError, match=r"cannot read the camera identity.*symlink"):
        SimulatedDevice(cam, entry).identify()


def test_clock_offset_and_sync_clock(tmp_path: Path, entry: catalog.Entry) -> None:
    cam = make_dir_camera(tmp_path, "cam", dict(IDENTITY, clock_offset_s=-3600.0))
    device = SimulatedDevice(cam, entry)
    before = time.time()
    clock = datetime.fromisoformat(device.identify().clock.replace("Z", "+00:00"))
    assert before - 3600 - 1 <= clock.timestamp() <= time.time() - 3600 + 1
    measured = device.sync_clock(time.time())
    assert measured is not None and -3601 < measured < -3599
    saved = json.loads((cam / IDENTITY_FILE).read_text())
    assert abs(saved["clock_offset_s"]) < 1 and saved["officer_name"] == "李四"
    second = device.sync_clock(time.time())
    assert second is not None and abs(second) < 1


def test_detector_docks_and_undocks_with_watchdog(tmp_path: Path,
                                                  detector: SimulatedDetector) -> None:
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    cam = simcam.make_camera(detector.root, serial="SIM0007", officer_id="000007", clips=1,
                             seconds=0.2, width=32, height=32, fps=10,
                             start=datetime(2024, 1, 1, tzinfo=UTC), catalog=REPO_CATALOG)
    events.wait(lambda log: ("dock", str(cam)) in log)
    device = events.devices[str(cam)]
    assert device.identify().serial == "SIM0007"
    assert len(device.recordings().recordings) == 1
    shutil.rmtree(cam)
    events.wait(lambda log: ("undock", str(cam)) in log)
    assert not device.present()
    assert events.log == [("dock", str(cam)), ("undock", str(cam))]


def test_directory_docks_only_when_its_identity_appears(tmp_path: Path,
                                                        detector: SimulatedDetector) -> None:
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    first = detector.root / "early"
    first.mkdir()
    (first / "DCIM").mkdir()
    # A second camera docked afterwards: once it is seen, the first event
    # (if any had been wrongly sent for the identity-less directory) would be in the log.
    make_dir_camera(tmp_path, "staged")
    os.rename(tmp_path / "staged", detector.root / "later")
    events.wait(lambda log: ("dock", str(detector.root / "later")) in log)
    assert events.log == [("dock", str(detector.root / "later"))]
    (first / IDENTITY_FILE).write_text(json.dumps(IDENTITY))
    events.wait(lambda log: ("dock", str(first)) in log)
    assert detector.scan() and {d.handle for d in detector.scan()} == {
        str(first), str(detector.root / "later")}


def test_scan_then_start_reports_each_camera_once(tmp_path: Path,
                                                  detector: SimulatedDetector) -> None:
    detector.root.mkdir()
    old = make_dir_camera(detector.root, "old")
    assert [d.handle for d in detector.scan()] == [str(old)]
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    make_dir_camera(tmp_path, "staged")
    os.rename(tmp_path / "staged", detector.root / "new")
    events.wait(lambda log: ("dock", str(detector.root / "new")) in log)
    assert events.log == [("dock", str(detector.root / "new"))]


def test_start_reports_cameras_already_docked(tmp_path: Path,
                                              detector: SimulatedDetector) -> None:
    detector.root.mkdir()
    old = make_dir_camera(detector.root, "old")
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    assert events.log == [("dock", str(old))]  # reported synchronously by start()


def test_identity_less_directory_present_at_start_docks_later(tmp_path: Path,
                                                              detector: SimulatedDetector) -> None:
    waiting = detector.root / "waiting"
    waiting.mkdir(parents=True)
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    assert events.log == []
    (waiting / IDENTITY_FILE).write_text(json.dumps(IDENTITY))
    events.wait(lambda log: ("dock", str(waiting)) in log)
    (waiting / IDENTITY_FILE).unlink()  # an identity removed is an undock, too
    events.wait(lambda log: ("undock", str(waiting)) in log)


def test_the_read_rate_is_exact_when_the_reads_themselves_take_time() -> None:
    # 25 cameras read at once: each read may wait for the disk or the GIL.  The rate must
    # not drop by that time (sleeping a full interval after each read would).
    from drivers.simulated import _Throttled

    now = [0.0]

    class _SlowDisk(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            now[0] += 0.03  # every read takes 30 ms
            return super().read(n)

    def sleep(seconds: float) -> None:
        assert seconds > 0
        now[0] += seconds

    data = os.urandom(1_000_000)
    stream = io.BufferedReader(_Throttled(_SlowDisk(data), 100_000, clock=lambda: now[0],
                                          sleep=sleep))
    got = bytearray()
    block = bytearray(65536)
    while n := stream.readinto(block):  # as a copy reads
        got += block[:n]
    assert got == data
    # 1 MB at 100 kB/s: ten seconds, plus the 30 ms of the reads that find the end;
    # not the 13 s of sleeping a whole interval after each of ~115 reads.
    assert 10.0 <= now[0] <= 10.1, now[0]
