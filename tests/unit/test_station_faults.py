"""Station faults as an installer meets them: starts, full disks, read-only directories."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import Config
from agent.station import Station
from tests.conftest import write_station_config
from tests.support.filesystems import fill, tmpfs
from tests.support.stations import camera, running_station, sim_devices

ROOT = Path(__file__).resolve().parents[2]


def test_a_camera_docked_before_the_start_gets_one_session(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    camera(config, clips=1)
    station = Station(config)
    docked: list[str] = []
    sessions: list[Future[Any]] = []
    real_dock = station.dock

    def dock(device: Any) -> Future[Any] | None:
        docked.append(device.handle)
        future = real_dock(device)
        if future is not None and future not in sessions:
            sessions.append(future)
        return future

    station.dock = dock  # type: ignore[method-assign]
    station.start(watch=True)
    try:
        assert len(docked) == 1, docked  # the detector reports what is there once
        assert len(sessions) == 1
        report = sessions[0].result(timeout=30)
        assert len(report.copied) == 1
        assert station.store is not None
        docks = station.store.query("SELECT COUNT(*) AS n FROM docks")[0]["n"]
    finally:
        station.stop()
    assert docks == 1


def test_keys_init_on_a_read_only_data_directory_says_what_to_fix(tmp_path: Path) -> None:
    config = write_station_config(tmp_path)
    with tmpfs(tmp_path / "data", readonly=True):
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "keys", "init", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("bwc-agent: error: station.data_dir: cannot write ")
    assert str(tmp_path / "data" / "keys") in line and "Read-only file system" in line
    assert "writable" in line


def test_a_full_data_disk_alerts_stops_ingest_and_resumes_once_there_is_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = config_mod.load(write_station_config(tmp_path, "[ingest]\nmin_free_mb = 0\n"))
    with tmpfs(config.data_dir, size="24m"):
        first = camera(config, clips=1)
        with running_station(config) as station:
            assert station.run_once().ok
            shutil.rmtree(first)  # undocked
            # The database's write-ahead log is empty (a checkpoint), then the disk fills.
            db = sqlite3.connect(config.data_dir / "state.db")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            filler = fill(config.data_dir)
            second = camera(config, clips=2, serial="SIM0002")
            (device,) = sim_devices(station)
            caplog.clear()
            future = station.dock(device)
            assert future is not None
            report = future.result(timeout=60)  # no exception escapes the session
            assert report.errors and report.errors[0].startswith("disk full: the station "
                                                                 "database")
            assert "SIM0002" in report.errors[0]
            assert not any(r.exc_info for r in caplog.records), "no traceback"
            assert any("disk.full" in r.getMessage() for r in caplog.records
                       if r.levelno >= logging.ERROR), "the alert is in the journal"
            assert station.resume_unfinished() == []  # still full
            filler.unlink()  # an operator made room
            assert station.resume_unfinished() == [device.handle]
            with station._active_lock:
                again = station._active[device.handle]
            assert again.result(timeout=60).errors == []
            assert station.store is not None
            states = {r["device_serial"]: r["state"] for r in station.store.clips()}
            alerts = [json.loads(r["body"]) for r in station.store.query(
                "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert states == {"SIM0001": "sealed", "SIM0002": "sealed"}
    assert [(a["code"], a["serial"]) for a in alerts] == [("disk.full", "SIM0002")]
    assert "the station database" in alerts[0]["message"]
    assert len([p for p in (second / "DCIM").rglob("*") if p.is_file()]) == 2  # still there
