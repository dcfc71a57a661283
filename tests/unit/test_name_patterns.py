"""Cameras the catalog does not know: their file names are read with the catalog's patterns.

The sysfs tree is built the shape real sysfs has (see test_mass_storage.py);
the camera volume is a real directory, the station the real one.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

from agent.config import Config
from drivers import catalog as catalog_mod
from drivers.mass_storage import MassStorageConfig, MassStorageDetector
from tests.support.stations import running_station

USB = "devices/pci0000:00/0000:00:14.0/usb1/1-2"
NAMES = {"ABC1234_012345_20261129081500_0001_IMP.MP4": b"a" * 10,
         "ABC1234_012345_20261129090000_0002.MP4": b"b" * 20,
         "ABC1234_012345_20261129100000_0003.WAV": b"c",
         "NOTES.MP4": b"d"}


def _unknown_usb_disk(sysfs: Path) -> None:
    """A USB disk (sdc, abcd:ef01, no serial) that no catalog entry lists."""
    usb = sysfs / USB
    usb.mkdir(parents=True)
    for name, value in {"idVendor": "abcd", "idProduct": "ef01", "manufacturer": "NoName",
                        "product": "Body Cam"}.items():
        (usb / name).write_text(value + "\n")
    part = usb / "1-2:1.0/host7/target7:0:0/7:0:0:0/block/sdc/sdc1"
    part.mkdir(parents=True)
    (sysfs / "class" / "block").mkdir(parents=True)
    (sysfs / "class" / "block" / "sdc1").symlink_to(
        os.path.relpath(part, sysfs / "class" / "block"))


def _volume(point: Path) -> Path:
    day = point / "DCIM" / "20261129"
    day.mkdir(parents=True)
    for name, data in NAMES.items():
        (day / name).write_bytes(data)
    return point


def _detector(tmp_path: Path, *, usb: bool) -> MassStorageDetector:
    media = tmp_path / "media"
    media.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sdc1 {media / 'CAM'} vfat rw 0 0\n" if usb else "")
    if usb:
        _unknown_usb_disk(tmp_path / "sys")
    return MassStorageDetector(MassStorageConfig(
        mount_root=media, sysfs_root=tmp_path / "sys", mounts_file=mounts,
        require_mount=usb, rescan_interval_s=1.0))


def test_an_unknown_camera_has_its_names_read_with_the_matching_catalog_pattern(
        tmp_path: Path) -> None:
    detector = _detector(tmp_path, usb=True)
    _volume(tmp_path / "media" / "CAM")
    (device,) = detector.scan()
    info = device.identify()
    generic = catalog_mod.load().get("gat947-generic-a")  # first real camera that matches
    assert (info.serial, info.officer_id, info.usb_id, info.model) == (
        "ABC1234", "012345", "abcd:ef01", "Body Cam")
    assert info.name_pattern == generic.name_pattern
    recs = {r.name: r for r in device.recordings().recordings}
    first = recs["ABC1234_012345_20261129081500_0001_IMP.MP4"]
    assert (first.recorded_start, first.important) == ("2026-11-29T00:15:00.000Z", True)
    assert "name.pattern:gat947-generic-a" in first.name_flags
    assert recs["ABC1234_012345_20261129100000_0003.WAV"].recorded_start == \
        "2026-11-29T02:00:00.000Z"
    assert (recs["NOTES.MP4"].recorded_start, recs["NOTES.MP4"].name_flags) == (None, ())


def test_a_volume_without_usb_ids_has_its_names_read_too(tmp_path: Path) -> None:
    detector = _detector(tmp_path, usb=False)
    _volume(tmp_path / "media" / "CAM")
    (device,) = detector.scan()
    info = device.identify()
    assert (info.serial, info.officer_id, info.usb_id) == ("ABC1234", "012345", "")
    imp = next(r for r in device.recordings().recordings if r.name.endswith("_IMP.MP4"))
    assert imp.important and imp.recorded_start == "2026-11-29T00:15:00.000Z"


def test_the_manifest_and_the_dock_record_say_which_pattern_was_used(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    config = station_config(f"""
        [devices.mass_storage]
        mount_root = "{media}"
        require_mount = false
        """)
    _volume(media / "CAM")
    with running_station(config) as station:
        summary = station.run_once()
        assert station.store is not None
        rows = {r["name"]: r for r in station.store.clips()}
        docked = json.loads(station.store.query_one(
            "SELECT body FROM custody_log WHERE kind = 'device.docked'")["body"])
    assert summary.ok, summary.failures
    envelope = json.loads(rows["ABC1234_012345_20261129081500_0001_IMP.MP4"]["manifest"])
    manifest = json.loads(base64.b64decode(envelope["payload"]))
    assert manifest["recorded"]["start"] == "2026-11-29T00:15:00.000Z"
    assert manifest["recorded"]["important"] is True
    assert manifest["officer"]["id"] == "012345"
    assert "name.pattern:gat947-generic-a" in manifest["flags"]
    assert docked["name_pattern"] == catalog_mod.load().get("gat947-generic-a").name_pattern


def test_names_no_pattern_matches_leave_the_volume_serial(tmp_path: Path) -> None:
    detector = _detector(tmp_path, usb=False)
    (tmp_path / "media" / "CAM" / "DCIM").mkdir(parents=True)
    (tmp_path / "media" / "CAM" / "DCIM" / "MOV_0001.MP4").write_bytes(b"x")
    (device,) = detector.scan()
    info = device.identify()
    assert (info.serial, info.name_pattern, info.officer_id) == ("volume:CAM", None, "")
    (rec,) = device.recordings().recordings
    assert (rec.recorded_start, rec.name_flags) == (None, ())
