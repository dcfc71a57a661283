"""The daemon's log as JSON lines (station.log_format = "json"), and its ring of recent lines."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.logsetup import LogRing, log_fields
from drivers.simcam import make_camera
from tests.conftest import write_station_config

ROOT = Path(__file__).resolve().parents[2]


def test_json_log_lines_name_the_clip_camera_and_dock(tmp_path: Path) -> None:
    config = write_station_config(tmp_path)
    config.write_text(config.read_text().replace(
        'data_dir =', 'log_format = "json"\ndata_dir ='), encoding="utf-8")
    make_camera(tmp_path / "sim", serial="JSON001", clips=2, seconds=0.5, width=160,
                height=120, fps=10.0)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli.main", "run", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        db = tmp_path / "data" / "state.db"
        deadline = time.monotonic() + 60
        import sqlite3
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                        if conn.execute("SELECT COUNT(*) FROM clips WHERE state = 'sealed'"
                                        ).fetchone()[0] == 2:
                            break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, "the daemon logged"
    for line in lines:
        assert {"at", "level", "logger", "message"} <= set(line), line
        assert line["at"].endswith("Z")
    starting = [x for x in lines if "starting for station ST-0001" in x["message"]]
    assert starting and starting[0]["level"] == "info"
    done = [x for x in lines if x["message"].startswith("offload of JSON001 done")]
    assert done and done[0]["serial"] == "JSON001"
    in_dock = [x for x in lines if "dock_id" in x]
    assert in_dock and all(x["serial"] == "JSON001" and isinstance(x["dock_id"], int)
                           for x in in_dock), "lines logged inside the dock session"
    about_clips = [x for x in lines if "clip_id" in x]
    assert about_clips, "lines about a clip carry its id"
    with sqlite3.connect(f"file:{tmp_path / 'data' / 'state.db'}?mode=ro", uri=True) as conn:
        clip_ids = {r[0] for r in conn.execute("SELECT clip_id FROM clips")}
    assert {x["clip_id"] for x in about_clips} <= clip_ids


def test_the_ring_keeps_the_last_lines_bounded_and_without_secrets() -> None:
    ring = LogRing(capacity=5)
    logger = logging.getLogger("test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        for i in range(8):
            logger.info("line %d", i)
        with log_fields(serial="CAM9", dock_id=4):
            logger.warning("password=hunter2 and Authorization: Bearer abc.def in %s", "x")
        logger.error("key -----BEGIN PRIVATE KEY-----\nMC4CAQAw\n-----END PRIVATE KEY----- end")
        logger.info("%s", "é" * 5000)
        logger.info("clip %s done", "01a22aa1-9665-7e91-9a97-7c1042fb497c")
    finally:
        logger.removeHandler(ring)
    lines = ring.last(100)
    assert len(lines) == 5
    assert ring.last(2)[0]["message"] == "é" * 2000
    secret = next(x for x in lines if x.get("serial") == "CAM9")
    assert "hunter2" not in secret["message"] and "abc.def" not in secret["message"]
    assert secret["dock_id"] == 4 and "[redacted]" in secret["message"]
    pem = next(x for x in lines if x["message"].startswith("key "))
    assert "MC4CAQAw" not in pem["message"] and pem["message"].endswith(" end")
    assert lines[-1]["clip_id"] == "01a22aa1-9665-7e91-9a97-7c1042fb497c"
    assert ring.last(0) == []
