"""Active alerts: every alert event is counted by code, and the status lists those of the last day."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import Config
from agent.overview import ACTIVE_ALERT_S, active_alerts, station_status
from agent.store import Store
from agent.store.migrations import MIGRATIONS
from agent.timeutil import rfc3339


def test_alerts_are_counted_by_code_and_active_for_a_day(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    try:
        for code, message in (("disk.low", "12 MB free"), ("device.battery_low", "15 %"),
                              ("disk.low", "9 MB free")):
            with store.transaction() as tx:
                tx.log("alert", None, {"code": code, "message": message})
                tx.event("alert", {"code": code, "message": message, "serial": "CAM1"})
                time.sleep(0.002)  # distinct times, so "latest first" is defined
        active = station_status(config, store)["alerts"]["active"]
        assert [(a["code"], a["count"], a["message"]) for a in active] == [
            ("disk.low", 2, "9 MB free"), ("device.battery_low", 1, "15 %")]
        assert active[0]["serial"] == "CAM1"
        # A day later nothing was raised again: nothing is active, the counts stay.
        later = time.time() + ACTIVE_ALERT_S + 60
        assert active_alerts(store, later) == []
        assert store.query_one("SELECT count FROM alerts WHERE code = 'disk.low'")["count"] == 2
        # Messages quoting outside input are cut; so are codes.
        with store.transaction() as tx:
            tx.event("alert", {"code": "x" * 500, "message": "m" * 5000})
        row = store.query_one("SELECT code, message FROM alerts WHERE code LIKE 'xxx%'")
        assert len(row["code"]) == 64 and len(row["message"]) == 500
    finally:
        store.close()


def test_a_store_migrated_from_before_counts_the_alerts_it_already_sent(tmp_path: Path) -> None:
    db_path = tmp_path / "state.db"
    db = sqlite3.connect(db_path)
    for index, migration in enumerate(MIGRATIONS[:-1]):
        db.executescript(migration)
        db.execute(f"PRAGMA user_version = {index + 1}")
    older, newer = rfc3339(time.time() - 60), rfc3339(time.time() - 30)
    for at, code, message in ((older, "upload.failed", "413"), (newer, "upload.failed", "400"),
                              (newer, "disk.full", "no room")):
        payload = json.dumps({"id": "e", "type": "alert", "station_id": "ST-0001", "seq": 1,
                              "at": at, "data": {"code": code, "message": message}})
        db.execute("INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                   "VALUES ('t', ?, 1, 0, ?)", (payload.encode(), at))
    db.execute("INSERT INTO outbox (topic, payload, qos, retain, created_at) "
               "VALUES ('t', ?, 1, 1, ?)", (b'{"station_id": "ST-0001"}', older))
    db.execute("INSERT INTO outbox (topic, payload, qos, retain, created_at) "
               "VALUES ('t', ?, 1, 1, ?)", (b"\xff not json", older))
    db.commit()
    db.close()
    store = Store(db_path, station_id="ST-0001")
    try:
        rows = {r["code"]: dict(r) for r in store.query("SELECT * FROM alerts")}
        assert set(rows) == {"upload.failed", "disk.full"}
        assert rows["upload.failed"]["count"] == 2
        assert (rows["upload.failed"]["first_at"], rows["upload.failed"]["last_at"]) == (
            older, newer)
        assert rows["upload.failed"]["message"] == "400"
    finally:
        store.close()


def test_the_it_page_shows_the_agent_the_broker_and_the_active_alerts(
        station_config: Callable[..., Config]) -> None:
    """Rule: what `status` says of the daemon, its broker and its alerts, IT staff see too."""
    from agent.web import itview
    from agent.web.i18n import Catalogs

    config = station_config()
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    try:
        with store.transaction() as tx:
            tx.event("alert", {"code": "disk.low", "message": "9 MB free"})
        daemon = {"state": "running", "running": True, "version": "9.9",
                  "started_at": "2026-11-30T01:00:00.000Z",
                  "broker": {"state": "disconnected", "since": "2026-11-30T02:00:00.000Z",
                             "last_error": "connection refused"}}
        fig = itview.figures(config, store, None, None, [])
        fig["status"] = station_status(config, store, daemon=daemon)
        fig["status"]["sync"]["platform"] = True  # as on a station with a platform
        fig["status"]["sync"]["broker"] = daemon["broker"]
        catalogs = Catalogs(["zh_Hans_CN", "en"])
        for code, expected in (
                ("en", {"Agent": f"version {fig['status']['version']}, running since "
                                 "2026-11-30T01:00:00.000Z",
                        "Message broker": "disconnected since 2026-11-30T02:00:00.000Z — "
                                          "connection refused",
                        "Alerts": "1 kind raised in the last day"}),
                ("zh_Hans_CN", {"采集程序": f"版本 {fig['status']['version']}，自 "
                                         "2026-11-30T01:00:00.000Z 起运行",
                                "消息服务器": "自 2026-11-30T02:00:00.000Z 起已断开 — "
                                              "connection refused",
                                "告警": "最近一天内有 1 类告警"})):
            rows = {h["label"]: (h["value"], h["level"])
                    for h in itview.words(catalogs.pick(code), fig, "alice")["health"]}
            assert {label: rows[label][0] for label in expected} == expected
            assert [rows[label][1] for label in expected] == ["ok", "bad", "warn"]
        # The daemon's main loop hangs while its web thread still serves the page.
        fig["status"]["daemon"] = {**daemon, "state": "unresponsive", "running": False,
                                   "heartbeat_age_s": 312.5}
        rows = {h["label"]: (h["value"], h["level"])
                for h in itview.words(catalogs.pick("en"), fig, "alice")["health"]}
        assert rows["Agent"] == (f"version {fig['status']['version']}, running since "
                                 "2026-11-30T01:00:00.000Z — not responding: last heartbeat "
                                 "312.5 s ago", "bad")
    finally:
        store.close()
