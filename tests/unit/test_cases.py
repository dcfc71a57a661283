"""Cases from every source: the station CLI, case windows, the officer at the station.

Each tag, removal and correction is a clip.tagged log entry and event; the
sealed manifest is never rewritten.  Recording times are corrected by the
camera's clock offset, and case windows match the corrected times.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.custody import dsse
from agent.custody.keys import StationKey
from agent.errors import IntegrityError
from agent.officers import station as officer_station
from agent.officers import windows
from agent.store import Store
from agent.tagging import TagError
from agent.timeutil import parse_rfc3339
from scripts.devplatform.officers import OfficerAuthority, case_window, revocation
from tests.support.stations import camera, running_station
from tests.unit.test_officer_binding import import_roster, manifest_of

CHINESE = "内公(治)行罚决字〔2019〕123号"
T0 = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def platform_key() -> StationKey:
    return StationKey.generate()


@pytest.fixture
def keys(platform_key: StationKey) -> dict[str, Any]:
    return {platform_key.keyid: platform_key.public_key}


@pytest.fixture
def setup(station_config: Callable[..., Config], tmp_path: Path) -> tuple[Config, Path,
                                                                         OfficerAuthority]:
    authority = OfficerAuthority(tmp_path / "platform")
    config = station_config(f'[custody]\ncredential_key_file = "{authority.pub_path}"\n')
    config_path = tmp_path / "station.toml"
    roster = authority.snapshot(1, [
        authority.credential("000001", "张三", credential_id="C-1", card_id="CARD-1"),
        authority.credential("000002", "李四", credential_id="C-2"),
        authority.credential("000009", "刘队", credential_id="C-9", roles=["supervisor"]),
        authority.credential("000005", "钱七", credential_id="C-5"),
    ])
    roster = authority.snapshot(1, roster["credentials"], revoked=[
        revocation(roster["credentials"][3], "left the unit")])
    assert import_roster(config_path, roster, tmp_path) == 0
    return config, config_path, authority


def tags(store: Store, clip_id: str | None = None) -> list[dict[str, Any]]:
    rows = store.query("SELECT seq, clip_id, body FROM custody_log WHERE kind = 'clip.tagged' "
                       "ORDER BY seq")
    return [{"seq": r["seq"], "clip_id": r["clip_id"], **json.loads(r["body"])} for r in rows
            if clip_id is None or r["clip_id"] == clip_id]


def tag_events(store: Store) -> list[dict[str, Any]]:
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    return [e["data"] for e in events if e["type"] == "clip.tagged"]


def cases(store: Store, clip_id: str) -> list[str]:
    return [r["case_id"] for r in store.query(
        "SELECT case_id FROM clip_cases WHERE clip_id = ? ORDER BY tag_seq", (clip_id,))]


def offload(config: Config) -> Store:
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary.failures
    return Store(config.data_dir / "state.db", station_id="ST-0001")


def publish_window(store: Store, keys: dict[str, Any], signer: StationKey,
                   **fields: Any) -> tuple[windows.CaseWindow, int] | None:
    envelope = case_window(signer, **fields)
    return windows.accept(store, json.dumps(envelope, ensure_ascii=False).encode(), keys,
                          r"[^\W_][\w.:/#()（）〔〕［］【】\[\]-]{0,127}")


def test_station_cli_adds_corrects_and_removes_a_chinese_case(
        setup: tuple[Config, Path, OfficerAuthority],
        capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path, _ = setup
    camera(config, clips=2, serial="SIM0001", officer_id="000001")
    store = offload(config)
    first, second = (r["clip_id"] for r in store.clips())
    manifest_before = store.clip(first)["manifest"]
    cli = ["tag", "--config", str(config_path), "--clip", first[:30]]
    assert main([*cli, "--case", "WRONG-2019-123"]) == 0
    assert main([*cli, "--case", CHINESE, "--replace", "WRONG-2019-123"]) == 0
    assert main([*cli, "--clip", second, "--case", "CASE-7"]) == 0
    assert main([*cli, "--remove", "CASE-7"]) == 0
    assert main([*cli, "--case", CHINESE]) == 0  # already in it: no entry
    out = capsys.readouterr().out
    assert f"case WRONG-2019-123 -> {CHINESE}" in out and f"already in case {CHINESE}" in out
    # Refused, with the reason, and nothing logged: a case the clip is not in, a bad ID.
    assert main([*cli, "--remove", "NOT-THERE"]) == 2
    assert main([*cli, "--case", "bad case\n"]) == 2
    err = capsys.readouterr().err
    assert "is not in case 'NOT-THERE'" in err and "control or format character U+000A" in err

    entries = tags(store, first)
    assert [(t["action"], t["case_id"], t["previous_case_id"]) for t in entries] == [
        ("add", "WRONG-2019-123", None), ("correct", CHINESE, "WRONG-2019-123"),
        ("add", "CASE-7", None), ("remove", "CASE-7", None)]
    assert entries[1]["refers_to"] == entries[0]["seq"]
    assert entries[3]["refers_to"] == entries[2]["seq"]
    assert {t["source"] for t in entries} == {"station-cli"}
    assert all(t["sha256"] == store.clip(first)["sha256"] for t in entries)
    assert cases(store, first) == [CHINESE] and cases(store, second) == ["CASE-7"]
    assert store.clip(first)["case_id"] == CHINESE
    assert store.clip(first)["manifest"] == manifest_before, "a sealed manifest never changes"
    events = tag_events(store)
    assert [e["log_seq"] for e in events] == [t["seq"] for t in tags(store)]
    assert events[1]["case_id"] == CHINESE  # UTF-8 in the event, not escapes
    assert main(["clips", "--config", str(config_path), "--json"]) == 0
    listed = {c["clip_id"]: c for c in json.loads(capsys.readouterr().out)["clips"]}
    assert listed[first]["cases"] == [CHINESE] and listed[first]["officer_status"] == "valid"


def test_case_window_before_the_dock_tags_by_corrected_time(
        setup: tuple[Config, Path, OfficerAuthority], keys: dict[str, Any],
        platform_key: StationKey) -> None:
    config, _, _ = setup
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    # The camera's clock runs an hour fast: its file names say 09:00 for 08:00.
    true_window = publish_window(store, keys, platform_key, officer_id="000001",
                                 start=T0 - MINUTE, end=T0 + MINUTE, case_id=CHINESE,
                                 reference="110-20260301-0042", window_id="W-1")
    camera_clock = publish_window(store, keys, platform_key, officer_id="000001",
                                  start=T0 + 59 * MINUTE, end=T0 + 61 * MINUTE,
                                  case_id="CASE-BY-CAMERA-CLOCK", window_id="W-2")
    other = publish_window(store, keys, platform_key, officer_id="000002",
                           start=T0 - MINUTE, end=T0 + MINUTE, case_id="CASE-OTHER",
                           window_id="W-3")
    assert true_window is not None and true_window[1] == 0  # no clip yet
    assert camera_clock is not None and other is not None
    store.close()
    camera(config, clips=2, serial="SIM0001", officer_id="000001", start=T0,
           clock_offset_s=3600.0)
    store = offload(config)
    rows = store.clips()
    for row in rows:
        manifest = manifest_of(row)
        recorded = manifest["recorded"]
        camera_start = parse_rfc3339(recorded["camera_start"])
        start = parse_rfc3339(recorded["start"])
        assert abs((camera_start - start).total_seconds() - 3600) < 5
        assert recorded["time_source"] == "name"
        assert abs((start - T0).total_seconds()) < 30
        assert "recorded.time_mismatch" not in manifest["flags"]
        assert cases(store, row["clip_id"]) == [CHINESE]
        (entry,) = tags(store, row["clip_id"])
        assert entry["source"] == "case-window" and entry["window_id"] == "W-1"
        assert entry["reference"] == "110-20260301-0042" and entry["window_revision"] == 1
        seal_seq = store.query_one("SELECT seq FROM custody_log WHERE clip_id = ? AND "
                                   "kind = 'clip.sealed'", (row["clip_id"],))
        assert seal_seq is not None and entry["seq"] > seal_seq["seq"]


def test_case_window_after_the_dock_then_corrected_then_withdrawn(
        setup: tuple[Config, Path, OfficerAuthority], keys: dict[str, Any],
        platform_key: StationKey) -> None:
    config, _, _ = setup
    camera(config, clips=3, serial="SIM0001", officer_id="000001", start=T0, seconds=0.5)
    camera(config, clips=1, serial="SIM0002", officer_id="000002", start=T0)
    store = offload(config)
    mine = sorted((r for r in store.clips() if r["officer_id"] == "000001"),
                  key=lambda r: r["start_at"])
    other = next(r for r in store.clips() if r["officer_id"] == "000002")
    # Clips are 5.5 s apart: this window holds the first two of officer 000001.
    end = parse_rfc3339(mine[1]["start_at"]) + dt.timedelta(seconds=1)
    accepted = publish_window(store, keys, platform_key, officer_id="000001", start=T0,
                              end=end, case_id="CASE-A", window_id="W-9")
    assert accepted is not None and accepted[1] == 2
    assert [cases(store, r["clip_id"]) for r in mine] == [["CASE-A"], ["CASE-A"], []]
    assert cases(store, other["clip_id"]) == []
    # The same revision again (a redelivery) changes nothing.
    assert publish_window(store, keys, platform_key, officer_id="000001", start=T0, end=end,
                          case_id="CASE-A", window_id="W-9") is None
    # Revision 2: the dispatch system corrected the case number and widened the window.
    accepted = publish_window(store, keys, platform_key, officer_id="000001", start=T0,
                              end=T0 + MINUTE, case_id=CHINESE, window_id="W-9", revision=2)
    assert accepted is not None and accepted[1] == 3
    assert [cases(store, r["clip_id"]) for r in mine] == [[CHINESE]] * 3
    first = tags(store, mine[0]["clip_id"])
    assert [(t["action"], t["case_id"], t["previous_case_id"]) for t in first] == [
        ("add", "CASE-A", None), ("correct", CHINESE, "CASE-A")]
    assert first[1]["refers_to"] == first[0]["seq"] and first[1]["window_revision"] == 2
    # Revision 3 withdraws it: every tag it made is removed, each referring to its add.
    accepted = publish_window(store, keys, platform_key, officer_id="000001", start=T0,
                              end=T0 + MINUTE, case_id=CHINESE, window_id="W-9", revision=3,
                              withdrawn=True)
    assert accepted is not None and accepted[1] == 3
    assert [cases(store, r["clip_id"]) for r in mine] == [[], [], []]
    last = tags(store, mine[2]["clip_id"])
    assert [t["action"] for t in last] == ["add", "remove"]
    assert last[1]["refers_to"] == last[0]["seq"]
    kinds = [r["kind"] for r in store.query("SELECT kind FROM custody_log WHERE kind LIKE "
                                            "'case_window.%' ORDER BY seq")]
    assert kinds == ["case_window.accepted"] * 3


def test_case_windows_refused(setup: tuple[Config, Path, OfficerAuthority],
                              keys: dict[str, Any], platform_key: StationKey) -> None:
    config, _, _ = setup
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    with pytest.raises(IntegrityError, match="no signature by a trusted key"):
        publish_window(store, keys, StationKey.generate(), officer_id="000001", start=T0,
                       end=T0 + MINUTE, case_id="CASE-1")
    with pytest.raises(TagError, match="does not match the configured pattern"):
        publish_window(store, keys, platform_key, officer_id="000001", start=T0,
                       end=T0 + MINUTE, case_id="-starts-with-dash")
    with pytest.raises(IntegrityError, match="is not a window of at most 31 days"):
        publish_window(store, keys, platform_key, officer_id="000001", start=T0,
                       end=T0 - MINUTE, case_id="CASE-1")
    too_big = b"{" + b" " * windows.MAX_WINDOW_BYTES + b"}"
    with pytest.raises(IntegrityError, match="over the limit"):
        windows.accept(store, too_big, keys, ".*")
    refused = [json.loads(r["body"])["reason"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'case_window.refused' ORDER BY seq")]
    assert len(refused) == 4
    alerts = [json.loads(r["payload"])["data"].get("code") for r in store.query(
        "SELECT payload FROM outbox ORDER BY id")]
    assert alerts.count("case_window.refused") == 4
    assert store.query("SELECT * FROM case_windows") == []


def test_officer_at_the_station_tags_and_marks_important_by_credential(
        setup: tuple[Config, Path, OfficerAuthority]) -> None:
    config, _, _ = setup
    camera(config, clips=1, serial="SIM0001", officer_id="000001", important_every=0)
    camera(config, clips=1, serial="SIM0002", officer_id="000002", important_every=0)
    store = offload(config)
    mine = next(r for r in store.clips() if r["officer_id"] == "000001")["clip_id"]
    theirs = next(r for r in store.clips() if r["officer_id"] == "000002")["clip_id"]
    officer = officer_station.officer(store, config, card_id="CARD-1")
    assert officer.credential_id == "C-1"
    body = officer_station.tag(store, config, officer, mine, CHINESE)
    assert body is not None and body["credential_id"] == "C-1" and body["by"] == "000001"
    assert body["source"] == "station-officer"
    assert officer_station.mark_important(store, officer, mine) is not None
    assert officer_station.mark_important(store, officer, mine) is None  # already
    assert store.clip(mine)["important"] == 1
    (marked,) = [json.loads(r["body"]) for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'clip.important'")]
    assert marked == {"important": True, "source": "station-officer", "by": "000001",
                      "credential_id": "C-1", "sha256": store.clip(mine)["sha256"]}
    # Not another officer's clip; a supervisor may; a revoked credential may not act.
    with pytest.raises(officer_station.NotPermitted, match="their own clips only"):
        officer_station.tag(store, config, officer, theirs, "CASE-1")
    chief = officer_station.officer(store, config, credential_id="C-9")
    assert officer_station.tag(store, config, chief, theirs, "CASE-1") is not None
    with pytest.raises(officer_station.NotPermitted, match="not valid now: revoked"):
        officer_station.officer(store, config, credential_id="C-5")
    with pytest.raises(officer_station.NotPermitted, match="no credential"):
        officer_station.officer(store, config, card_id="NO-SUCH-CARD")
    assert [(t["clip_id"], t["by"], t["credential_id"]) for t in tags(store)] == [
        (mine, "000001", "C-1"), (theirs, "000009", "C-9")]


def test_recording_times_that_disagree_are_flagged(
        setup: tuple[Config, Path, OfficerAuthority]) -> None:
    config, _, _ = setup
    cam = camera(config, clips=3, serial="SIM0001", officer_id="000001", start=T0)
    files = sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file())
    # The file time of the second is 10 minutes off its name; the third's is off by the
    # volume's time zone (+8 h), which the station does not take for a disagreement.
    for path, shift in ((files[1], 600), (files[2], 8 * 3600)):
        mtime = path.stat().st_mtime + shift
        os.utime(path, (mtime, mtime))
    store = offload(config)
    flags = {r["path"]: manifest_of(r)["flags"] for r in store.clips()}
    names = [str(p.relative_to(cam)) for p in files]
    assert "recorded.time_mismatch" not in flags[names[0]]
    assert "recorded.time_mismatch" in flags[names[1]]
    assert "recorded.time_mismatch" not in flags[names[2]]


def test_manifest_keeps_the_credential_it_was_sealed_with(
        setup: tuple[Config, Path, OfficerAuthority]) -> None:
    config, _, _ = setup
    camera(config, clips=1, serial="SIM0001", officer_id="000001")
    store = offload(config)
    manifest = manifest_of(store.clips()[0])
    assert manifest["officer"]["credential_id"] == "C-1"
    envelope = json.loads(store.query_one(
        "SELECT envelope FROM officer_credentials WHERE credential_id = 'C-1'")["envelope"])
    assert dsse.b64decode(envelope["payload"])
