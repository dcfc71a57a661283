"""Remote care over signed platform commands: requeue, doctor, logs, outbox retry and drop.

A real station (watching, with its MQTT link) against the development
platform, which signs and sends the commands as the platform would; forged
and malformed ones are refused with their named codes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent import logsetup
from agent.config import Config
from agent.custody.keys import StationKey
from agent.station import Station
from drivers.simcam import make_camera
from scripts.devplatform.stand import DevStand
from tests.support.stations import running_station

pytestmark = pytest.mark.integration


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


@pytest.fixture
def ring(monkeypatch: pytest.MonkeyPatch) -> Iterator[logsetup.LogRing]:
    """The daemon's ring of log lines, as `bwc-agent run` installs it."""
    ring = logsetup.LogRing()
    monkeypatch.setattr(logsetup, "_ring", ring)
    root = logging.getLogger()
    root.addHandler(ring)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield ring
    root.removeHandler(ring)
    root.setLevel(old_level)


def _log(config: Config, kind: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        return [json.loads(r[0]) for r in db.execute(
            "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]
    finally:
        db.close()


def _quarantined_clip(stand: DevStand, config: Config) -> str:
    make_camera(config.devices["simulated"].root, clips=1, seconds=0.5, width=160,
                height=120, fps=10.0)
    tus = stand.platform.tus
    tus.fail_next, tus.fail_status = 1, 413  # refused for good: quarantined after sealing
    try:
        with running_station(config) as station:
            assert not station.run_once(platform_timeout_s=10).ok
    finally:
        tus.fail_next, tus.fail_status = 0, 500
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        ((clip_id, state),) = db.execute("SELECT clip_id, state FROM clips").fetchall()
    finally:
        db.close()
    assert state == "quarantined"
    return str(clip_id)


def test_remote_care_commands(stand: DevStand, tmp_path: Path,
                              ring: logsetup.LogRing) -> None:
    config = config_mod.load(stand.station(tmp_path / "ST-0001", "ST-0001",
                                           platform_extra="retry_max_s = 1\n"))
    clip_id = _quarantined_clip(stand, config)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        send = stand.platform.send_command

        # logs: the newest lines of the daemon's own log.
        logging.getLogger("agent.test").warning("password=hunter2 marker line")
        answer = send("ST-0001", "logs", {"lines": 3})
        assert answer["ok"], answer
        lines = answer["result"]["lines"]
        assert len(lines) == 3 and all({"at", "level", "message"} <= set(x) for x in lines)
        marker = [x for x in ring.last(1000) if "marker line" in x["message"]]
        assert marker and "hunter2" not in marker[0]["message"]
        bad = send("ST-0001", "logs", {"lines": 100000})
        assert bad["ok"] is False and bad["error"].startswith("args: ")
        assert "from 1 to 1000" in bad["error"]
        bad = send("ST-0001", "logs", {"lines": "all"})
        assert bad["ok"] is False and "not an integer" in bad["error"]

        # doctor: its report as the answer.
        answer = send("ST-0001", "doctor", {}, response_timeout=60)
        assert answer["ok"], answer
        report = answer["result"]
        checks = {f["check"]: f["status"] for f in report["findings"]}
        assert checks["broker"] == "OK" and checks["upload"] == "OK"
        assert checks["agent"] in ("OK", "WARN") and checks["store"] == "OK"
        assert report["exit_code"] in (0, 1)

        # requeue: the refused upload goes again; unknown and unfit clips are named.
        answer = send("ST-0001", "requeue", {"clips": [clip_id, "no-such-clip"],
                                             "note": "INC-1 size limit raised"})
        assert answer["ok"], answer
        assert answer["result"]["requeued"] == [clip_id]
        assert answer["result"]["unknown"] == ["no-such-clip"]
        requeue_id = answer["command_id"]
        stand.platform.wait_for(lambda: _state(config, clip_id) == "released", timeout=30,
                                what="the requeued clip uploaded, acknowledged, released")
        again = send("ST-0001", "requeue", {"clips": [clip_id]})
        assert again["ok"] and clip_id in again["result"]["refused"]

        # outbox: an item for another station's topic is refused by the broker's ACL.
        with station.store.transaction() as tx:  # type: ignore[union-attr]
            tx.execute("INSERT INTO outbox (topic, payload, qos, retain, created_at) VALUES "
                       "('bwc/v1/stations/ST-9999/events', ?, 1, 0, '2026-01-01T00:00:00Z')",
                       (json.dumps({"id": "e1", "type": "device.docked", "seq": 1,
                                    "data": {}}).encode(),))
            item = int(tx.one("SELECT MAX(id) AS id FROM outbox")["id"])
        station.store.outbox_signal.set()  # type: ignore[union-attr]
        stand.platform.wait_for(lambda: _refusals(config, item) >= 1, timeout=10,
                                what="the broker's refusal")
        answer = send("ST-0001", "outbox-retry", {"item": item, "note": "ACL changed"})
        assert answer["ok"], answer
        stand.platform.wait_for(lambda: _refusals(config, item) >= 2, timeout=10,
                                what="published again at once")
        answer = send("ST-0001", "outbox-drop", {"item": item, "reason": "not ours"})
        assert answer["ok"], answer
        drop_id = answer["command_id"]
        answer = send("ST-0001", "outbox-drop", {"item": item, "reason": "again"})
        assert answer["ok"] is False and "was dropped at" in answer["error"]

        # Unsigned (signed by another key): refused, nothing runs.
        forged = stand.platform.command_envelope("ST-0001", "outbox-drop",
                                                 {"item": 1, "reason": "x"},
                                                 signer=StationKey.generate())
        refused = stand.platform.send_envelope("ST-0001", "outbox-drop", forged)
        assert refused["ok"] is False and refused["error"].startswith("signature: ")
        unknown_arg = send("ST-0001", "doctor", {"verbose": True})
        assert unknown_arg["ok"] is False and "unknown field(s) verbose" in unknown_arg["error"]
    finally:
        station.stop()
    accepted = {e["name"] for e in _log(config, "command.accepted")}
    assert {"logs", "doctor", "requeue", "outbox-retry", "outbox-drop"} <= accepted
    requeued = [e for e in _log(config, "clip.sealed") if e.get("requeued_by")]
    assert requeued[0]["requeued_by"] == f"platform:{requeue_id}"
    assert requeued[0]["note"] == "INC-1 size limit raised"
    (retried,) = _log(config, "outbox.retried")
    assert retried["by"].startswith("platform:") and retried["note"] == "ACL changed"
    (dropped,) = _log(config, "outbox.dropped")
    assert dropped["by"] == f"platform:{drop_id}" and dropped["reason"] == "not ours"
    assert len(_log(config, "command.refused")) >= 1


def _state(config: Config, clip_id: str) -> str:
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        return str(db.execute("SELECT state FROM clips WHERE clip_id = ?", (clip_id,))
                   .fetchone()[0])
    finally:
        db.close()


def _refusals(config: Config, item: int) -> int:
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        return int(db.execute("SELECT refusals FROM outbox WHERE id = ?", (item,)).fetchone()[0])
    finally:
        db.close()
