"""Whether the daemon runs, as `status` says it: heartbeat, kill -9, a clean stop, a hang.

The daemon runs as a real process (``python -m agent.cli.main run``) with a
simulated camera; ``status`` is the real command in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.daemonstate import FILE_NAME, STALE_AFTER_S, DaemonState, describe, read
from drivers.simcam import make_camera
from tests.conftest import write_station_config

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _status(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def _status_text(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["status", "--config", str(config)]) == 0
    return capsys.readouterr().out


def _start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent.cli.main", "run", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _sealed(config: Path, capsys: pytest.CaptureFixture[str], n: int) -> bool:
    db = config.parent / "data" / "state.db"
    if not db.exists():
        return False
    try:
        return bool(_status(config, capsys)["clips"]["sealed"] == n)
    except (AssertionError, json.JSONDecodeError, KeyError):
        return False


def test_status_tells_a_running_daemon_from_one_killed_with_sigkill(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    proc = _start(config)
    try:
        assert _wait((tmp_path / "data" / FILE_NAME).exists), "a first heartbeat"
        make_camera(tmp_path / "sim", serial="LIVE001", clips=1, seconds=0.5, width=160,
                    height=120, fps=10.0)
        assert _wait(lambda: _sealed(config, capsys, 1)), "the clip is sealed"
        status = _status(config, capsys)
        assert status["daemon"]["state"] == "running"
        assert status["daemon"]["running"] is True
        assert status["daemon"]["pid"] == proc.pid
        assert status["daemon"]["heartbeat_age_s"] <= STALE_AFTER_S
        assert status["devices"][0]["docked"] is True
        text = _status_text(config, capsys)
        assert f"agent: running (pid {proc.pid}, last heartbeat " in text
        assert "LIVE001" in text and "DOCKED" in text

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    status = _status(config, capsys)
    assert status["daemon"]["state"] == "not-running"
    assert status["daemon"]["running"] is False
    device = status["devices"][0]
    # The store still says the camera was in its dock; nobody watches the docks any more.
    assert device["docked"] is False and device["docked_when_stopped"] is True
    text = _status_text(config, capsys)
    assert "agent: not running (last seen 20" in text and "did not stop cleanly" in text
    assert "DOCKED" not in text
    assert "LIVE001" in text and "last docked when the agent stopped" in text


def test_a_clean_stop_is_told_apart_from_a_crash(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    proc = _start(config)
    try:
        assert _wait((tmp_path / "data" / FILE_NAME).exists)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    daemon = _status(config, capsys)["daemon"]
    assert daemon["state"] == "stopped" and daemon["stopped_at"]
    assert "not running (stopped cleanly at 20" in _status_text(config, capsys)


def test_a_stale_heartbeat_of_a_live_process_is_unresponsive(tmp_path: Path) -> None:
    """This very process plays the daemon: alive, but its heartbeat is old."""
    now = [1_800_000_000.0]
    state = DaemonState(tmp_path, clock=lambda: now[0])
    state.beat("1 docked; backlog 0")
    assert read(tmp_path, now=now[0] + 1)["state"] == "running"
    stale = read(tmp_path, now=now[0] + STALE_AFTER_S + 1)
    assert stale["state"] == "unresponsive" and stale["running"] is False
    assert "UNRESPONSIVE" in describe(stale) and "watchdog" in describe(stale)
    state.stopped()
    assert read(tmp_path, now=now[0] + 3600)["state"] == "stopped"


def test_a_heartbeat_from_another_boot_is_judged_by_its_age_alone(tmp_path: Path) -> None:
    """The pid in the file means nothing after a reboot (or in another pid namespace)."""
    state = DaemonState(tmp_path, clock=lambda: 1_800_000_000.0)
    state.beat()
    facts = json.loads((tmp_path / FILE_NAME).read_text())
    facts["boot_id"] = "another-boot"
    (tmp_path / FILE_NAME).write_text(json.dumps(facts))
    assert read(tmp_path, now=1_800_000_002.0)["state"] == "running"
    assert read(tmp_path, now=1_800_000_000.0 + STALE_AFTER_S + 1)["state"] == "not-running"


def test_a_damaged_or_missing_state_file_is_reported_not_raised(tmp_path: Path) -> None:
    assert read(tmp_path)["state"] == "never-started"
    (tmp_path / FILE_NAME).write_bytes(b"\xff" * 10)
    damaged = read(tmp_path)
    assert damaged["state"] == "not-running" and "not the daemon's state file" in \
        damaged["problem"]
    (tmp_path / FILE_NAME).write_bytes(b"{" * (1024 * 1024))
    assert read(tmp_path)["state"] == "not-running"


def test_store_files_are_0600_under_umask_022_and_an_open_data_dir_is_warned(
        tmp_path: Path) -> None:
    config = write_station_config(tmp_path)
    (tmp_path / "data").mkdir(mode=0o755)
    os.chmod(tmp_path / "data", 0o755)
    code = ("import os, sys; os.umask(0o022); from agent.cli.main import main; "
            "sys.exit(main(['run', '--once', '--config', sys.argv[1]]))")
    make_camera(tmp_path / "sim", serial="UMASK01", clips=1, seconds=0.5, width=160,
                height=120, fps=10.0)
    done = subprocess.run([sys.executable, "-c", code, str(config)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "is open to every user (mode 0755)" in done.stderr
    assert "chmod 0700" in done.stderr
    data = tmp_path / "data"
    # The WAL and SHM exist while a connection is open: open one as the daemon does.
    from agent.store import Store
    store = Store(data / "state.db", station_id="ST-0001")
    try:
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            assert (data / name).exists(), name
            assert (data / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        store.close()


def test_a_store_made_wider_by_hand_is_narrowed_at_open(tmp_path: Path) -> None:
    from agent.store import Store
    Store(tmp_path / "state.db", station_id="ST-0001").close()
    os.chmod(tmp_path / "state.db", 0o644)
    store = Store(tmp_path / "state.db", station_id="ST-0001")
    try:
        assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "state.db-wal").stat().st_mode & 0o777 == 0o600
    finally:
        store.close()
