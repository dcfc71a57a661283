"""Offloading docked cameras: the happy path and every bad input, with what the user sees."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.custody import dsse
from agent.custody.keys import load_certificate
from drivers.base import Recording
from drivers.simulated import SimulatedDevice
from tests.support.stations import FaultyDevice, camera, gone_after, running_station, sim_devices

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_files(cam: Path) -> dict[str, str]:
    return {str(p.relative_to(cam)): _sha(p) for p in sorted((cam / "DCIM").rglob("*"))
            if p.is_file()}


def _vault_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "vault" / "sha256").rglob("*") if p.is_file()]


def test_dock_offload_seal_end_to_end(station_config: Callable[..., Config],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = station_config()
    cam = camera(config, clips=5, serial="SIM0007", officer_id="012345")
    sources = _source_files(cam)
    assert len(sources) == 5
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary
        report = summary.reports[0]
        assert (report.serial, report.new, len(report.copied)) == ("SIM0007", 5, 5)
        rows = station.store.clips()  # type: ignore[union-attr]
    assert sorted(r["path"] for r in rows) == sorted(sources)
    cert = load_certificate(config.data_dir / "keys" / "station.pem")
    for row in rows:
        assert row["state"] == "sealed"
        assert row["sha256"] == sources[row["path"]]
        assert row["verified"] == 1
        vault_obj = config.data_dir / "vault" / "sha256" / row["sha256"][:2] / row["sha256"][2:4] / row["sha256"]
        assert _sha(vault_obj) == row["sha256"]
        media = json.loads(row["media"])
        assert media["decodable"] is True and media["width"] == 160 and media["height"] == 120
        envelope = json.loads(row["manifest"])
        from agent.custody.keys import keyid_of
        pub = cert.public_key()
        payload = dsse.verify_envelope(envelope, {keyid_of(pub): pub},  # type: ignore[arg-type, dict-item]
                                       expected_type=dsse.MANIFEST)
        manifest = json.loads(payload)
        assert manifest["file"]["digests"]["sha256"] == row["sha256"]
        assert manifest["device"]["serial"] == "SIM0007"
        assert manifest["officer"]["id"] == "012345"
        assert manifest["station"]["id"] == "ST-0001"
    assert len(_vault_files(config.data_dir)) == 5
    assert list((config.data_dir / "vault" / "incoming").iterdir()) == []
    # What the officer's supervisor sees.
    assert main(["clips", "--config", str(config.source)]) == 0
    out = capsys.readouterr().out
    for path, sha in sources.items():
        assert Path(path).name in out and sha in out
    assert "5 clips; vault: " in out


def test_a_second_dock_ingests_nothing_twice(station_config: Callable[..., Config]) -> None:
    config = station_config()
    camera(config, clips=3)
    with running_station(config) as station:
        first = station.run_once().reports[0]
        second = station.run_once().reports[0]
        assert (first.new, second.new, second.already_ingested) == (3, 0, 3)
        assert len(station.store.clips()) == 3  # type: ignore[union-attr]


def test_same_bytes_under_another_name_are_a_duplicate(station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=2)
    first = sorted((cam / "DCIM").rglob("*.*"))[0]
    (first.parent / "COPY_OF_CLIP.MP4").write_bytes(first.read_bytes())
    with running_station(config) as station:
        report = station.run_once().reports[0]
        store = station.store
        assert store is not None
        dup = [r for r in store.clips() if r["state"] == "duplicate"]
        assert len(dup) == 1 and len(report.duplicates) == 1
        original = store.query_one("SELECT clip_id FROM clips WHERE sha256 = ? AND state = 'sealed'",
                                   (dup[0]["sha256"],))
        entry = store.query_one("SELECT body FROM custody_log WHERE clip_id = ? AND kind = 'clip.duplicate'",
                                (dup[0]["clip_id"],))
        assert original is not None and entry is not None
        assert json.loads(entry["body"])["duplicate_of"] == original["clip_id"]
    assert len(_vault_files(config.data_dir)) == 2


def test_symlinks_and_special_files_are_skipped_and_reported(
        station_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    secret = tmp_path / "outside.mp4"
    secret.write_bytes(b"not on the camera")
    os.symlink(secret, cam / "DCIM" / "LINK.MP4")
    os.symlink("/", cam / "DCIM" / "ROOTDIR")
    os.mkfifo(cam / "DCIM" / "PIPE.MP4")
    assert main(["run", "--once", "--config", str(config.source)]) == 0
    out = capsys.readouterr().out
    assert "1 copied" in out and "3 skipped" in out
    with running_station(config) as station:
        store = station.store
        assert store is not None
        assert [r["name"] for r in store.clips()] != [] and all(
            r["name"] not in ("LINK.MP4", "PIPE.MP4") for r in store.clips())
        entry = store.query_one("SELECT body FROM custody_log WHERE kind = 'device.skipped'")
        assert entry is not None
        skipped = {e["path"]: e["reason"] for e in json.loads(entry["body"])["first"]}
    assert skipped["DCIM/LINK.MP4"].startswith("symlink")
    assert skipped["DCIM/ROOTDIR"].startswith("symlink")
    assert skipped["DCIM/PIPE.MP4"].startswith("special file")
    assert _sha(secret) not in {p.name for p in _vault_files(config.data_dir)}


def test_unsafe_names_from_a_device_are_refused(station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        assert isinstance(inner, SimulatedDevice)
        device = FaultyDevice(inner, extra=[
            Recording(path="../../etc/passwd", size=10, mtime=0.0),
            Recording(path="/etc/shadow", size=10, mtime=0.0),
            Recording(path="DCIM/a\x00b.mp4", size=10, mtime=0.0),
        ])
        report = station.offloader.offload(device)  # type: ignore[union-attr]
        reasons = {s["path"]: s["reason"] for s in report.skipped}
        assert reasons["../../etc/passwd"] == "unsafe name: '..' path component"
        assert reasons["/etc/shadow"] == "unsafe name: absolute path"
        assert reasons["DCIM/a\x00b.mp4"] == "unsafe name: NUL character in name"
        assert len(report.copied) == 1
        assert {r["path"] for r in station.store.clips()} == set(_source_files(cam))  # type: ignore[union-attr]


def test_gbk_names_are_decoded_and_flagged(station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    video = sorted((cam / "DCIM").rglob("*.*"))[0]
    raw = "执法记录仪_现场.mp4".encode("gbk")
    target = os.path.join(os.fsencode(video.parent), raw)
    with open(target, "wb") as f:
        f.write(video.read_bytes() + b"distinct")
    with running_station(config) as station:
        station.run_once()
        rows = {r["name"]: r for r in station.store.clips()}  # type: ignore[union-attr]
    row = rows["执法记录仪_现场.mp4"]
    assert "name.gbk" in json.loads(row["flags"])
    assert row["state"] == "sealed"
    with open(target, "rb") as f:
        assert row["sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_zero_length_file_is_ingested_with_flags(station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    (cam / "DCIM" / "EMPTY.MP4").write_bytes(b"")
    with running_station(config) as station:
        station.run_once()
        row = next(r for r in station.store.clips() if r["name"] == "EMPTY.MP4")  # type: ignore[union-attr]
    assert row["state"] == "sealed"
    assert row["sha256"] == EMPTY_SHA
    flags = json.loads(row["flags"])
    assert "file.empty" in flags and "media.empty" in flags


def _big_file(cam: Path, name: str = "BIG.MP4", size: int = 1024 * 1024) -> Path:
    path = cam / "DCIM" / name
    path.write_bytes(os.urandom(size))
    return path


def test_file_changing_during_every_copy_is_quarantined_and_kept(
        station_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\nchange_retries = 2\n")
    cam = camera(config, clips=1)
    big = _big_file(cam)

    def keep_recording(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4") and done == 128 * 1024:
            with open(big, "ab") as f:
                f.write(b"more frames")

    with running_station(config) as station:
        inner = sim_devices(station)[0]
        report = station.offloader.offload(FaultyDevice(inner, on_read=keep_recording))  # type: ignore[union-attr]
        row = next(r for r in station.store.clips() if r["name"] == "BIG.MP4")  # type: ignore[union-attr]
        attempts = row["copy_attempts"]
    assert row["state"] == "quarantined"
    assert attempts == 3
    assert row["reason"].startswith("file changed while being copied")
    assert report.quarantined == [row["clip_id"]]
    # The last copy is kept in the vault: it is evidence too.
    assert row["sha256"] in {p.name for p in _vault_files(config.data_dir)}
    assert main(["clips", "--config", str(config.source), "--state", "quarantined"]) == 0
    assert "quarantined (file changed while being copied" in capsys.readouterr().out
    # Nothing sealed to send again: requeue says what happens instead, and changes nothing.
    assert main(["requeue", "--config", str(config.source), "--clip", row["clip_id"]]) == 1
    err = capsys.readouterr().err
    assert f"clip {row['clip_id']} was never sealed (file changed while being copied" in err
    assert "copied again by itself the next time its camera docks (a file that changed " \
        "on the camera since becomes a new clip); the bytes read so far stay in the vault" in err
    assert err.rstrip().endswith("nothing was requeued")
    with running_station(config) as station:
        assert station.store is not None
        assert station.store.clip(row["clip_id"])["state"] == "quarantined"


def test_a_clip_read_short_every_time_is_copied_whole_at_the_next_dock(
        station_config: Callable[..., Config]) -> None:
    # A flaky USB bridge ends the stream early: same size and mtime on the camera,
    # fewer bytes read.  Quarantined with what was read; the next dock copies it whole.
    config = station_config("[ingest]\nchunk_kib = 64\nchange_retries = 1\n")
    cam = camera(config, clips=1)
    big = _big_file(cam)

    def short(rec: Recording, done: int) -> bool:
        return rec.path.endswith("BIG.MP4") and done >= 128 * 1024

    with running_station(config) as station:
        store = station.store
        assert store is not None
        inner = sim_devices(station)[0]
        station.offloader.offload(FaultyDevice(inner, on_read=short))  # type: ignore[union-attr]
        first = next(r for r in store.clips() if r["name"] == "BIG.MP4")
        assert first["state"] == "quarantined"
        assert "bytes read of" in first["reason"]
        kept = first["sha256"]
        report = station.run_once().reports[0]
        row = store.clip(first["clip_id"])
    assert report.new == 0 and report.copied == [first["clip_id"]]
    assert row["state"] == "sealed"
    assert row["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest() != kept
    # The short copy is evidence of what happened: it stays in the vault.
    assert {kept, row["sha256"]} <= {p.name for p in _vault_files(config.data_dir)}


def test_file_that_settles_is_copied_on_retry(station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=1)
    big = _big_file(cam)
    changed = []

    def finish_once(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4") and done == 64 * 1024 and not changed:
            changed.append(True)
            with open(big, "ab") as f:
                f.write(b"final frames")

    with running_station(config) as station:
        inner = sim_devices(station)[0]
        station.offloader.offload(FaultyDevice(inner, on_read=finish_once))  # type: ignore[union-attr]
        row = next(r for r in station.store.clips() if r["name"] == "BIG.MP4")  # type: ignore[union-attr]
    assert row["state"] == "sealed"
    assert row["sha256"] == _sha(big)
    assert row["size"] == big.stat().st_size


def test_device_removed_mid_copy_resumes_on_next_dock(station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=2)
    big = _big_file(cam, "AAA_FIRST.MP4")
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        report = station.offloader.offload(FaultyDevice(inner, on_read=gone_after(200_000)))  # type: ignore[union-attr]
        assert any(e.startswith("device removed") for e in report.errors)
        store = station.store
        assert store is not None
        row = next(r for r in store.clips() if r["name"] == "AAA_FIRST.MP4")
        assert row["state"] == "discovered"
        assert list((config.data_dir / "vault" / "incoming").iterdir()) == []
        assert not _vault_files(config.data_dir) or row["sha256"] is None
        summary = station.run_once()
        assert summary.ok
        rows = store.clips()
    assert {r["state"] for r in rows} == {"sealed"}
    assert len(rows) == 3
    assert next(r for r in rows if r["name"] == "AAA_FIRST.MP4")["sha256"] == _sha(big)
    assert len(_vault_files(config.data_dir)) == 3


def test_run_once_exit_code_reports_failures(station_config: Callable[..., Config],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = station_config()
    (config.devices["simulated"].root / "BROKEN").mkdir()
    (config.devices["simulated"].root / "BROKEN" / "BWC_DEVICE.json").write_text("{not json")
    assert main(["run", "--once", "--config", str(config.source)]) == 1
    out = capsys.readouterr().out
    assert "identify failed" in out and "BWC_DEVICE.json" in out


def test_one_agent_per_data_dir(station_config: Callable[..., Config]) -> None:
    from agent.errors import StoreError
    from agent.station import Station

    config = station_config()
    with running_station(config):
        second = Station(config)
        with pytest.raises(StoreError, match="another bwc-agent is running on"):
            second.start(watch=False)
    with running_station(config):  # the lock went with the first agent
        pass


def test_identity_is_fixed_when_the_clip_is_discovered(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=1, officer_id="000111", officer_name="王一")
    _big_file(cam, "AAA_FIRST.MP4")
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        station.offloader.offload(FaultyDevice(inner, on_read=gone_after(200_000)))  # type: ignore[union-attr]
    # The camera is handed to another officer before it is docked again.
    ident = cam / "BWC_DEVICE.json"
    doc = json.loads(ident.read_text(encoding="utf-8"))
    doc.update(officer_id="000222", officer_name="李二", unit_name="另一个大队")
    ident.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with running_station(config) as station:
        assert station.run_once().ok
        row = next(r for r in station.store.clips() if r["name"] == "AAA_FIRST.MP4")  # type: ignore[union-attr]
    manifest = json.loads(dsse.b64decode(json.loads(row["manifest"])["payload"]))
    assert manifest["officer"]["id"] == "000111"
    assert manifest["officer"]["name"] == "王一"
    assert manifest["officer"]["unit_name"] != "另一个大队"


def test_an_unreadable_clip_is_tried_again_on_the_next_dock(
        station_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]) -> None:
    from agent.errors import DeviceError

    config = station_config("[ingest]\nchunk_kib = 64\nchange_retries = 0\n")
    cam = camera(config, clips=1)
    _big_file(cam, "BAD_SECTOR.MP4")

    def bad_sector(rec: Recording, done: int) -> None:
        if rec.path.endswith("BAD_SECTOR.MP4") and done >= 128 * 1024:
            raise DeviceError("read error at sector 1234 (EIO)")

    with running_station(config) as station:
        inner = sim_devices(station)[0]
        station.offloader.offload(FaultyDevice(inner, on_read=bad_sector))  # type: ignore[union-attr]
        store = station.store
        assert store is not None
        row = next(r for r in store.clips() if r["name"] == "BAD_SECTOR.MP4")
        assert row["state"] == "quarantined" and "unreadable on the device" in row["reason"]
        assert main(["requeue", "--config", str(config.source), "--clip", row["clip_id"]]) == 1
        err = capsys.readouterr().err
        assert f"clip {row['clip_id']} was never sealed (unreadable on the device" in err
        assert "copied again by itself the next time its camera docks" in err
        report = station.run_once().reports[0]
        row = next(r for r in store.clips() if r["name"] == "BAD_SECTOR.MP4")
    assert row["state"] == "sealed", "read fine this time: offloaded"
    assert report.new == 0 and len(report.copied) == 1


def test_docking_again_during_a_session_runs_another_session(
        station_config: Callable[..., Config]) -> None:
    import threading

    config = station_config()
    camera(config, clips=2)
    gate = threading.Event()
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        slow = FaultyDevice(inner, on_read=lambda _r, _d: gate.wait(10) and None)
        first = station.dock(slow)
        second = station.dock(inner)  # the camera is plugged back in meanwhile
        assert first is not None and second is first
        gate.set()
        first.result(timeout=20)
        deadline = __import__("time").monotonic() + 20
        while len(station.reports) < 2 and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.02)
        assert len(station.reports) == 2, "a second session followed the first"
        assert {r["state"] for r in station.store.clips()} == {"sealed"}  # type: ignore[union-attr]


def test_stopping_the_agent_cancels_a_copy_and_keeps_the_clip_for_later(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=1)
    big = _big_file(cam, "AAA_LONG.MP4")
    _big_file(cam, "ZZZ_LATER.MP4", size=1000)
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None

        def sigterm_midway(rec: Recording, done: int) -> None:
            if rec.path.endswith("AAA_LONG.MP4") and done >= 256 * 1024:
                offloader.stopping.set()  # what SIGTERM does through Station.stop()

        inner = sim_devices(station)[0]
        report = offloader.offload(FaultyDevice(inner, on_read=sigterm_midway))
        store = station.store
        assert store is not None
        row = next(r for r in store.clips() if r["name"] == "AAA_LONG.MP4")
        assert any("agent is stopping" in e for e in report.errors), report.errors
        assert row["state"] == "discovered"
        assert list((config.data_dir / "vault" / "incoming").iterdir()) == []
        later = next(r for r in store.clips() if r["name"] == "ZZZ_LATER.MP4")
        assert later["state"] == "discovered" and later["copy_attempts"] == 0, \
            "nothing else is started once stopping"
    with running_station(config) as station:
        assert station.run_once().ok
        row = next(r for r in station.store.clips() if r["name"] == "AAA_LONG.MP4")  # type: ignore[union-attr]
    assert row["state"] == "sealed" and row["sha256"] == _sha(big)


def test_a_clip_whose_sealing_fails_is_sealed_by_the_checkpoint_timer(
        station_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import StoreError

    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        custody, store = station.custody, station.store
        assert custody is not None and store is not None
        real_seal = custody.seal

        def busy(clip_id: str) -> None:
            raise StoreError("database is locked (an export was writing)")

        monkeypatch.setattr(custody, "seal", busy)
        report = station.offloader.offload(sim_devices(station)[0])  # type: ignore[union-attr]
        (clip_id,) = report.copied
        assert store.clip(clip_id)["state"] == "copied"
        alerts = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
        assert [a["code"] for a in alerts] == ["seal.failed"]
        assert "is copied and verified but not sealed yet: database is locked" \
            in alerts[0]["message"]
        # One clip failing again does not hold back the others.
        assert custody.seal_pending() == 0
        # One tick of the checkpoint timer (its wait returns False once, then the stop).
        monkeypatch.setattr(custody, "seal", real_seal)
        ticks = iter([False, True])
        monkeypatch.setattr(custody._stop, "wait", lambda _t: next(ticks))
        custody._run_timer()
        assert store.clip(clip_id)["state"] == "sealed"


def test_a_damaged_vault_object_is_replaced_by_a_fresh_copy_of_the_same_bytes(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    cam = camera(config, clips=1)
    (original,) = sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file())
    data = original.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with running_station(config) as station:
        store = station.store
        assert store is not None and station.run_once().ok
        obj = config.data_dir / "vault" / "sha256" / digest[:2] / digest[2:4] / digest
        os.chmod(obj, 0o644)
        with open(obj, "r+b") as f:  # the vault disk damages the stored clip
            f.seek(100)
            f.write(b"\xff\xff\xff")
        os.chmod(obj, 0o444)
        # The same bytes are docked again under another name (a copy the officer made).
        (original.parent / "COPY0001.MP4").write_bytes(data)
        report = station.run_once().reports[0]
        assert len(report.duplicates) == 1  # same bytes: a duplicate, whose copy repairs
        alerts = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == digest  # repaired
    (aside,) = (config.data_dir / "vault" / "corrupt").iterdir()
    assert aside.name.startswith(f"{digest}.") and aside.read_bytes() != data
    assert [a["code"] for a in alerts] == ["vault.repaired"]
    assert f"vault object {digest} no longer held its bytes" in alerts[0]["message"]
    assert main(["verify", str(config.data_dir)]) == 0


def test_one_camera_under_two_handles_is_offloaded_once(
        station_config: Callable[..., Config]) -> None:
    import shutil
    import threading

    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=2)
    _big_file(cam)
    # Re-plugged while its old mount lingers: the same camera under a second handle.
    shutil.copytree(cam, cam.with_name(cam.name + "-replugged"), symlinks=True)
    halfway = threading.Event()
    go_on = threading.Event()

    def pause_first_copy(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4") and done >= 128 * 1024 and not halfway.is_set():
            halfway.set()
            go_on.wait(10)

    with running_station(config) as station:
        first, second = sorted(sim_devices(station), key=lambda d: d.handle)
        assert first.identify().serial == second.identify().serial
        one = station.dock(FaultyDevice(first, on_read=pause_first_copy))
        assert one is not None and halfway.wait(10)
        two = station.dock(second)  # arrives while the first session copies
        assert two is not None and two is not one
        go_on.set()
        reports = [one.result(timeout=30), two.result(timeout=30)]
        store = station.store
        assert store is not None
        rows = store.clips()
    assert sorted(len(r.copied) for r in reports) == [0, 3]
    assert sorted(r.already_ingested for r in reports) == [0, 3]
    assert {r["state"] for r in rows} == {"sealed"} and len(rows) == 3
    assert {r["copy_attempts"] for r in rows} == {1}


def test_a_camera_left_docked_after_a_full_disk_is_offloaded_once_there_is_room(
        station_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    config = station_config("[ingest]\nmin_free_mb = 100\n")
    camera(config, clips=2)
    with running_station(config) as station:
        vault, store = station.vault, station.store
        assert vault is not None and store is not None
        free = {"bytes": 10 * 2**20}  # under the 100 MB reserve
        monkeypatch.setattr(vault, "free_bytes", lambda: free["bytes"])
        device = sim_devices(station)[0]
        first = station.dock(device)
        assert first is not None
        report = first.result(timeout=30)
        assert any("disk full" in e for e in report.errors)
        assert {r["state"] for r in store.clips()} == {"discovered"}
        assert station.resume_unfinished() == []  # still full: no new session, no new alert
        free["bytes"] = 10 * 2**30  # a purge, or an operator, made room
        assert station.resume_unfinished() == [device.handle]
        with station._active_lock:
            again = station._active[device.handle]
        assert again is not first and again.result(timeout=30).errors == []
        assert {r["state"] for r in store.clips()} == {"sealed"}
        assert station.resume_unfinished() == []  # nothing left to copy
        alerts = [r["body"] for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert len(alerts) == 1 and "disk.full" in alerts[0]


def test_an_unreadable_directory_on_the_camera_alerts_and_fails_the_run(
        station_config: Callable[..., Config]) -> None:
    from drivers.base import Skipped

    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        real = inner.recordings

        def with_unreadable() -> Any:
            listing = real()
            listing.skipped.append(Skipped("DCIM/100EVENT", "unreadable directory: "
                                                            "Permission denied"))
            listing.skipped.append(Skipped("DCIM/LINK.MP4", "symlink, not followed"))
            return listing

        inner.recordings = with_unreadable
        report = station.offloader.offload(inner)  # type: ignore[union-attr]
        store = station.store
        assert store is not None
        alerts = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert report.failed and len(report.copied) == 1
    assert report.unreadable == [{"path": "DCIM/100EVENT",
                                  "reason": "unreadable directory: Permission denied"}]
    assert [a["code"] for a in alerts] == ["device.unreadable"]
    assert alerts[0]["message"] == ("1 entry on SIM0001 could not be read and may hold "
                                    "recordings: DCIM/100EVENT: unreadable directory: "
                                    "Permission denied")


def test_a_camera_directory_named_in_another_code_page_is_offloaded(
        station_config: Callable[..., Config]) -> None:
    import shutil

    config = station_config()
    cam = camera(config, clips=1)
    # A volume label in the camera's code page (GBK "执法仪"), not UTF-8.
    odd = Path(os.fsdecode(os.fsencode(cam.parent) + b"/" + "执法仪".encode("gbk")))
    shutil.move(cam, odd)
    with running_station(config) as station:
        summary = station.run_once()
        store = station.store
        assert store is not None
        (dock,) = store.query("SELECT handle FROM docks")
    assert summary.ok, summary.failures
    assert summary.reports[0].handle == dock["handle"] and dock["handle"].endswith("/执法仪")
    assert len(summary.reports[0].copied) == 1


def test_only_sessions_stopped_by_a_full_disk_are_resumed(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchunk_kib = 64\n")
    cam = camera(config, clips=1)
    _big_file(cam)
    with running_station(config) as station:
        inner = sim_devices(station)[0]
        # Pulled out mid-copy but still listed (a lingering mount): the clip stays
        # discovered, and this is not for the resume timer to retry every 2 minutes.
        future = station.dock(FaultyDevice(inner, on_read=gone_after(128 * 1024)))
        assert future is not None
        report = future.result(timeout=30)
        assert any("device removed" in e for e in report.errors)
        store = station.store
        assert store is not None
        assert "discovered" in {r["state"] for r in store.clips()}
        assert station.resume_unfinished() == []
