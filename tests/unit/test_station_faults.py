"""Station faults as an installer meets them: starts, full disks, read-only directories."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from agent.config import Config
from agent.station import Station
from tests.support.stations import camera


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
