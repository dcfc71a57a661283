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
from collections.abc import Callable
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


class PhaseRecorder:
    """The screen's observer, keeping each clip's phases in order (and passing them on)."""

    def __init__(self, inner: DockObserver) -> None:
        self.inner = inner
        self.phases: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def identified(self, handle: str, info: DeviceInfo) -> None:
        self.inner.identified(handle, info)

    def listed(self, handle: str, recordings: list[Recording], unreadable: int,
               todo: list[tuple[str, Recording]]) -> None:
        self.inner.listed(handle, recordings, unreadable, todo)

    def clip_phase(self, handle: str, clip_id: str, rec: Recording, phase: str) -> None:
        with self._lock:
            self.phases.setdefault(clip_id, []).append(phase)
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


def test_a_duplicate_is_shown_done_after_its_verify_and_keeps_no_probe(
        station_config: Callable[..., Config]) -> None:
    """Rule: a recording holding bytes the station already holds is recorded a duplicate of
    that clip once its copy is verified (verified = 1), shown 'done' straight after the
    verify, listed in the report's duplicates and not as copied, and never sealed."""
    config = station_config()
    cam = camera(config, clips=1)
    (original,) = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
    twin = original.with_name(original.name.replace("_0001", "_0009"))
    assert twin != original
    shutil.copyfile(original, twin)
    with running_station(config) as station:
        recorder = _record_phases(station)
        _probe_after_verify(station)
        summary = station.run_once()
        rows = {r["name"]: r for r in station.store.clips()}
    (report,) = summary.reports
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
            return media, [*flags, "media.zz_test", "clock.skew"]

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
