"""Station faults as an installer meets them: starts, full disks, read-only directories."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.station import Station
from tests.conftest import write_station_config
from tests.support.filesystems import tmpfs
from tests.support.stations import camera

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
