"""The mass-storage driver against a sysfs-shaped tree and a mounts file built in tmp_path.

The fixture tree has the shape of real sysfs: /sys/class/block/sdb1 is a
relative symlink into devices/pci.../usb1/1-1/1-1:1.0/host0/.../block/sdb/sdb1,
and the USB device directory (1-1) holds idVendor, idProduct, serial,
manufacturer and product.  The driver walks it with the same code as on
real hardware; only the USB hardware itself is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.configschema import load_section
from drivers import REGISTRY
from drivers.base import DeviceInfo
from drivers.mass_storage import (
    MassStorageConfig,
    MassStorageDetector,
    block_name,
    read_mounts,
    usb_device_dir,
)
from tests.support.detectors import DockEvents

REPO_CATALOG = Path(__file__).resolve().parents[2] / "config" / "devices.toml"
WAIT_S = 15.0

USB_PATH = "devices/pci0000:00/0000:00:14.0/usb1/1-1"
SCSI_PATH = "1-1:1.0/host6/target6:0:0/6:0:0:0/block"


def add_usb_disk(sysfs: Path, block: str, *, vid: str, pid: str, serial: str | None,
                 port: str = "1-1", manufacturer: str = "Generic", product: str = "DSJ") -> Path:
    """Create the sysfs shape of one USB disk with partition ``<block>1``; returns the USB dir."""
    usb = sysfs / USB_PATH.replace("1-1", port)
    usb.mkdir(parents=True)
    # The root hub above it also has idVendor: the walk must stop at the nearest one.
    hub = usb.parent
    if not (hub / "idVendor").exists():
        (hub / "idVendor").write_text("1d6b\n")
        (hub / "idProduct").write_text("0002\n")
    attrs = {"idVendor": vid, "idProduct": pid, "manufacturer": manufacturer,
             "product": product}
    if serial is not None:
        attrs["serial"] = serial
    for name, value in attrs.items():
        (usb / name).write_text(value + "\n")
    part = usb / SCSI_PATH.replace("1-1", port) / block / f"{block}1"
    part.mkdir(parents=True)
    (part / "partition").write_text("1\n")
    (sysfs / "class" / "block").mkdir(parents=True, exist_ok=True)
    link = sysfs / "class" / "block" / f"{block}1"
    link.symlink_to(os.path.relpath(part, link.parent))
    return usb


def Events() -> DockEvents:
    return DockEvents(WAIT_S)


@pytest.fixture
def station(tmp_path: Path) -> Path:
    """sysfs with one catalogued camera (sdb, 0603:8612) and one unknown stick (sdc)."""
    sysfs = tmp_path / "sys"
    add_usb_disk(sysfs, "sdb", vid="0603", pid="8612", serial="CAMSERIAL01")
    add_usb_disk(sysfs, "sdc", vid="abcd", pid="ef01", serial=None, port="1-2",
                 manufacturer="NoName", product="Flash Disk")
    (tmp_path / "media").mkdir()
    (tmp_path / "mounts").write_text("sysfs /sys sysfs rw 0 0\n/dev/vda1 / ext4 rw 0 0\n")
    return tmp_path


def camera_volume(mount_point: Path, officer: str = "010203") -> Path:
    day = mount_point / "DCIM" / "20240105"
    day.mkdir(parents=True)
    (day / f"ZFY0001_{officer}_20240105083015_0001_IMP.MP4").write_bytes(b"a" * 10)
    (day / f"ZFY0001_{officer}_20240105090000_0002.MP4").write_bytes(b"b" * 20)
    (day / "ZFY0001_999999_20240105100000_0003.WAV").write_bytes(b"c")
    (mount_point / "System Volume Information").mkdir()
    return mount_point


def mount(station: Path, source: str, name: str) -> Path:
    point = station / "media" / name
    escaped = str(point).replace(" ", "\\040")
    with open(station / "mounts", "a") as f:
        f.write(f"{source} {escaped} vfat rw,nosuid,nodev 0 0\n")
    return point


def unmount(station: Path, point: Path) -> None:
    escaped = str(point).replace(" ", "\\040")
    lines = (station / "mounts").read_text().splitlines(keepends=True)
    (station / "mounts").write_text("".join(ln for ln in lines if f" {escaped} " not in ln))


def config(station: Path, **kw: object) -> MassStorageConfig:
    base: dict[str, object] = {"mount_root": station / "media", "sysfs_root": station / "sys",
                               "mounts_file": station / "mounts", "catalog": REPO_CATALOG,
                               "rescan_interval_s": 0.05}
    base.update(kw)
    return MassStorageConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def detector(station: Path) -> Iterator[MassStorageDetector]:
    det = MassStorageDetector(config(station))
    yield det
    det.stop()


def test_sysfs_walk_finds_the_usb_device_not_the_hub(station: Path) -> None:
    usb = usb_device_dir(station / "sys", "sdb1")
    assert usb == (station / "sys" / USB_PATH).resolve()
    assert usb_device_dir(station / "sys", "sdz1") is None
    assert usb_device_dir(station / "sys", "..") is None
    assert block_name("/dev/sdb1") == "sdb1"
    assert block_name("tmpfs") is None


def test_read_mounts_unescapes_paths(station: Path) -> None:
    point = mount(station, "/dev/sdb1", "NO NAME")
    mounts = read_mounts(station / "mounts")
    assert mounts[str(point)] == "/dev/sdb1"
    assert mounts["/"] == "/dev/vda1"


def test_catalogued_camera_is_identified_from_sysfs_and_names(station: Path,
                                                             detector: MassStorageDetector
                                                             ) -> None:
    point = camera_volume(mount(station, "/dev/sdb1", "CAM1"))
    devices = detector.scan()
    assert [d.handle for d in devices] == [str(point)]
    device = devices[0]
    info = device.identify()
    assert (info.serial, info.usb_id, info.vendor, info.model, info.officer_id, info.driver) == (
        "CAMSERIAL01", "0603:8612", "Generic", "DSJ body camera (Novatek platform)", "010203",
        "mass_storage")
    assert info.name_pattern is not None and "officer" in info.name_pattern
    listing = device.recordings()
    assert [(r.name, r.size, r.recorded_start, r.important) for r in listing.recordings] == [
        ("ZFY0001_010203_20240105083015_0001_IMP.MP4", 10, "2024-01-05T00:30:15.000Z", True),
        ("ZFY0001_010203_20240105090000_0002.MP4", 20, "2024-01-05T01:00:00.000Z", False),
        ("ZFY0001_999999_20240105100000_0003.WAV", 1, "2024-01-05T02:00:00.000Z", False),
    ]
    with device.open(listing.recordings[1]) as f:
        assert f.read() == b"b" * 20


def test_unknown_camera_is_usable_with_sysfs_names(station: Path,
                                                   detector: MassStorageDetector) -> None:
    point = camera_volume(mount(station, "/dev/sdc1", "STICK"))
    (point / "clip.mkv").write_bytes(b"m")
    (device,) = detector.scan()
    info = device.identify()
    # No USB serial and not in the catalog: the names, read with the catalog pattern they
    # match, give the serial and the officer.
    pattern = detector.catalog.get("gat947-generic-a").name_pattern
    assert (info.serial, info.vendor, info.model, info.usb_id, info.name_pattern,
            info.officer_id) == ("ZFY0001", "NoName", "Flash Disk", "abcd:ef01", pattern,
                                 "010203")
    names = [r.name for r in device.recordings().recordings]
    assert "clip.mkv" in names  # default extensions apply
    assert [r.recorded_start is None for r in device.recordings().recordings] == [
        False, False, False, True]  # clip.mkv has no start in its name


def test_serial_falls_back_to_the_names(station: Path) -> None:
    (station / "sys" / USB_PATH / "serial").unlink()
    det = MassStorageDetector(config(station))
    camera_volume(mount(station, "/dev/sdb1", "CAM1"))
    (device,) = det.scan()
    assert device.identify().serial == "ZFY0001"


def test_directories_that_are_not_mounts_are_ignored(station: Path,
                                                     detector: MassStorageDetector) -> None:
    camera_volume(station / "media" / "leftover")
    assert detector.scan() == []
    loose = MassStorageDetector(config(station, require_mount=False))
    (device,) = loose.scan()
    # No mount source: nothing from sysfs, no catalog entry; the names give the serial.
    assert device.identify().serial == "ZFY0001"


def test_known_identity_is_returned_as_is(station: Path) -> None:
    known = DeviceInfo(serial="GA12345", officer_id="000001", driver="gat947")
    det = MassStorageDetector(config(station))
    point = camera_volume(mount(station, "/dev/sdb1", "CAM1"))
    device = det.device_at(point, "/dev/sdb1", known=known)
    assert device.identify() == known
    assert len(device.recordings().recordings) == 3


def test_detector_follows_the_mount_table(station: Path, detector: MassStorageDetector) -> None:
    events = Events()
    detector.start(events.on_dock, events.on_undock)
    point = station / "media" / "CAM 1"
    camera_volume(point)  # the directory appears before the mount, as udisks does it
    mount(station, "/dev/sdb1", "CAM 1")
    events.wait(lambda log: ("dock", str(point)) in log)
    device = events.devices[str(point)]
    assert device.identify().serial == "CAMSERIAL01"
    assert device.present()
    unmount(station, point)
    events.wait(lambda log: ("undock", str(point)) in log)
    assert not device.present()
    assert events.log == [("dock", str(point)), ("undock", str(point))]


def test_detector_sees_directories_with_watchdog(station: Path) -> None:
    det = MassStorageDetector(config(station, require_mount=False, rescan_interval_s=300))
    events = Events()
    det.start(events.on_dock, events.on_undock)
    try:
        staged = camera_volume(station / "staged")
        os.rename(staged, station / "media" / "CAM2")
        point = station / "media" / "CAM2"
        events.wait(lambda log: ("dock", str(point)) in log)
        shutil.rmtree(point)
        events.wait(lambda log: ("undock", str(point)) in log)
    finally:
        det.stop()


def test_config_through_the_registry(station: Path) -> None:
    spec = REGISTRY["mass_storage"]
    problems: list[str] = []
    cfg = load_section(spec.config_cls, {"mount_root": "/media/bwc", "require_mount": "yes"},
                       "devices.mass_storage", problems)
    assert problems == ["devices.mass_storage.require_mount: expected a boolean, got 'yes'"]
    cfg = load_section(spec.config_cls, {"mount_root": "/media/bwc"}, "devices.mass_storage",
                       problems := [])
    assert (cfg.sysfs_root, cfg.mounts_file, cfg.require_mount) == (
        Path("/sys"), Path("/proc/self/mounts"), True)
    det = spec.make_detector(config(station))
    det.start(lambda d: None, lambda h: None)
    det.stop()


def test_real_proc_mounts_is_polled(station: Path) -> None:
    # The default mount table parses here (the root is always mounted), and the
    # detector waits on it with poll(); a directory that is not a mount is no camera.
    assert "/" in read_mounts(Path("/proc/self/mounts"))
    det = MassStorageDetector(config(station, mounts_file=Path("/proc/self/mounts")))
    events = Events()
    det.start(events.on_dock, events.on_undock)
    try:
        camera_volume(station / "media" / "not-mounted")
        assert det.scan() == []
        assert det._mounts_fd is not None
    finally:
        det.stop()
    assert det._mounts_fd is None
    assert events.log == []
