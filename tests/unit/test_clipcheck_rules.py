"""Rules of the checks after a copy (agent/clipcheck.py), as the screen, the report and the
store see them: the phases a clip goes through, what a duplicate and a failed verify end in,
the camera clock's skew flag, and the recorded end time.

A real station (store, vault, custody, simulated cameras with real clips) runs each dock;
the screen is replaced by a recorder that keeps every phase each clip was shown in.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clipcheck import clock_flags
from agent.config import Config
from agent.progress import DockObserver
from agent.station import Station
from agent.timeutil import parse_rfc3339
from drivers.base import DeviceInfo, Recording
from tests.support.stations import camera, running_station


@pytest.fixture(autouse=True)
def _no_check_ends_in_an_unhandled_error(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Rule: every check handles its own outcome; none reaches the pools' last resort
    ("a ... job failed" with a traceback), whatever the clip's fate."""
    yield
    unhandled = [r.getMessage() for r in caplog.get_records("call")
                 if r.name == "agent.workpool" and r.exc_info]
    assert unhandled == []


class PhaseRecorder:
    """The screen's observer, keeping each clip's phases in order (and passing them on)."""

    def __init__(self, inner: DockObserver) -> None:
        self.inner = inner
        self.phases: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str, str, str]] = []  # handle, clip id, path, phase
        self._lock = threading.Lock()

    def identified(self, handle: str, info: DeviceInfo) -> None:
        self.inner.identified(handle, info)

    def listed(self, handle: str, recordings: list[Recording], unreadable: int,
               todo: list[tuple[str, Recording]]) -> None:
        self.inner.listed(handle, recordings, unreadable, todo)

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        with self._lock:
            self.phases.setdefault(clip_id, []).append(phase)
            self.calls.append((handle, clip_id, rec.path, phase))
        self.inner.clip_phase(handle, clip_id, rec, phase)

    def clip_bytes(self, handle: str, clip_id: str, done: int) -> None:
        self.inner.clip_bytes(handle, clip_id, done)

    def finished(self, handle: str, errors: list[str]) -> None:
        self.inner.finished(handle, errors)


def _record_phases(station: Station) -> PhaseRecorder:
    assert station.offloader is not None
    copier = station.offloader.copier
    recorder = PhaseRecorder(copier.observer)
    copier.observer = recorder
    copier.checker.observer = recorder
    return recorder


def _probe_after_verify(station: Station) -> None:
    """Each clip's probe waits until its verify has recorded the digest: the order the
    phases then take is fixed (the verify ends first, the clip is shown 'probing')."""
    assert station.offloader is not None and station.store is not None
    checker = station.offloader.copier.checker
    real, store = checker.probe, station.store

    def probe(path: Path, clip_id: str, name: str) -> tuple[dict[str, Any] | None, list[str]]:
        deadline = time.monotonic() + 30
        while store.clip(clip_id)["sha256"] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(path, clip_id, name)

    checker.probe = probe


def test_a_clip_is_shown_copying_verifying_probing_sealing_then_done(
        station_config: Callable[..., Config]) -> None:
    """Rule: the screen follows each clip through its checks, in order, ending 'done'; the
    report lists it copied, and nothing as a duplicate or quarantined."""
    config = station_config()
    camera(config, clips=2)
    with running_station(config) as station:
        recorder = _record_phases(station)
        _probe_after_verify(station)
        summary = station.run_once()
        rows = station.store.clips()
    assert summary.ok
    (report,) = summary.reports
    assert sorted(report.copied) == sorted(r["clip_id"] for r in rows)
    assert (report.duplicates, report.quarantined, report.errors) == ([], [], [])
    assert {r["clip_id"]: recorder.phases[r["clip_id"]] for r in rows} == {
        r["clip_id"]: ["copying", "verifying", "probing", "sealing", "done"] for r in rows}
    # Each phase is told for the clip's own camera and file.
    paths = {r["clip_id"]: r["path"] for r in rows}
    assert {(h, paths[c] == p) for h, c, p, _phase in recorder.calls} == {(report.handle, True)}


def test_a_duplicate_is_shown_done_after_its_verify_and_keeps_no_probe(
        station_config: Callable[..., Config]) -> None:
    """Rule: a recording holding bytes the station already holds is recorded a duplicate of
    that clip once its copy is verified (verified = 1), shown 'done' straight after the
    verify, listed in the report's duplicates and not as copied, and never sealed."""
    config = station_config()
    _twin(config)
    with running_station(config) as station:
        recorder = _record_phases(station)
        _probe_after_verify(station)
        summary = station.run_once()
        rows = {r["name"]: r for r in station.store.clips()}
    (report,) = summary.reports
    assert summary.ok and report.errors == []
    first, second = sorted(rows.values(), key=lambda r: r["state"] != "sealed")
    assert (first["state"], second["state"]) == ("sealed", "duplicate")
    assert second["duplicate_of"] == first["clip_id"]
    assert second["sha256"] == first["sha256"] and second["verified"] == 1
    assert second["manifest"] is None
    assert report.duplicates == [second["clip_id"]]
    assert report.copied == [first["clip_id"]]
    assert recorder.phases[second["clip_id"]] == ["copying", "verifying", "done"]


def test_a_copy_failing_its_last_verify_is_shown_failed_and_listed_quarantined(
        station_config: Callable[..., Config]) -> None:
    """Rule: a vault copy that fails its read-back on the last attempt ends 'failed' on the
    screen and in the report's quarantined list, with a vault.verify_failed alert; it is
    never shown probing or sealing."""
    config = station_config("[ingest]\nchange_retries = 0\n")
    camera(config, clips=1)
    with running_station(config) as station:
        recorder = _record_phases(station)
        vault = station.vault
        assert vault is not None

        def damaged(sha256: str, **_kwargs: Any) -> int:
            from agent.errors import IntegrityError
            raise IntegrityError(f"vault object {sha256} reads back as something else")

        vault.verify = damaged  # type: ignore[method-assign]
        summary = station.run_once()
        (row,) = station.store.clips()
        alerts = [json.loads(r["body"])["code"] for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'alert'")]
        events = [json.loads(r["payload"]) for r in station.store.query(
            "SELECT payload FROM outbox ORDER BY id")]
    (report,) = summary.reports
    assert row["state"] == "quarantined"
    assert report.quarantined == [row["clip_id"]] and report.copied == []
    assert recorder.phases[row["clip_id"]][:2] == ["copying", "verifying"]
    assert recorder.phases[row["clip_id"]][-1] == "failed"
    assert not {"probing", "sealing", "done"} & set(recorder.phases[row["clip_id"]])
    assert alerts == ["vault.verify_failed"]
    (failed,) = [e["data"] for e in events if e["type"] == "alert"
                 and e["data"]["code"] == "vault.verify_failed"]
    assert failed["serial"] == report.serial
    assert recorder.calls[-1] == (report.handle, row["clip_id"], row["path"], "failed")
    # The platform is told, with the reason.
    (told,) = [e["data"] for e in events
               if e["type"] == "alert" and e["data"].get("code") == "clip.quarantined"]
    assert told["clip_id"] == row["clip_id"]
    assert told["message"].startswith("vault copy failed verification: vault object ")


@pytest.mark.parametrize(("offset", "flags"), [
    (None, []),           # the camera's clock could not be read: nothing is claimed
    (0.0, []),
    (300.0, []),          # exactly media.max_clock_skew_s: within it
    (-300.0, []),
    (300.001, ["clock.skew"]),
    (-300.001, ["clock.skew"]),  # a camera clock behind is as wrong as one ahead
])
def test_a_camera_clock_off_by_more_than_the_allowed_skew_is_flagged(
        offset: float | None, flags: list[str]) -> None:
    """Rule: ``clock.skew`` is set when the camera's clock is off by more than
    ``media.max_clock_skew_s`` either way, and only then."""
    assert clock_flags(offset, 300.0) == flags


def test_the_clock_skew_and_the_probes_flags_are_recorded_sorted_with_the_clip(
        station_config: Callable[..., Config]) -> None:
    """Rule: the flags recorded with a copied clip are the union of those it had, the
    probe's and the clock's, sorted; a camera 10 minutes off gets ``clock.skew``."""
    config = station_config("[media]\nmax_clock_skew_s = 60\n")
    camera(config, clips=1, clock_offset_s=600.0)
    with running_station(config) as station:
        assert station.offloader is not None
        checker = station.offloader.copier.checker
        real = checker.probe

        def probe(path: Path, clip_id: str, name: str) -> tuple[dict[str, Any] | None,
                                                                 list[str]]:
            media, flags = real(path, clip_id, name)
            return media, [*flags, "media.zz_test"]

        checker.probe = probe
        assert station.run_once().reports
        (row,) = station.store.clips()
        (copied,) = [json.loads(r["body"]) for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.copied'")]
    assert abs(row["clock_offset_s"] - 600.0) < 5
    flags = json.loads(row["flags"])
    assert flags == sorted(set(flags))
    assert {"clock.skew", "media.zz_test"} <= set(flags)
    # The custody log says the same at the copy (the seal adds the officer's flags later).
    assert copied["flags"] == sorted(set(copied["flags"]))
    assert {"clock.skew", "media.zz_test"} <= set(copied["flags"]) <= set(flags)
    assert copied["sha256"] == row["sha256"] and copied["size"] == row["size"]
    assert copied["verified"] is True


def test_the_recorded_end_is_the_start_plus_the_duration_the_probe_measured(
        station_config: Callable[..., Config]) -> None:
    """Rule: a clip whose recording start is known gets ``recorded_end`` = start + the
    probed duration (the camera's own clock), recorded with the copy."""
    config = station_config()
    camera(config, clips=1, seconds=2.0, fps=10.0)
    with running_station(config) as station:
        assert station.run_once().ok
        (row,) = station.store.clips()
    media = json.loads(row["media"])
    assert row["recorded_start"] and media["duration_s"] > 1.5
    span = (parse_rfc3339(row["recorded_end"]) - parse_rfc3339(row["recorded_start"]))
    assert abs(span.total_seconds() - media["duration_s"]) < 0.002


def _verify_after_probe(station: Station) -> threading.Event:
    """The vault read-back waits until a probe has ended (one clip per camera here): the
    probe ends first.  Returns the event the probe sets."""
    assert station.offloader is not None and station.vault is not None
    checker = station.offloader.copier.checker
    vault = station.vault
    probed = threading.Event()
    real_probe, real_verify = checker.probe, vault.verify

    def probe(path: Path, clip_id: str, name: str) -> tuple[dict[str, Any] | None, list[str]]:
        try:
            return real_probe(path, clip_id, name)
        finally:
            probed.set()

    def verify(sha256: str, **kwargs: Any) -> int:
        probed.wait(30)
        return real_verify(sha256, **kwargs)

    checker.probe = probe
    vault.verify = verify  # type: ignore[method-assign]
    return probed


def test_a_clip_probed_before_its_verify_ends_is_never_shown_probing(
        station_config: Callable[..., Config]) -> None:
    """Rule: 'probing' is shown only while a verified clip still waits for its probe; a clip
    whose probe ended first goes from 'verifying' to 'sealing'."""
    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        recorder = _record_phases(station)
        probed = _verify_after_probe(station)
        assert station.run_once().ok
        (row,) = station.store.clips()
    assert probed.is_set() and row["state"] == "sealed"
    assert recorder.phases[row["clip_id"]] == ["copying", "verifying", "sealing", "done"]


def _with_thumbnails(station: Station) -> Any:
    """The station keeps thumbnails (as one whose officers sign in at its screen does)."""
    from agent.thumbnails import Thumbnails

    assert station.offloader is not None
    station.offloader.thumbnails = Thumbnails(station.config.data_dir)
    return station.offloader


def _twin(config: Config) -> None:
    """A camera of one recording and a second file holding the same bytes."""
    cam = camera(config, clips=1)
    (original,) = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
    twin = original.with_name(original.name.replace("_0001", "_0009"))
    assert twin != original
    shutil.copyfile(original, twin)


@pytest.mark.parametrize("order", ["probe first", "verify first, probe running"])
def test_a_duplicates_picture_is_dropped_and_the_originals_kept(
        station_config: Callable[..., Config], order: str) -> None:
    """Rule: the first-frame picture of a clip is kept once the clip is recorded copied;
    a duplicate's is dropped, whichever of its verify and probe ends first, and no picture
    is left waiting in memory."""
    config = station_config()
    _twin(config)
    with running_station(config) as station:
        offloader = _with_thumbnails(station)
        store = station.store
        assert store is not None
        if order == "probe first":
            checker = offloader.copier.checker
            real_probe, real_verify = checker.probe, station.vault.verify
            probed: set[str] = set()  # vault objects are named by their digest

            probed_clips: set[str] = set()

            def probe(path: Path, clip_id: str, name: str) -> Any:
                try:
                    return real_probe(path, clip_id, name)
                finally:
                    probed_clips.add(clip_id)
                    probed.add(path.name)

            def verify(sha256: str, **kwargs: Any) -> int:
                deadline = time.monotonic() + 30
                while sha256 not in probed and time.monotonic() < deadline:
                    time.sleep(0.01)
                return real_verify(sha256, **kwargs)

            real_record = checker._record_sha256

            def record_sha256(clip: Any, verified: bool) -> str | None:
                # An object the vault held already is not read back: wait here instead.
                deadline = time.monotonic() + 30
                while clip.clip_id not in probed_clips and time.monotonic() < deadline:
                    time.sleep(0.01)
                return real_record(clip, verified)

            checker.probe = probe
            station.vault.verify = verify  # type: ignore[method-assign]
            checker._record_sha256 = record_sha256  # type: ignore[method-assign]
        else:
            # The probes are on their way when the verify finds the duplicate.
            _probe_after_verify(station)
        station.run_once()
        rows = {r["state"]: r for r in store.clips()}
        thumbs = offloader.thumbnails
        waiting = dict(offloader._thumbnails_waiting)
    assert set(rows) == {"sealed", "duplicate"}
    assert thumbs.has(rows["sealed"]["clip_id"])
    assert not thumbs.has(rows["duplicate"]["clip_id"])
    assert waiting == {}


def test_a_clip_that_cannot_be_recorded_keeps_no_picture(
        station_config: Callable[..., Config]) -> None:
    """Rule: a clip whose copy cannot be recorded (the store failed) keeps no picture and
    leaves none waiting; it is copied again later."""
    from agent.errors import StoreError

    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        offloader = _with_thumbnails(station)

        def record(*_args: Any) -> None:
            raise StoreError("database is locked")

        offloader.copier.checker._record_copied = record  # type: ignore[method-assign]
        station.run_once()
        (row,) = station.store.clips()
        thumbs = offloader.thumbnails
        waiting = dict(offloader._thumbnails_waiting)
    assert row["state"] == "discovered"
    assert not thumbs.has(row["clip_id"]) and waiting == {}


def test_a_station_side_failure_of_the_verify_is_reported_and_the_clip_copied_again(
        station_config: Callable[..., Config]) -> None:
    """Rule: a verify that fails on the station's side (the vault disk cannot be read, not
    a digest mismatch) is shown failed for that camera and file, named in the session's
    errors and an ingest.failed alert for the camera, and puts the clip back to discovered
    saying why; it is neither quarantined nor recorded copied."""
    from agent.errors import StoreError

    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        recorder = _record_phases(station)

        asked: list[str] = []

        def unreadable(sha256: str, **_kwargs: Any) -> int:
            asked.append(sha256)
            raise StoreError(f"cannot read vault object {sha256}: Input/output error")

        station.vault.verify = unreadable  # type: ignore[method-assign]
        summary = station.run_once()
        (row,) = station.store.clips()
        events = [json.loads(r["payload"]) for r in station.store.query(
            "SELECT payload FROM outbox ORDER BY id")]
        reasons = [json.loads(r["body"]).get("reason") for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.discovered' AND clip_id = ?",
            (row["clip_id"],))]
    (report,) = summary.reports
    (sha256,) = asked
    problem = f"cannot read vault object {sha256}: Input/output error"
    assert (row["state"], row["sha256"]) == ("discovered", None)
    assert report.errors == [f"{row['path']}: {problem}"]
    assert (report.copied, report.quarantined) == ([], [])
    (alert,) = [e["data"] for e in events if e["type"] == "alert"
                and e["data"]["code"] == "ingest.failed"]
    assert alert["serial"] == report.serial and alert["message"].startswith(
        f"{row['path']}: {problem}")
    assert reasons[-1] == f"ingest failed: {problem}"
    assert recorder.calls[-1] == (report.handle, row["clip_id"], row["path"], "failed")


def test_an_intact_object_already_in_the_vault_is_not_read_back_again(
        station_config: Callable[..., Config]) -> None:
    """Rule: the vault reads back each new object once after writing it; a recording whose
    bytes the vault already holds intact (checked by the commit) is not read a second
    time, and the duplicate is recorded verified."""
    config = station_config()
    _twin(config)
    with running_station(config) as station:
        vault = station.vault
        assert vault is not None
        real = vault.verify
        reads: list[str] = []

        def verify(sha256: str, **kwargs: Any) -> int:
            reads.append(sha256)
            return real(sha256, **kwargs)

        vault.verify = verify  # type: ignore[method-assign]
        station.run_once()
        rows = {r["state"]: r for r in station.store.clips()}
    assert reads == [rows["sealed"]["sha256"]]
    assert rows["duplicate"]["verified"] == 1


def test_a_duplicate_is_recorded_with_its_digest_time_and_original_in_the_log(
        station_config: Callable[..., Config]) -> None:
    """Rule: the custody entry of a duplicate names its digest and the clip it duplicates,
    and the clip records when its copy was made."""
    config = station_config()
    _twin(config)
    with running_station(config) as station:
        station.run_once()
        rows = {r["state"]: r for r in station.store.clips()}
        (entry,) = [json.loads(r["body"]) for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.duplicate'")]
    dup, original = rows["duplicate"], rows["sealed"]
    assert entry == {"from": "copying", "to": "duplicate", "sha256": original["sha256"],
                     "duplicate_of": original["clip_id"]}
    assert dup["copied_at"] is not None and original["copied_at"] is not None


def test_a_station_that_does_not_probe_records_no_media_and_a_file_without_a_start_no_end(
        station_config: Callable[..., Config]) -> None:
    """Rule: with ``media.probe = false`` a clip is recorded with no media facts (NULL, not
    a JSON null) and so no recorded end."""
    config = station_config("[media]\nprobe = false\n")
    camera(config, clips=1)
    with running_station(config) as station:
        assert station.run_once().ok
        (row,) = station.store.clips()
    assert row["state"] == "sealed"
    assert row["media"] is None and row["recorded_end"] is None
    assert row["recorded_start"] is not None


def test_a_failed_seal_after_the_copy_is_an_alert_for_the_camera_and_sealed_later(
        station_config: Callable[..., Config]) -> None:
    """Rule: when sealing right after the copy fails (a busy store), the clip stays copied
    and verified, the camera's ``seal.failed`` alert says so and when it is tried again,
    and the screen still ends the clip 'done'."""
    from agent.errors import StoreError

    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        recorder = _record_phases(station)
        checker = station.offloader.copier.checker

        def busy(_clip_id: str) -> None:
            raise StoreError("database is locked")

        checker.after_copy = busy
        report = station.offloader.offload(
            next(d for det in station._make_detectors() for d in det.scan()))
        (row,) = station.store.clips()
        events = [json.loads(r["payload"]) for r in station.store.query(
            "SELECT payload FROM outbox ORDER BY id")]
    (alert,) = [e["data"] for e in events if e["type"] == "alert"
                and e["data"]["code"] == "seal.failed"]
    assert (row["state"], row["verified"]) == ("copied", 1)
    assert alert == {"code": "seal.failed", "serial": report.serial, "message": (
        f"clip {row['clip_id']} ({row['path']}) is copied and verified but not sealed yet: "
        "database is locked; sealing is tried again within custody.checkpoint_interval_s")}
    assert recorder.phases[row["clip_id"]][-2:] == ["sealing", "done"]


def test_each_check_is_queued_under_its_camera_for_fair_sharing(
        station_config: Callable[..., Config]) -> None:
    """Rule: the verify and the probe of a clip are queued under its camera's handle on the
    shared pools (which serve the camera with the fewest checks running first), so one
    camera's many clips cannot hold back another camera's checks."""
    config = station_config()
    camera(config, clips=2, serial="SIM0001")
    camera(config, clips=1, serial="SIM0002")
    with running_station(config) as station:
        offloader = station.offloader
        assert offloader is not None
        checker = offloader.copier.checker
        keys: list[tuple[str, Any]] = []
        real_verifies, real_probes = checker.verifies.submit, checker.probes.submit

        def verifies(key: Any, job: Any) -> Any:
            keys.append(("verify", key))
            return real_verifies(key, job)

        def probes(job: Any, *, key: Any = None, batch: Any = None) -> None:
            keys.append(("probe", key))
            real_probes(job, key=key, batch=batch)

        checker.verifies.submit = verifies  # type: ignore[method-assign]
        checker.probes.submit = probes  # type: ignore[method-assign]
        summary = station.run_once()
    handles = sorted(r.handle for r in summary.reports)
    assert summary.ok and len(handles) == 2
    for check in ("verify", "probe"):
        assert sorted(k for c, k in keys if c == check) == sorted(
            [r.handle for r in summary.reports for _ in r.copied])


def test_a_check_failing_unexpectedly_is_reported_once_and_nothing_is_recorded(
        station_config: Callable[..., Config]) -> None:
    """Rule: a verify failing with an error nobody expected (a defect) is one ingest
    failure: the clip goes back to discovered and its probe records nothing after it."""
    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:

        def broken(*_args: Any, **_kwargs: Any) -> int:
            raise RuntimeError("a defect")

        station.vault.verify = broken  # type: ignore[method-assign]
        summary = station.run_once()
        (row,) = station.store.clips()
    (report,) = summary.reports
    assert row["state"] == "discovered" and row["copied_at"] is None
    assert len(report.errors) == 1 and report.copied == []


def test_a_damaged_vault_object_repaired_by_a_new_copy_is_read_back_and_the_camera_named(
        station_config: Callable[..., Config]) -> None:
    """Rule: when a docked recording's copy replaces a vault object that no longer held its
    bytes, the new object is read back from the disk like any new one (not trusted as an
    object the vault held), and the vault.repaired alert names the camera it came from."""
    import hashlib
    import os

    config = station_config()
    cam = camera(config, clips=1)
    (original,) = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
    data = original.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with running_station(config) as station:
        assert station.run_once().ok and station.vault is not None
        obj = station.vault.path_for(digest)
        os.chmod(obj, 0o644)
        with open(obj, "r+b") as f:
            f.seek(100)
            f.write(b"\xff\xff\xff")
        os.chmod(obj, 0o444)
        (original.parent / "COPY0001.MP4").write_bytes(data)
        real = station.vault.verify
        reads: list[str] = []

        def verify(sha256: str, **kwargs: Any) -> int:
            reads.append(sha256)
            return real(sha256, **kwargs)

        station.vault.verify = verify  # type: ignore[method-assign]
        (report,) = station.run_once().reports
        events = [json.loads(r["payload"]) for r in station.store.query(
            "SELECT payload FROM outbox ORDER BY id")]
    (repaired,) = [e["data"] for e in events if e["type"] == "alert"
                   and e["data"]["code"] == "vault.repaired"]
    assert repaired["serial"] == report.serial
    assert reads == [digest]
    assert len(report.duplicates) == 1
