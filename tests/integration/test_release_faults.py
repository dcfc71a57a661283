"""Releases that fail against a real platform: a read-only camera, acks arriving in a burst."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config as config_mod
from scripts.devplatform.stand import DevStand
from tests.support.filesystems import read_only
from tests.support.stations import camera, running_station

pytestmark = pytest.mark.integration


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def test_a_read_only_camera_is_alerted_once_and_released_once_writable(
        stand: DevStand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_mod.load(stand.station(tmp_path / "ST-0001", "ST-0001",
                                           platform_extra="retry_max_s = 1\n"))
    cam = camera(config, clips=3)
    with running_station(config) as station:
        with read_only(cam):
            summary = station.run_once(platform_timeout_s=30)
            # Rule: run --once exits non-zero when an acknowledged clip stayed on its camera.
            assert not summary.ok
            assert len(summary.failures) == 3
            assert all(f.startswith("clip ") and "not released from SIM0001" in f
                       and "Read-only file system" in f for f in summary.failures)
            assert station.store is not None
            rows = station.store.clips()
            assert {r["state"] for r in rows} == {"acknowledged"}
            assert all("Read-only file system" in r["release_error"] for r in rows)
            alerts = [json.loads(r["body"]) for r in station.store.query(
                "SELECT body FROM custody_log WHERE kind = 'alert'")]
            assert [a["code"] for a in alerts if a["code"].startswith("release.")] == [
                "release.failed"]
            failed = station.store.query("SELECT clip_id FROM custody_log WHERE kind = "
                                         "'release.failed'")
            assert len(failed) == len({r["clip_id"] for r in failed}) == 3  # once each
        # The camera is writable again; the back-off is over: the timer's retry releases.
        later = time.time() + 3600
        monkeypatch.setattr("agent.sync.retention.time.time", lambda: later)
        assert station.retry_releases() == ["SIM0001"]
        deadline = time.monotonic() + 30
        while station.releasing() and time.monotonic() < deadline:
            time.sleep(0.05)
        states = {r["state"] for r in station.store.clips()}
    assert states == {"released"}
    assert sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file()) == []
    db = sqlite3.connect(config.data_dir / "state.db")
    assert db.execute("SELECT COUNT(*) FROM clips WHERE release_error IS NOT NULL"
                      ).fetchone()[0] == 0
