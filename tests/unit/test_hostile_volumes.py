"""Camera volumes that misbehave: dead FUSE daemons, deep trees and loops, hard links, odd names.

Each camera here is a real file system or a real directory tree; the
station runs its real driver code over it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Config
from agent.custody.jcs import canonicalize
from agent.errors import DeviceError, DeviceGoneError
from drivers.base import Recording
from drivers.simcam import make_camera
from drivers.volume import VolumeDevice
from drivers.walk import MAX_DEPTH, TOO_DEEP, walk
from tests.support.filesystems import (
    bind_mount,
    copy_tree_into,
    fat_image,
    fusefat,
    loop_first_directory,
)
from tests.support.names import name_bytes
from tests.support.stations import FaultyDevice, camera, running_station, sim_devices


class Plain(VolumeDevice):
    """A VolumeDevice with no identity of its own."""


def test_a_camera_whose_fuse_daemon_dies_mid_copy_is_taken_as_removed(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    template = make_camera(tmp_path / "template", serial="FUSE001", clips=1, seconds=0.5,
                           width=160, height=120, fps=10.0)
    (template / "DCIM" / "BIG.MP4").write_bytes(os.urandom(8 * 1024 * 1024))
    image = fat_image(tmp_path / "camera.img", size_mb=32)
    point = config.devices["simulated"].root / "FUSE001"
    with fusefat(image, point, writable=True):
        copy_tree_into(template, point)
    with fusefat(image, point) as fat:
        killed: list[int] = []

        def daemon_dies(rec: Recording, done: int) -> None:
            if rec.path.endswith("BIG.MP4") and done >= 256 * 1024 and not killed:
                killed.append(done)
                fat.kill()  # the FUSE driver crashed: ENOTCONN from now on

        with running_station(config) as station:
            (device,) = sim_devices(station)
            future = station.dock(FaultyDevice(device, on_read=daemon_dies))
            assert future is not None
            report = future.result(timeout=60)
            assert station.store is not None
            states = {r["path"]: r["state"] for r in station.store.clips()}
            with pytest.raises(DeviceGoneError):  # and so is a later listing
                device.recordings()
    assert killed, "the copy reached the point where the daemon dies"
    assert [e for e in report.errors if e.startswith("device removed")], report.errors
    assert report.quarantined == [] and len(report.copied) == 1
    assert states.pop("DCIM/BIG.MP4") == "discovered"  # copied again at the next dock
    assert set(states.values()) == {"sealed"}


def _deep_tree(top: Path, depth: int, name: bytes = b"d") -> bytes:
    """``depth`` nested directories below ``top`` (made by descriptor: no path-length limit)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        leaf = os.open(b"DEEP.MP4", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"never reached")
        os.close(leaf)
    finally:
        os.close(fd)
    return b"/".join([name] * depth)


def test_a_tree_too_deep_to_walk_is_reported_and_the_rest_is_offloaded(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    _deep_tree(cam / "DCIM", 700)
    with running_station(config) as station:
        summary = station.run_once()
        assert station.store is not None
        alerts = [json.loads(r["body"]) for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
    (report,) = summary.reports
    assert len(report.copied) == 1 and not summary.ok
    deep = "DCIM/" + "/".join(["d"] * MAX_DEPTH)
    assert report.unreadable == [{
        "path": deep, "reason": f"directory too deep: more than {MAX_DEPTH} levels below "
                                "the volume root, not entered"}]
    assert [a["code"] for a in alerts] == ["device.unreadable"]
    assert deep in alerts[0]["message"]


def test_a_directory_loop_on_a_corrupt_fat_card_ends_and_the_rest_is_offloaded(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    config = station_config()
    template = make_camera(tmp_path / "template", serial="LOOP001", clips=2, seconds=0.5,
                           width=160, height=120, fps=10.0)
    image = fat_image(tmp_path / "camera.img")
    point = config.devices["simulated"].root / "LOOP001"
    with fusefat(image, point, writable=True):
        (point / "LOOPDIR").mkdir()  # cluster 2 on the fresh image, its SUB cluster 3
        (point / "LOOPDIR" / "SUB").mkdir()
        copy_tree_into(template, point)
    loop_first_directory(image)  # LOOPDIR/SUB is LOOPDIR again
    with fusefat(image, point):
        assert (point / "LOOPDIR" / "SUB" / "SUB" / "SUB").is_dir()  # the card loops
        with running_station(config) as station:
            summary = station.run_once()
    (report,) = summary.reports
    assert len(report.copied) == 2 and not summary.ok
    assert report.unreadable == [{"path": "LOOPDIR/" + "/".join(["SUB"] * MAX_DEPTH),
                                  "reason": TOO_DEEP}]


def test_a_directory_seen_twice_is_not_entered_twice(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    (volume / "DCIM" / "BACK").mkdir(parents=True)
    (volume / "DCIM" / "A.MP4").write_bytes(b"clip")
    with bind_mount(volume, volume / "DCIM" / "BACK"):  # the root again, one level down
        listing = walk(volume, {"mp4"})
    assert [r.path for r in listing.recordings] == ["DCIM/A.MP4"]
    assert [(s.path, s.reason) for s in listing.skipped] == [
        ("DCIM/BACK", "directory loop: the same directory as ., not entered")]


def test_a_file_with_several_hard_links_is_refused_with_an_alert(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    with running_station(config):
        pass  # first start: the station makes its key
    key = config.data_dir / "keys" / "station.key"
    os.link(key, cam / "DCIM" / "KEY.MP4")  # a link to the station key, inside the camera
    with running_station(config) as station:
        summary = station.run_once()
        assert station.store is not None
        paths = {r["path"] for r in station.store.clips()}
        alerts = [json.loads(r["body"]) for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
    (report,) = summary.reports
    assert "DCIM/KEY.MP4" not in paths and len(report.copied) == 1
    assert report.refused == [{"path": "DCIM/KEY.MP4",
                               "reason": "hard links: 2 (a camera's FAT or exFAT has none), "
                                         "refused, left on the camera"}]
    assert not summary.ok  # something on the camera was not offloaded
    assert [a["code"] for a in alerts] == ["device.hard_links"]
    assert "DCIM/KEY.MP4" in alerts[0]["message"]
    key_sha = hashlib.sha256(key.read_bytes()).hexdigest()
    assert not list((config.data_dir / "vault").rglob(key_sha))
    assert (cam / "DCIM" / "KEY.MP4").exists()


def test_a_recording_swapped_for_a_hard_link_after_listing_is_not_read(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    (volume / "DCIM").mkdir(parents=True)
    (volume / "DCIM" / "A.MP4").write_bytes(b"clip")
    secret = tmp_path / "secret"
    secret.write_bytes(b"station secret")
    device = Plain(volume, {"mp4"})
    (rec,) = device.recordings().recordings
    (volume / "DCIM" / "A.MP4").unlink()
    os.link(secret, volume / "DCIM" / "A.MP4")
    with pytest.raises(DeviceError, match="2 hard links"):
        device.open(rec)


def test_a_recording_with_an_odd_name_is_offloaded_and_its_manifest_keeps_the_bytes(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    (clip,) = (cam / "DCIM").rglob("*.MP4")
    odd = {b"EVENT\n1.MP4": b"one", b"A\\B.MP4": b"two", b"\xff\xfe.MP4": b"three",
           b"\xfe\xff.MP4": b"four"}
    for raw, extra in odd.items():
        with open(os.fsencode(cam / "DCIM") + b"/" + raw, "wb") as f:
            f.write(clip.read_bytes() + extra)
    with running_station(config) as station:
        summary = station.run_once()
        assert station.store is not None
        rows = station.store.clips()
    assert summary.ok, summary.failures
    assert summary.reports[0].skipped == []
    manifests = {}
    for row in rows:
        assert row["state"] == "sealed"
        envelope = json.loads(row["manifest"])
        manifest = json.loads(base64.b64decode(envelope["payload"]))
        manifests[manifest["file"]["path"]] = manifest
    expected = {"DCIM/EVENT%0A1.MP4": b"EVENT\n1.MP4", "DCIM/A%5CB.MP4": b"A\\B.MP4",
                "DCIM/%FF%FE.MP4": b"\xff\xfe.MP4", "DCIM/%FE%FF.MP4": b"\xfe\xff.MP4"}
    for path, raw in expected.items():
        manifest = manifests[path]
        assert manifest["file"]["name"] == path.split("/")[1]
        assert "name.escaped" in manifest["flags"]
        assert name_bytes(path, tuple(manifest["flags"])) == b"DCIM/" + raw
        sha = hashlib.sha256(clip.read_bytes() + odd[raw]).hexdigest()
        assert manifest["file"]["digests"]["sha256"] == sha


def test_a_flood_of_files_that_are_not_recordings_is_summarised_once(
        station_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    junk = cam / "JUNK"
    junk.mkdir()
    for i in range(3000):
        (junk / f"F{i:05d}.TXT").write_bytes(b"")
    os.symlink("/etc/passwd", junk / "LINK.MP4")
    expected = sorted([(f"JUNK/F{i:05d}.TXT", "not a recording type") for i in range(3000)]
                      + [("JUNK/LINK.MP4", "symlink, not followed")])
    digest = hashlib.sha256(canonicalize(
        [{"path": p, "reason": r} for p, r in expected])).hexdigest()
    with running_station(config) as station:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            first = station.run_once()
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            second = station.run_once()  # the same camera, unchanged
        warnings_again = [r.getMessage() for r in caplog.records
                          if r.levelno >= logging.WARNING]
        (junk / "F99999.TXT").write_bytes(b"")
        station.run_once()
        assert station.store is not None
        entries = [r["body"] for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'device.skipped' ORDER BY seq")]
        reports = [r["report"] for r in station.store.query("SELECT report FROM docks")]
    assert first.ok and second.ok
    assert len(entries) == 2  # the unchanged second dock adds none
    body = json.loads(entries[0])
    assert len(entries[0]) < 4096
    assert body == {"serial": "SIM0001", "count": 3001,
                    "by_reason": {"not a recording type": 3000, "symlink, not followed": 1},
                    "first": [{"path": p, "reason": r} for p, r in expected[:20]],
                    "sha256": digest}
    assert json.loads(entries[1])["count"] == 3002
    assert all(len(r) < 8192 for r in reports)
    skipped_lines = [w for w in warnings if "not ingested" in w]
    assert skipped_lines == ["SIM0001: 3001 entries not ingested (not a recording type: "
                             "3000, symlink, not followed: 1); first: JUNK/F00000.TXT "
                             "(not a recording type), JUNK/F00001.TXT (not a recording "
                             "type), JUNK/F00002.TXT (not a recording type)"]
    assert len(warnings) < 5
    assert [w for w in warnings_again if "not ingested" in w] == []
    assert first.reports[0].skipped_count == 3001


def test_a_listing_stops_at_its_bound_and_says_so(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("drivers.walk.MAX_ENTRIES", 25)
    volume = tmp_path / "vol"
    (volume / "A").mkdir(parents=True)
    for i in range(40):
        (volume / "A" / f"{i:02d}.MP4").write_bytes(b"x")
    listing = walk(volume, {"mp4"})
    assert len(listing.recordings) == 24  # the directory A is the first entry
    assert [(s.path, s.reason) for s in listing.skipped] == [
        ("A", "listing stopped: more than 25 entries on the volume")]
