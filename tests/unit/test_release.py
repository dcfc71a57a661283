"""Release from the camera: only the file that was hashed is deleted, failures back off.

Every test runs the real driver (drivers/volume.py) over real files; faults are
real file-system changes made at the moment the code under test reaches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.errors import RecordingChangedError
from agent.store import Store
from agent.store.migrations import MIGRATIONS
from agent.sync.retention import release_acknowledged
from drivers.volume import VolumeDevice
from tests.support.filesystems import read_only
from tests.support.stations import camera, running_station, sim_devices


@pytest.fixture
def acknowledged(station_config: Callable[..., Config]) -> tuple[Config, Path]:
    """A station whose camera's two clips are sealed and acknowledged by the platform."""
    config = station_config()
    cam = camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'acknowledged', ack = '{\"signed\": true}', "
               "acknowledged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
    db.commit()
    db.close()
    return config, cam


def _camera_file(cam: Path, name: str) -> Path:
    return next(p for p in cam.rglob("*") if p.name == name)


def _swap(target: Path, how: str, outside: Path) -> None:
    """Put another file under ``target``'s name: same size and mtime, or a link, or a FIFO."""
    st = target.stat()
    aside = target.with_name(".swap")
    if how == "file":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        aside.write_bytes(bytes(data))
        os.utime(aside, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how == "symlink":
        aside.symlink_to(outside)
    else:
        os.mkfifo(aside)
    os.replace(aside, target)


@contextlib.contextmanager
def _after_release_started(store: Store, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once, just after the first ``release.started`` entry is committed."""
    real = store.transaction
    done: list[bool] = []

    @contextlib.contextmanager
    def transaction() -> Iterator[Any]:
        with real() as tx:
            yield tx
        if not done and any(e.kind == "release.started" for e in tx.appended):
            done.append(True)
            action()

    store.transaction = transaction  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.transaction


@pytest.mark.parametrize("how", ["file", "symlink", "fifo"])
def test_a_file_swapped_in_between_the_check_and_the_delete_is_kept(
        acknowledged: tuple[Config, Path], tmp_path: Path, how: str) -> None:
    config, cam = acknowledged
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    first = store.clips()[0]
    target = _camera_file(cam, first["name"])
    outside = tmp_path / "outside.MP4"
    outside.write_bytes(b"not on the camera")
    with running_station(config) as station, \
            _after_release_started(store, lambda: _swap(target, how, outside)):
        device = sim_devices(station)[0]
        released = release_acknowledged(config, store, device, device.identify())
    assert first["clip_id"] not in released and len(released) == 1
    assert os.path.lexists(target), "the swapped-in file was deleted"
    assert outside.read_bytes() == b"not on the camera"
    assert store.clip(first["clip_id"])["state"] == "acknowledged"
    kinds = [r["kind"] for r in store.query(
        "SELECT kind FROM custody_log WHERE clip_id = ? AND kind LIKE 'release.%' ORDER BY seq",
        (first["clip_id"],))]
    assert kinds == ["release.started", "release.failed"]
    reason = json.loads(store.query_one(
        "SELECT body FROM custody_log WHERE clip_id = ? AND kind = 'release.failed'",
        (first["clip_id"],))["body"])["reason"]
    assert "replaced on the camera while it was checked" in reason


class Plain(VolumeDevice):
    """A VolumeDevice with no identity of its own."""


@pytest.mark.parametrize("how", ["file", "symlink", "fifo"])
def test_the_driver_deletes_only_the_file_it_hashed(tmp_path: Path, how: str) -> None:
    volume = tmp_path / "vol"
    (volume / "DCIM").mkdir(parents=True)
    target = volume / "DCIM" / "A.MP4"
    target.write_bytes(b"the acknowledged bytes")
    sha = hashlib.sha256(b"the acknowledged bytes").hexdigest()
    outside = tmp_path / "outside.MP4"
    outside.write_bytes(b"not on the camera")
    device = Plain(volume, {"mp4"})
    (rec,) = device.recordings().recordings
    # Swapped before the release starts: refused at the open, nothing read through a link.
    _swap(target, how, outside)
    with pytest.raises(RecordingChangedError):
        device.release(rec, sha256=sha)
    assert os.path.lexists(target) and outside.read_bytes() == b"not on the camera"
    # Swapped after the check, just before the unlink: refused too.
    os.unlink(target)
    target.write_bytes(b"the acknowledged bytes")
    (rec,) = device.recordings().recordings
    with pytest.raises(RecordingChangedError, match="replaced on the camera while it was"):
        device.release(rec, sha256=sha, before_delete=lambda: _swap(target, how, outside))
    assert os.path.lexists(target) and outside.read_bytes() == b"not on the camera"
    # The file itself, unchanged: deleted.
    os.unlink(target)
    target.write_bytes(b"the acknowledged bytes")
    (rec,) = device.recordings().recordings
    device.release(rec, sha256=sha)
    assert not os.path.lexists(target)


def _release_kinds(store: Store) -> list[str]:
    return [r["kind"] for r in store.query(
        "SELECT kind FROM custody_log WHERE kind LIKE 'release.%' ORDER BY seq")]


def _alerts(store: Store) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'alert' ORDER BY seq")]


def test_a_read_only_camera_alerts_once_shows_in_status_and_backs_off(
        acknowledged: tuple[Config, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config, cam = acknowledged
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    clock = {"now": time.time()}
    monkeypatch.setattr("agent.sync.retention.time.time", lambda: clock["now"])
    with read_only(cam), running_station(config) as station:
        device = sim_devices(station)[0]
        info = device.identify()
        for _ack in range(5):  # five acks in a row, each asks for a release
            assert release_acknowledged(config, store, device, info) == []
        # Each clip was tried once; the rest of the burst waited for its back-off.
        assert _release_kinds(store) == ["release.started", "release.failed"] * 2
        (alert,) = _alerts(store)
        assert alert["code"] == "release.failed" and alert["serial"] == "SIM0001"
        assert "Read-only file system" in alert["message"]
        assert "2 clips" in alert["message"]
        rows = store.clips()
        assert {r["state"] for r in rows} == {"acknowledged"}
        assert {r["release_failures"] for r in rows} == {1}
        assert all("Read-only file system" in r["release_error"] for r in rows)
        first_wait = rows[0]["release_retry_at"] - clock["now"]
        assert 30 <= first_wait <= 120
        # What IT staff see.
        assert main(["status", "--config", str(config.source)]) == 0
        out = capsys.readouterr().out
        assert "releases failing: 2 clips on SIM0001" in out and "Read-only file system" in out
        assert main(["clips", "--config", str(config.source), "--json"]) == 0
        clips = json.loads(capsys.readouterr().out)["clips"]
        assert all("Read-only file system" in c["release_error"] for c in clips)
        # Once the wait is over: tried again, waits longer, no second alert.
        clock["now"] += first_wait + 1
        assert release_acknowledged(config, store, device, info) == []
        rows = store.clips()
        assert {r["release_failures"] for r in rows} == {2}
        assert rows[0]["release_retry_at"] - clock["now"] > first_wait * 1.5
        assert len(_alerts(store)) == 1
    # Writable again: the next try releases both, and nothing is left failing.
    clock["now"] = max(r["release_retry_at"] for r in rows) + 1
    with running_station(config) as station:
        device = sim_devices(station)[0]
        assert len(release_acknowledged(config, store, device, device.identify())) == 2
    assert {r["state"] for r in store.clips()} == {"released"}
    assert {r["release_error"] for r in store.clips()} == {None}
    assert main(["status", "--config", str(config.source)]) == 0
    assert "releases failing" not in capsys.readouterr().out


def test_a_duplicate_is_released_once_the_clip_it_duplicates_is_acknowledged(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    (original_file,) = (cam / "DCIM").rglob("*.MP4")
    copy = original_file.with_name("ZCOPY.MP4")  # copied after the original
    copy.write_bytes(original_file.read_bytes())
    (cam / "DCIM" / "EMPTY.MP4").write_bytes(b"")
    with running_station(config) as station:
        assert station.run_once().ok
        other = camera(config, clips=1, serial="SIM0002")  # the same empty file, docked later
        (other / "DCIM" / "EMPTY.MP4").write_bytes(b"")
        assert station.run_once().ok
        store = station.store
        assert store is not None
        rows = {(r["device_serial"], r["name"]): r for r in store.clips()}
        dup = rows[("SIM0001", "ZCOPY.MP4")]
        empty_dup = rows[("SIM0002", "EMPTY.MP4")]
        assert (dup["state"], empty_dup["state"]) == ("duplicate", "duplicate")
        original = rows[("SIM0001", original_file.name)]
        empty = rows[("SIM0001", "EMPTY.MP4")]
        devices = {d.identify().serial: d for d in sim_devices(station)}

        def release_all() -> list[str]:
            return [c for serial, d in sorted(devices.items())
                    for c in release_acknowledged(config, store, d, d.identify())]

        assert release_all() == []  # nothing acknowledged: nothing leaves a camera
        _acknowledge(config, empty["clip_id"])
        released = release_all()
        # The empty original and both its duplicates: its own camera's and the other's.
        assert sorted(released) == sorted([empty["clip_id"], empty_dup["clip_id"]])
        assert copy.exists() and not (other / "DCIM" / "EMPTY.MP4").exists()
        _acknowledge(config, original["clip_id"])
        assert sorted(release_all()) == sorted([original["clip_id"], dup["clip_id"]])
        assert not copy.exists() and not original_file.exists()
        entries = {r["clip_id"]: json.loads(r["body"]) for r in store.query(
            "SELECT clip_id, body FROM custody_log WHERE kind = 'release.duplicate'")}
        events = [e["data"] for e in (json.loads(r["payload"]) for r in store.query(
            "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id"))
                  if e["type"] == "clip.released"]
        final = {r["clip_id"]: r for r in store.clips()}
    assert entries[dup["clip_id"]] == {"device_serial": "SIM0001", "path": dup["path"],
                                       "sha256": dup["sha256"],
                                       "duplicate_of": original["clip_id"]}
    assert entries[empty_dup["clip_id"]]["duplicate_of"] == empty["clip_id"]
    assert {e["clip_id"]: e.get("duplicate_of") for e in events}[dup["clip_id"]] == \
        original["clip_id"]
    assert final[dup["clip_id"]]["state"] == "duplicate"
    assert final[dup["clip_id"]]["released_at"] is not None


def test_a_duplicate_of_a_clip_never_acknowledged_stays_on_the_camera(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    (original_file,) = (cam / "DCIM").rglob("*.MP4")
    copy = original_file.with_name("ZCOPY.MP4")
    copy.write_bytes(original_file.read_bytes())
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        dup = next(r for r in store.clips() if r["state"] == "duplicate")
        # Another clip with the same bytes is acknowledged, but it is not the original.
        db = sqlite3.connect(config.data_dir / "state.db")
        db.execute("UPDATE clips SET state = 'quarantined', reason = 'x' WHERE state = "
                   "'sealed'")
        db.execute("INSERT INTO clips (clip_id, device_serial, path, name, size, mtime_ms, "
                   "state, sha256, ack, acknowledged_at, discovered_at, updated_at) VALUES "
                   "('other', 'SIM0009', 'X.MP4', 'X.MP4', 1, 1, 'acknowledged', ?, '{}', "
                   "'2020-01-01T00:00:00.000Z', '', '')", (dup["sha256"],))
        db.commit()
        db.close()
        (device,) = sim_devices(station)
        assert release_acknowledged(config, store, device, device.identify()) == []
    assert copy.exists() and original_file.exists()


def _acknowledge(config: Config, clip_id: str) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'acknowledged', ack = '{\"signed\": true}', "
               "acknowledged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE clip_id = ?",
               (clip_id,))
    db.commit()
    db.close()


def test_duplicates_from_before_the_upgrade_know_the_clip_they_duplicate(tmp_path: Path) -> None:
    step = next(i for i, m in enumerate(MIGRATIONS) if "duplicate_of" in m)
    db = sqlite3.connect(tmp_path / "state.db")
    for migration in MIGRATIONS[:step]:
        db.executescript(migration)
    db.execute(f"PRAGMA user_version = {step}")
    for clip_id, state in (("orig", "sealed"), ("dup", "duplicate")):
        db.execute("INSERT INTO clips (clip_id, device_serial, path, name, size, mtime_ms, "
                   "state, sha256, discovered_at, updated_at) VALUES (?, 'S1', ?, ?, 0, 0, ?, "
                   "'e3b0', '', '')", (clip_id, clip_id, clip_id, state))
    db.execute("INSERT INTO custody_log (seq, at, kind, clip_id, body, leaf) VALUES "
               "(1, '', 'clip.duplicate', 'dup', ?, x'00')",
               (json.dumps({"from": "copying", "to": "duplicate", "sha256": "e3b0",
                            "duplicate_of": "orig"}),))
    db.commit()
    db.close()
    store = Store(tmp_path / "state.db", station_id="ST-1")
    assert {r["clip_id"]: r["duplicate_of"] for r in store.clips()} == {"dup": "orig",
                                                                         "orig": None}


def test_a_duplicate_is_held_on_its_camera_as_long_as_the_clip_it_duplicates(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[officers]\nhold_release_until_verified = true\n")
    cam = camera(config, clips=1)
    (original_file,) = (cam / "DCIM").rglob("*.MP4")
    copy = original_file.with_name("ZCOPY.MP4")
    copy.write_bytes(original_file.read_bytes())
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        original = next(r for r in store.clips() if r["state"] == "sealed")
        _acknowledge(config, original["clip_id"])
        (device,) = sim_devices(station)
        # The original's officer is not verified: neither copy leaves the camera.
        assert release_acknowledged(config, store, device, device.identify()) == []
        db = sqlite3.connect(config.data_dir / "state.db")
        db.execute("UPDATE clips SET officer_status = 'valid' WHERE clip_id = ?",
                   (original["clip_id"],))
        db.commit()
        db.close()
        # Verified: both go, the duplicate under its original's verdict.
        assert len(release_acknowledged(config, store, device, device.identify())) == 2
    assert not copy.exists() and not original_file.exists()
