"""The daemon: docking detected while it runs (watchdog), undocking, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.cli.main import main
from drivers.simcam import make_camera
from tests.conftest import write_station_config

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    return False


def _query(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_daemon_docks_undocks_and_stops_on_sigterm(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = write_station_config(tmp_path, "[custody]\ncheckpoint_interval_s = 5\n")
    db_path = tmp_path / "data" / "state.db"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli.main", "run", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: _query(db_path, "SELECT COUNT(*) FROM custody_log")), \
            "the daemon started"
        # An officer docks a camera while the daemon runs.
        cam = make_camera(tmp_path / "sim", serial="LIVE001", clips=2, seconds=0.5,
                          width=160, height=120, fps=10.0)
        assert _wait(lambda: _query(db_path, "SELECT COUNT(*) FROM clips WHERE state = "
                                             "'sealed'")[0][0] == 2), "both clips sealed"
        assert _query(db_path, "SELECT docked_handle IS NOT NULL FROM devices")[0][0] == 1
        # ... and takes it away.
        shutil.rmtree(cam)
        assert _wait(lambda: _query(db_path, "SELECT COUNT(*) FROM custody_log WHERE kind = "
                                             "'device.undocked'")[0][0] == 1), "undock seen"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "signal 15: stopping" in err
    undocked = _query(db_path, "SELECT body FROM custody_log WHERE kind = 'device.undocked'")
    assert json.loads(str(undocked[0][0]))["serial"] == "LIVE001"
    assert main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["clips"]["sealed"] == 2
    assert status["devices"][0]["docked"] is False
    assert status["log"]["checkpoint"]["size"] == status["log"]["size"], \
        "a final checkpoint covers the whole log at shutdown"
