"""Copying one recording: what each attempt records, what the station's screen is told, and
how a copy ends (copied, duplicate, quarantined, back to discovered), rule by rule.

A real station with a simulated camera of real files; faults are injected into the
camera's streams (tests/support/stations.FaultyDevice); the station's screen is replaced
by an observer that records every call the copier makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clipcopy import mtime_ms
from agent.config import Config
from agent.errors import DeviceError
from agent.progress import NullObserver
from drivers.base import Recording
from tests.support.stations import FaultyDevice, camera, gone_after, running_station, sim_devices

CHUNK = 64 * 1024


class Screen(NullObserver):
    """The station's screen as the copier sees it: every phase and byte count, in order."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, str, str, str]] = []  # handle, clip, path, phase
        self.bytes: list[tuple[str, str, int]] = []

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        self.phases.append((handle, clip_id, rec.path, phase))

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None:
        self.bytes.append((handle, clip_id, done))


def _entries(store: Any, clip_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The clip's state changes (its discovery aside), in order."""
    rows = [(r["kind"], json.loads(r["body"])) for r in store.query(
        "SELECT kind, body FROM custody_log WHERE clip_id = ? ORDER BY seq", (clip_id,))]
    return [(kind, body) for kind, body in rows if "from" in body]


def _alerts(store: Any) -> list[dict[str, Any]]:
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    return [e["data"] for e in events if e["type"] == "alert"]


@contextlib.contextmanager
def _offload(config: Config, on_read: Callable[[Recording, int], bool | None] | None = None
             ) -> Iterator[tuple[Any, Any, Screen, str, Any]]:
    """Offload the simulated camera once through a FaultyDevice; (report, store, screen,
    the camera's handle, the row of BIG.MP4) while the station runs."""
    screen = Screen()
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None and station.store is not None
        offloader.copier.observer = offloader.copier.checker.observer = screen
        inner = sim_devices(station)[0]
        report = offloader.offload(FaultyDevice(inner, on_read=on_read))
        store = station.store
        row = next(r for r in store.clips() if r["name"] == "BIG.MP4")
        yield report, store, screen, inner.handle, row


def _big(config: Config, size: int = 5 * CHUNK + 100) -> Path:
    cam = camera(config, clips=1)
    path = cam / "DCIM" / "BIG.MP4"
    path.write_bytes(os.urandom(size))
    return path


def test_a_file_changing_at_every_attempt_is_retried_then_quarantined_with_what_was_read(
        station_config: Callable[..., Config]) -> None:
    """Rule: a file that changes while it is copied is copied again up to change_retries
    times, each attempt a custody entry with its number and each retry one with the
    reason; the last copy is kept and the clip quarantined with its digest, the time of
    the copy and an alert naming the clip and the reason; the screen shows each attempt
    and then the failure, for this camera, clip and file."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\nchange_retries = 2\n")
    big = _big(config)
    size = big.stat().st_size

    def keep_recording(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4") and done == 2 * CHUNK:
            with open(big, "ab") as f:
                f.write(b"more frames")

    with _offload(config, keep_recording) as (report, store, screen, handle, row):
        clip_id = row["clip_id"]
        assert row["state"] == "quarantined" and report.quarantined == [clip_id]
        assert row["sha256"] is not None and row["copied_at"] is not None
        entries = [(k, b) for k, b in _entries(store, clip_id)
                   if k in ("clip.copying", "clip.discovered", "clip.quarantined")]
        changed = "file changed while being copied: "
        retried = [(k, b["attempt"] if k == "clip.copying" else
                    b["reason"].startswith(changed) and b["reason"].endswith("; retrying"))
                   for k, b in entries]
        reason = entries[-1][1]["reason"]
        # Each attempt reads what was there when it began plus the 11 bytes appended during it.
        assert reason == (f"{changed}{size + 33} bytes read of {size + 22}; size {size + 22} -> "
                          f"{size + 33} during the copy; mtime changed during the copy")
        assert entries[1][1]["reason"] == (
            f"{changed}{size + 11} bytes read of {size}; size {size} -> {size + 11} during the "
            "copy; mtime changed during the copy; retrying")
        assert retried == [
            ("clip.copying", 1), ("clip.discovered", True),
            ("clip.copying", 2), ("clip.discovered", True),
            ("clip.copying", 3), ("clip.quarantined", False)]
        assert entries[-1][1] == {"from": "copying", "to": "quarantined", "reason": reason,
                                  "sha256": row["sha256"]}
        assert row["reason"] == reason
        assert {"code": "clip.quarantined", "clip_id": clip_id, "message": reason} in \
            _alerts(store)
        mine = [p for p in screen.phases if p[1] == clip_id]
        assert mine == [(handle, clip_id, "DCIM/BIG.MP4", "copying")] * 3 + [
            (handle, clip_id, "DCIM/BIG.MP4", "failed")]


def test_the_screen_counts_the_bytes_of_each_chunk_as_they_are_read(
        station_config: Callable[..., Config]) -> None:
    """Rule: while a clip is copied the screen is told the bytes read so far, for that
    camera and clip, after each chunk of ingest.chunk_kib KiB."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    big = _big(config)
    with _offload(config) as (report, store, screen, handle, row):
        size = big.stat().st_size
        counts = [n for h, c, n in screen.bytes if c == row["clip_id"] and h == handle]
        assert counts == [CHUNK * i for i in range(1, size // CHUNK + 1)] + [size]
        assert row["clip_id"] in report.copied
        # "probing" is shown only when the verify ends before the probe (they run at once).
        phases = [p for p in screen.phases if p[1] == row["clip_id"] and p[3] != "probing"]
        assert phases == [(handle, row["clip_id"], "DCIM/BIG.MP4", phase) for phase in
                          ("copying", "verifying", "sealing", "done")]
        (copied,) = [b for k, b in _entries(store, row["clip_id"]) if k == "clip.copied"]
        assert (copied["size"], copied["sha256"]) == (size, row["sha256"])


def test_a_recording_of_bytes_already_copied_is_a_duplicate_and_done(
        station_config: Callable[..., Config]) -> None:
    """Rule: a second recording holding bytes already in the vault is reported as a
    duplicate of it by its clip id, and shown done on the screen."""
    import sqlite3
    import time

    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    big = _big(config)
    (big.parent / "BIG2.MP4").write_bytes(big.read_bytes())

    def after_the_first_is_verified(rec: Recording, done: int) -> None:
        # The bytes are "already copied" once the first copy's digest is recorded (its
        # verify ended); copied back to back, whichever verify ends first is the original.
        if rec.path.endswith("BIG2.MP4") and done == 0:
            db = sqlite3.connect(config.data_dir / "state.db")
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and db.execute(
                        "SELECT sha256 FROM clips WHERE name = 'BIG.MP4'").fetchone() in \
                        (None, (None,)):
                    time.sleep(0.01)
            finally:
                db.close()

    with _offload(config, after_the_first_is_verified) as (report, store, screen, handle, row):
        second = next(r for r in store.clips() if r["name"] == "BIG2.MP4")
        assert second["state"] == "duplicate" and second["duplicate_of"] == row["clip_id"]
        assert report.duplicates == [second["clip_id"]]
        assert (handle, second["clip_id"], "DCIM/BIG2.MP4", "done") in screen.phases


def test_an_unreadable_file_is_retried_then_quarantined_without_a_copy(
        station_config: Callable[..., Config]) -> None:
    """Rule: a recording the camera cannot read is tried change_retries more times (each
    retry recorded with the read error) and then quarantined with no digest and no copy."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\nchange_retries = 1\n")
    _big(config)

    def unreadable(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4") and done >= CHUNK:
            raise DeviceError("bad sector")

    with _offload(config, unreadable) as (report, store, _screen, _handle, row):
        assert row["state"] == "quarantined" and report.quarantined == [row["clip_id"]]
        assert (row["sha256"], row["copied_at"]) == (None, None)
        entries = _entries(store, row["clip_id"])
        (retry,) = [b for k, b in entries if k == "clip.discovered"]
        assert retry["reason"].startswith("read failed, retrying: ")
        assert "bad sector" in retry["reason"]
        (last,) = [b for k, b in entries if k == "clip.quarantined"]
        assert last["reason"].startswith("unreadable on the device: ") and last["sha256"] is None


def test_a_camera_unplugged_mid_copy_puts_the_clip_back_saying_why(
        station_config: Callable[..., Config]) -> None:
    """Rule: a copy cut short by the camera's removal puts the clip back to discovered with
    the reason recorded; nothing of it is kept."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    with _offload(config, gone_after(2 * CHUNK)) as (_report, store, _screen, _handle, row):
        assert row["state"] == "discovered" and row["sha256"] is None
        (back,) = [b for k, b in _entries(store, row["clip_id"]) if k == "clip.discovered"]
        assert back == {"from": "copying", "to": "discovered",
                        "reason": "device removed during copy: camera unplugged (USB disconnect)"}


def test_a_copy_stopped_with_the_station_puts_the_clip_back_saying_why(
        station_config: Callable[..., Config]) -> None:
    """Rule: a copy stopped because the agent stops puts the clip back to discovered, with
    the reason that it is copied again at the next dock."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    screen = Screen()
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None and station.store is not None
        offloader.copier.observer = offloader.copier.checker.observer = screen

        def stop(rec: Recording, done: int) -> None:
            if rec.path.endswith("BIG.MP4") and done >= CHUNK:
                offloader.stopping.set()

        offloader.offload(FaultyDevice(sim_devices(station)[0], on_read=stop))
        row = next(r for r in station.store.clips() if r["name"] == "BIG.MP4")
        back = [b for k, b in _entries(station.store, row["clip_id"])
                if k == "clip.discovered"]
    assert row["state"] == "discovered"
    assert back == [{"from": "copying", "to": "discovered",
                     "reason": "agent stopping; copied again at the next dock"}]


@pytest.mark.parametrize(("seconds", "ms"), [(1.5, 1500), (1700000000.1234, 1700000000123),
                                             (0.0, 0)])
def test_modification_times_are_compared_in_milliseconds(seconds: float, ms: int) -> None:
    """Rule: a camera file's modification time is kept and compared to the millisecond."""
    assert mtime_ms(seconds) == ms


def test_a_failure_on_the_stations_side_leaves_no_partial_copy(
        station_config: Callable[..., Config]) -> None:
    """Rule: a copy that fails on the station's side (its vault or database) is not
    retried against the camera, and leaves no partial file in the vault's incoming/."""
    from agent.errors import StoreError

    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    reads: list[int] = []

    def failing_vault(rec: Recording, done: int) -> None:
        if rec.path.endswith("BIG.MP4"):
            reads.append(done)
            if done >= 2 * CHUNK:
                raise StoreError("the vault disk failed")

    with _offload(config, failing_vault) as (report, _store, _screen, _handle, row):
        assert row["state"] != "copied" and row["sha256"] is None
        assert any("the vault disk failed" in e for e in report.errors), report.errors
        assert list((config.data_dir / "vault" / "incoming").iterdir()) == []
    assert reads.count(0) == 1  # one attempt: the camera is not read again


def _recording_fails(config: Config, error: Exception) -> tuple[Any, Any, Any, str, Screen,
                                                                 list[dict[str, Any]]]:
    """Offload once with recording the probed copy failing with ``error`` (the store's side);
    (report, row of BIG.MP4, its state changes, the camera's serial, screen, alerts)."""
    screen = Screen()
    with running_station(config) as station:
        offloader = station.offloader
        store = station.store
        assert offloader is not None and store is not None
        offloader.copier.observer = offloader.copier.checker.observer = screen

        def record(clip: Any, *_args: Any) -> None:
            if clip.rec.path.endswith("BIG.MP4"):
                raise error

        offloader.copier.checker._record_copied = record  # type: ignore[method-assign]
        device = sim_devices(station)[0]
        report = offloader.offload(device)
        row = next(r for r in store.clips() if r["name"] == "BIG.MP4")
        return (report, row, _entries(store, row["clip_id"]), device.identify().serial,
                screen, _alerts(store))


def test_a_full_database_disk_stops_ingest_with_an_alert_and_keeps_the_rest_on_the_camera(
        station_config: Callable[..., Config]) -> None:
    """Rule: when the database's disk is full a copied clip cannot be recorded: ingest
    stops for this camera (the session says the database is full), an alert says so
    and that the recordings stay on the camera, and the clip is shown failed."""
    from agent.errors import StoreFullError

    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    report, row, _changes, serial, screen, alerts = _recording_fails(
        config, StoreFullError("database or disk is full"))
    message = (f"disk full: the station database cannot be written (database or disk is "
               f"full); ingest stopped, the recordings stay on {serial}")
    assert report.stopped_full == "database" and message in report.errors
    assert {"code": "disk.full", "serial": serial, "message": message} in alerts
    assert [p for p in screen.phases if p[1] == row["clip_id"]][-1][1:] == \
        (row["clip_id"], "DCIM/BIG.MP4", "failed")
    assert row["state"] == "copying"  # copied again by the next session; its bytes are kept


def test_a_clip_that_cannot_be_recorded_goes_back_to_discovered_with_an_alert(
        station_config: Callable[..., Config]) -> None:
    """Rule: a copied clip the station fails to record (its store) is put back to
    discovered saying why, the session's errors name its file, and an alert is raised."""
    from agent.errors import StoreError

    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    report, row, entries, serial, _screen, alerts = _recording_fails(
        config, StoreError("database is locked"))
    assert "DCIM/BIG.MP4: database is locked" in report.errors
    assert {"code": "ingest.failed", "serial": serial,
            "message": "DCIM/BIG.MP4: database is locked"} in alerts
    assert row["state"] == "discovered"
    assert entries[-1] == ("clip.discovered", {"from": "copying", "to": "discovered",
                                               "reason": "ingest failed: database is locked"})


class _ChangesAfterListing(FaultyDevice):
    """A camera whose BIG.MP4 grows right after it was listed (the camera still wrote it)."""

    def __init__(self, inner: Any, big: Path) -> None:
        super().__init__(inner)
        self.big = big

    def recordings(self) -> Any:
        listing = super().recordings()
        with open(self.big, "ab") as f:
            f.write(b"x" * 1000)
        os.utime(self.big, (1_700_000_100.25, 1_700_000_100.25))
        return listing


def test_a_file_changed_between_listing_and_copy_is_copied_as_it_is_now_and_logged(
        station_config: Callable[..., Config]) -> None:
    """Rule: a recording whose size or modification time changed after it was listed is
    copied whole as it is when the copy begins (not quarantined, not cut to the listed
    size); the clip's size and time are updated and a ``clip.changed_on_device`` entry
    says what changed (listed -> now)."""
    from agent.timeutil import rfc3339

    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    big = _big(config)
    listed_size = big.stat().st_size
    listed_mtime = big.stat().st_mtime
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None and station.store is not None
        report = offloader.offload(_ChangesAfterListing(sim_devices(station)[0], big))
        store = station.store
        row = next(r for r in store.clips() if r["name"] == "BIG.MP4")
        changed = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.changed_on_device' AND clip_id = ?",
            (row["clip_id"],))]
    import hashlib
    assert row["clip_id"] in report.copied and row["state"] == "sealed"
    assert (row["size"], row["mtime_ms"]) == (listed_size + 1000, 1_700_000_100_250)
    assert row["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert changed == [{"size": [listed_size, listed_size + 1000],
                        "mtime": [rfc3339(mtime_ms(listed_mtime) / 1000),
                                  rfc3339(1_700_000_100.25)]}]


def test_a_file_unchanged_since_listing_logs_no_change(
        station_config: Callable[..., Config]) -> None:
    """Rule: ``clip.changed_on_device`` is written only when size or time changed."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    _big(config)
    with _offload(config) as (report, store, _screen, _handle, row):
        assert row["clip_id"] in report.copied
        assert store.query("SELECT seq FROM custody_log "
                           "WHERE kind = 'clip.changed_on_device'") == []


def test_the_bytes_being_copied_are_counted_taken_until_the_copy_ends(
        station_config: Callable[..., Config]) -> None:
    """Rule: while a recording is copied its size counts as taken from the vault's free
    space (so cameras copying at once cannot overfill the disk together); the count is
    given back when the copy ends, however it ends."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    big = _big(config)
    size = big.stat().st_size
    seen: list[int] = []
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None and station.vault is not None
        copier = offloader.copier
        # A disk whose free bytes do not move (the store and the pictures write to it too).
        station.vault.free_bytes = lambda: 10**12  # type: ignore[method-assign]
        free = station.vault.free_bytes

        def during(rec: Recording, done: int) -> None:
            if rec.path.endswith("BIG.MP4") and done == CHUNK:
                seen.append(free() - copier.free_for(0))
            if rec.path.endswith("BIG.MP4") and done == 2 * CHUNK:
                raise DeviceError("bad sector")  # this attempt ends in a failed read

        offloader.offload(FaultyDevice(sim_devices(station)[0], on_read=during))
        after = free() - copier.free_for(0)
        asked = free() - copier.free_for(12345)
    # Each attempt reserved the file's size, and gave it back when its read failed.
    assert seen == [size] * (config.ingest.change_retries + 1)
    assert after == 0
    assert asked == 12345


def test_a_copy_takes_its_blocks_from_the_stations_one_budget(
        station_config: Callable[..., Config]) -> None:
    """Rule: a copy's blocks come from the vault's one block budget (which bounds the
    memory of every camera copying at once), not from a private one, and go back to it."""
    config = station_config(f"[ingest]\nchunk_kib = {CHUNK // 1024}\n")
    cam = camera(config, clips=0)
    (cam / "DCIM").mkdir(exist_ok=True)
    (cam / "DCIM" / "BIG.MP4").write_bytes(os.urandom(5 * CHUNK + 100))
    held: list[int] = []
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None and station.vault is not None
        budget = station.vault.budget

        def during(rec: Recording, done: int) -> None:
            if done == 2 * CHUNK:
                held.append(budget.held)

        report = offloader.offload(FaultyDevice(sim_devices(station)[0], on_read=during))
        after = budget.held
    assert len(report.copied) == 1
    assert held and held[0] > 0
    assert after == 0


def test_the_copier_tells_the_screen_it_was_given() -> None:
    """Rule: the copier reports to the station's screen when it is given one, and to an
    observer that ignores everything otherwise."""
    from agent.clipcopy import ClipCopier
    from agent.progress import NullObserver

    screen = Screen()
    given = ClipCopier(None, None, None, None, None,  # type: ignore[arg-type]
                       stopping=threading.Event(), observer=screen)
    alone = ClipCopier(None, None, None, None, None,  # type: ignore[arg-type]
                       stopping=threading.Event())
    assert given.observer is screen
    assert isinstance(alone.observer, NullObserver)
