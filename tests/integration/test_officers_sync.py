"""Officers and cases over the real platform link: mosquitto (TLS), the development platform.

The retained roster reaches a station that starts after it was published;
roster updates and case windows arrive as QoS 1 messages; tags made while
the broker is down reach the platform in order once it is back.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.config import Config
from agent.custody.keys import StationKey
from agent.officers import station as officer_station
from agent.station import Station
from agent.store import Store
from drivers.simcam import make_camera
from scripts.devplatform.officers import (
    case_window,
    publish_case_window,
    publish_roster,
    revocation,
)
from scripts.devplatform.stand import DevStand

pytestmark = pytest.mark.integration

CHINESE = "内公(治)行罚决字〔2019〕123号"
# An hour ago: recordings within the credentials' validity (by default from 30 days ago).
T0 = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def _station(stand: DevStand, tmp_path: Path) -> tuple[Config, Path]:
    path = stand.station(tmp_path / "ST-0001", "ST-0001", platform_extra="retry_max_s = 1\n")
    return config_mod.load(path), path


def _db(config: Config) -> sqlite3.Connection:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.row_factory = sqlite3.Row
    return db


def _log(config: Config, kind: str) -> list[dict[str, Any]]:
    return [{"seq": r["seq"], "clip_id": r["clip_id"], **json.loads(r["body"])}
            for r in _db(config).execute(
                "SELECT seq, clip_id, body FROM custody_log WHERE kind = ? ORDER BY seq",
                (kind,))]


def _wait(what: str, predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def _camera(config: Config, serial: str, officer: str, **kwargs: Any) -> Path:
    return make_camera(config.devices["simulated"].root, serial=serial, officer_id=officer,
                       seconds=0.5, width=160, height=120, fps=10.0, **kwargs)


def test_roster_and_case_windows_reach_the_station_before_and_after_the_dock(
        stand: DevStand, tmp_path: Path) -> None:
    config, _ = _station(stand, tmp_path)
    officers = stand.officers
    zhang = officers.credential("000001", "张三", credential_id="C-1")
    li = officers.credential("000002", "李四", credential_id="C-2")
    # Retained: published before the station ever connected, it still arrives.
    publish_roster(stand.platform, "ST-0001", officers.snapshot(1, [zhang, li]))
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        _wait("roster 1 accepted", lambda: _log(config, "roster.accepted"))
        # An update revokes 李四; it comes as a QoS 1 message.
        publish_roster(stand.platform, "ST-0001",
                       officers.update(2, 1, revoke=[revocation(li, "停职")]), update=True)
        _wait("roster 2 accepted", lambda: len(_log(config, "roster.accepted")) == 2)
        # A case window before the dock...
        publish_case_window(stand.platform, "ST-0001", case_window(
            stand.pki.signer(), officer_id="000001", start=T0 - MINUTE, end=T0 + MINUTE,
            case_id=CHINESE, reference="110-0042", window_id="W-1"))
        _wait("window W-1", lambda: _log(config, "case_window.accepted"))
        _camera(config, "SIM0001", "000001", clips=2, start=T0)
        _camera(config, "SIM0002", "000002", clips=1, start=T0)
        _wait("clips acknowledged", lambda: [r for r in _db(config).execute(
            "SELECT state FROM clips")] and all(r["state"] in ("released", "acknowledged")
                                               for r in _db(config).execute(
                                                   "SELECT state FROM clips")), timeout=60)
        clips = {r["clip_id"]: dict(r) for r in _db(config).execute("SELECT * FROM clips")}
        assert len(clips) == 3
        li_clip = next(c for c in clips.values() if c["officer_id"] == "000002")
        # ... and one after it, for 李四's clip.
        publish_case_window(stand.platform, "ST-0001", case_window(
            stand.pki.signer(), officer_id="000002", start=T0 - MINUTE, end=T0 + MINUTE,
            case_id="CASE-LI", window_id="W-2"))
        _wait("window W-2 tagged", lambda: any(t["window_id"] == "W-2"
                                               for t in _log(config, "clip.tagged")))
        # A forged window (another key) is refused and reported.
        publish_case_window(stand.platform, "ST-0001", case_window(
            StationKey.generate(), officer_id="000001", start=T0, end=T0 + MINUTE,
            case_id="FORGED", window_id="W-3"))
        _wait("forged window refused", lambda: _log(config, "case_window.refused"))
        # The platform's tag command, with the Chinese case number, and a correction.
        response = stand.platform.send_command("ST-0001", "tag", {
            "case_id": CHINESE, "replaces": "CASE-LI", "clips": [li_clip["clip_id"]]})
        assert response["ok"] is True and response["result"]["tagged"] == [li_clip["clip_id"]]
        stand.platform.flush()
        _wait("every event delivered", lambda: station.sync.outbox.backlog() == 0)
    finally:
        station.stop()

    statuses = {c["officer_id"]: c["officer_status"] for c in clips.values()}
    assert statuses == {"000001": "valid", "000002": "revoked"}
    tagged = _log(config, "clip.tagged")
    by_window = {(t["clip_id"], t["window_id"]) for t in tagged if t.get("window_id")}
    zhang_clips = {c for c, row in clips.items() if row["officer_id"] == "000001"}
    assert by_window == {(c, "W-1") for c in zhang_clips} | {(li_clip["clip_id"], "W-2")}
    assert (tagged[-1]["action"], tagged[-1]["case_id"], tagged[-1]["previous_case_id"],
            tagged[-1]["source"]) == ("correct", CHINESE, "CASE-LI", "platform-command")
    cases = {r["clip_id"]: r["case_id"] for r in _db(config).execute(
        "SELECT clip_id, case_id FROM clip_cases")}
    assert cases == {c: CHINESE for c in clips}
    # What the platform received.
    events = stand.platform.events("ST-0001")
    seen = [e["data"] for e in events if e["type"] == "clip.tagged"]
    assert [(e["clip_id"], e["case_id"], e["log_seq"]) for e in seen] == [
        (t["clip_id"], t["case_id"], t["seq"]) for t in tagged]
    assert any(e["case_id"] == CHINESE for e in seen)
    alerts = [e["data"] for e in events if e["type"] == "alert"]
    assert [a["code"] for a in alerts if a.get("clip_id") == li_clip["clip_id"]] == [
        "officer.revoked"]
    assert any(a["code"] == "case_window.refused" for a in alerts)
    accepted = [e["data"] for e in events if e["type"] == "roster.accepted"]
    assert [(a["kind"], a["version"]) for a in accepted] == [("snapshot", 1), ("update", 2)]
    sealed = [e["data"] for e in events if e["type"] == "clip.sealed"]
    assert {s["clip_id"] for s in sealed} == set(clips)


def test_tags_made_while_the_broker_is_down_arrive_in_order(stand: DevStand,
                                                             tmp_path: Path) -> None:
    config, config_path = _station(stand, tmp_path)
    officers = stand.officers
    publish_roster(stand.platform, "ST-0001", officers.snapshot(1, [
        officers.credential("000001", "张三", credential_id="C-1", card_id="CARD-1")]))
    _camera(config, "SIM0001", "000001", clips=2, start=T0)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        _wait("clips acknowledged", lambda: (rows := list(_db(config).execute(
            "SELECT state FROM clips"))) and all(r["state"] == "released" for r in rows),
            timeout=60)
        first, second = sorted(r["clip_id"] for r in _db(config).execute("SELECT clip_id "
                                                                         "FROM clips"))
        stand.stop_broker()
        _wait("link down", lambda: not station.sync.link.connected, timeout=10)
        # Offline: the station CLI and the officer at the station go on tagging.
        cli = ["tag", "--config", str(config_path), "--clip", first]
        assert main([*cli, "--case", "CASE-1"]) == 0
        assert main([*cli, "--case", CHINESE, "--replace", "CASE-1"]) == 0
        assert main([*cli, "--clip", second, "--case", "CASE-2"]) == 0
        assert main([*cli, "--remove", "CASE-2"]) == 0
        store = Store(config.data_dir / "state.db", station_id="ST-0001")
        officer = officer_station.officer(store, config, card_id="CARD-1")
        assert officer_station.tag(store, config, officer, second, CHINESE) is not None
        assert officer_station.mark_important(store, officer, second) is not None
        store.close()
        waiting = _db(config).execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS "
                                      "NULL").fetchone()[0]
        assert waiting >= 6
        stand.start_broker()
        _wait("backlog sent", lambda: station.sync.outbox.backlog() == 0, timeout=60)
        # Sent is not received yet: the platform takes them from its broker session as
        # it records them, each acknowledged once recorded.
        made = _db(config).execute(
            "SELECT COUNT(*) FROM outbox WHERE json_extract(payload, '$.type') IN "
            "('clip.tagged', 'clip.important')").fetchone()[0]
        stand.platform.wait_for(lambda: len([
            e for e in stand.platform.events("ST-0001")
            if e["type"] in ("clip.tagged", "clip.important")]) >= made, 30, "every tag")
    finally:
        station.stop()
    tagged = _log(config, "clip.tagged")
    assert [(t["clip_id"], t["action"], t["case_id"]) for t in tagged] == [
        (first, "add", "CASE-1"), (first, "correct", CHINESE), (first, "add", "CASE-2"),
        (second, "add", "CASE-2"), (first, "remove", "CASE-2"), (second, "add", CHINESE)]
    assert tagged[1]["refers_to"] == tagged[0]["seq"]
    assert tagged[4]["refers_to"] == tagged[2]["seq"]
    events = stand.platform.events("ST-0001")
    received = [e for e in events if e["type"] in ("clip.tagged", "clip.important")]
    assert [e["data"]["log_seq"] for e in received] == sorted(
        e["data"]["log_seq"] for e in received), "in the order they were made"
    assert [(e["data"]["action"], e["data"]["case_id"]) for e in received
            if e["type"] == "clip.tagged"] == [(t["action"], t["case_id"]) for t in tagged]
    assert [e["seq"] for e in received] == sorted(e["seq"] for e in received)
    important = [e["data"] for e in received if e["type"] == "clip.important"]
    assert important and important[0]["credential_id"] == "C-1"
    officer_tag = [e["data"] for e in received if e["type"] == "clip.tagged"][-1]
    assert (officer_tag["source"], officer_tag["credential_id"]) == ("station-officer", "C-1")


def test_a_flood_of_junk_roster_and_case_window_messages_adds_a_bounded_record(
        stand: DevStand, tmp_path: Path) -> None:
    """Rule: nothing unauthenticated grows the custody log without bound (refusals collapse)."""
    config, _ = _station(stand, tmp_path)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        deep = b"[" * 100_000 + b"]" * 100_000
        forged = case_window(StationKey.generate(), officer_id="000001", start=T0,
                             end=T0 + MINUTE, case_id="FORGED", window_id="W-F")
        for i in range(300):
            junk = (b"junk %d" % i, deep, json.dumps(forged).encode())[i % 3]
            stand.platform.publish_raw("bwc/v1/stations/ST-0001/roster/update", junk)
            stand.platform.publish_raw("bwc/v1/stations/ST-0001/case-window", junk)
        _wait("every message handled", lambda: station.sync.inbound.idle() and len(
            _log(config, "roster.refused")) >= 1 and len(_log(config, "case_window.refused"))
            >= 1, timeout=60)
        time.sleep(0.5)
        assert station.sync.inbound.idle()
    finally:
        station.stop()
    roster = _log(config, "roster.refused")
    windows_refused = _log(config, "case_window.refused")
    # One entry per refusal code, plus one summary each once the window closes (at stop).
    assert [(r["code"], r.get("repeated")) for r in roster] == [
        ("invalid", None), ("invalid", 299)]
    assert [(r["code"], r.get("repeated")) for r in windows_refused] == [
        ("invalid", None), ("invalid", 299)]
    first = roster[0]
    assert first["payload_bytes"] == len(b"junk 0") and len(first["reason"]) < 500
    assert first["kind"] == "update"
