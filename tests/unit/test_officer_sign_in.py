"""The officer at the station (agent.officers.station): sign-in by card, checked offline against
the roster held now, each refusal with its reason; who may undo a tag; what the screen lists."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.custody.keys import StationKey
from agent.officers import station as officer_station
from agent.store import Store
from scripts.devplatform.officers import OfficerAuthority, revocation
from tests.support.stations import camera
from tests.unit.test_cases import CHINESE, offload, publish_window
from tests.unit.test_officer_binding import import_roster

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def roster(station_config: Callable[..., Config], tmp_path: Path
           ) -> tuple[Config, OfficerAuthority]:
    authority = OfficerAuthority(tmp_path / "platform")
    config = station_config(f'[custody]\ncredential_key_file = "{authority.pub_path}"\n')
    other = StationKey.generate()  # not the platform's credential key
    credentials = [
        authority.credential("000001", "张三", credential_id="C-1", card_id="1001"),
        # The same card renewed: the old credential expired, the new one is valid.
        authority.credential("000002", "李四", credential_id="C-2-old", card_id="1002",
                             not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY),
        authority.credential("000002", "李四", credential_id="C-2", card_id="1002",
                             not_before=NOW - 30 * DAY),
        authority.credential("000003", "王五", credential_id="C-3", card_id="1003",
                             not_before=NOW - 400 * DAY, not_after=NOW - DAY),
        authority.credential("000004", "赵六", credential_id="C-4", card_id="1004",
                             not_before=NOW + DAY),
        authority.credential("000005", "钱七", credential_id="C-5", card_id="1005"),
        authority.credential("000009", "刘队", credential_id="C-9", card_id="1009",
                             roles=["officer", "supervisor"]),
    ]
    # Carried by a roster the platform signed, but not signed by the credential key itself.
    credentials.append(authority.credential("000006", "孙八", credential_id="C-6",
                                            card_id="1006", signer=other))
    snapshot = authority.snapshot(1, credentials, revoked=[revocation(credentials[5], "lost")])
    assert import_roster(config.source, snapshot, tmp_path) == 0
    return config, authority


def _refusal(store: Store, config: Config, card: str, number: str | None = None) -> str:
    with pytest.raises(officer_station.SignInRefused) as info:
        officer_station.sign_in(store, config, card, number)
    return info.value.reason


def test_a_card_signs_in_only_with_a_credential_valid_now(
        roster: tuple[Config, OfficerAuthority]) -> None:
    config, _ = roster
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    try:
        assert officer_station.sign_in(store, config, "1001").credential_id == "C-1"
        assert officer_station.sign_in(store, config, "1002").credential_id == "C-2"  # renewed
        assert _refusal(store, config, "1003") == "expired"
        assert _refusal(store, config, "1004") == "not-yet-valid"
        assert _refusal(store, config, "1005") == "revoked"
        assert _refusal(store, config, "1006") == "bad-signature"
        assert _refusal(store, config, "9999") == "unknown"
        # With the officer number: only that officer's card counts, and says no more.
        assert officer_station.sign_in(store, config, "1001", "000001").officer_id == "000001"
        assert _refusal(store, config, "1001", "000002") == "unknown"
        assert _refusal(store, config, "1005", "000001") == "unknown"
        # Card numbers are compared exactly as the platform issued them.
        assert _refusal(store, config, "01001") == "unknown"
    finally:
        store.close()


def test_a_station_without_the_credential_key_signs_nobody_in(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    try:
        with pytest.raises(officer_station.SignInRefused) as info:
            officer_station.sign_in(store, config, "1001")
        assert info.value.reason == "not-checked"
    finally:
        store.close()


def test_tags_are_undone_by_who_made_them_at_the_station_never_from_other_sources(
        roster: tuple[Config, OfficerAuthority]) -> None:
    config, _ = roster
    camera(config, clips=2, serial="SIM0001", officer_id="000001", important_every=0)
    camera(config, clips=1, serial="SIM0002", officer_id="000002", important_every=0)
    store = offload(config)
    try:
        mine, also_mine = (r["clip_id"] for r in store.clips() if r["officer_id"] == "000001")
        (theirs,) = (r["clip_id"] for r in store.clips() if r["officer_id"] == "000002")
        officer = officer_station.officer(store, config, credential_id="C-1")
        chief = officer_station.officer(store, config, credential_id="C-9")
        signer = StationKey.generate()
        start = dt.datetime.fromisoformat(store.clip(mine)["start_at"].replace("Z", "+00:00"))
        assert publish_window(store, {signer.keyid: signer.public_key}, signer,
                              officer_id="000001", start=start - DAY, end=start + DAY,
                              case_id="WINDOW-1") is not None
        assert officer_station.tag(store, config, chief, mine, "CHIEF-1") is not None
        assert officer_station.tag(store, config, officer, mine, CHINESE) is not None

        def refused(credential: Any, case_id: str, **kw: Any) -> str:
            with pytest.raises(officer_station.NotPermitted) as info:
                officer_station.tag(store, config, credential, mine, case_id, **kw)
            return info.value.code

        assert refused(officer, "WINDOW-1", remove=True) == "not-own-tag"
        assert refused(chief, "WINDOW-1", remove=True) == "not-own-tag"  # the platform's
        assert refused(officer, "CHIEF-1", remove=True) == "not-own-tag"
        assert refused(officer, "NEW-1", replaces="WINDOW-1") == "not-own-tag"
        assert officer_station.tag(store, config, chief, mine, CHINESE, remove=True) is not None
        assert officer_station.tag(store, config, chief, mine, "CHIEF-1", remove=True)
        with pytest.raises(officer_station.NotPermitted) as info:
            officer_station.mark_important(store, officer, theirs)
        assert info.value.code == "not-own-clip"

        listed = officer_station.recent_clips(store, officer)
        assert {c["clip_id"] for c in listed} == {mine, also_mine}
        by_id = {c["clip_id"]: c for c in listed}
        assert by_id[mine]["cases"] == [{"case_id": "WINDOW-1", "removable": False}]
        assert {c["clip_id"] for c in officer_station.recent_clips(store, chief)} == {
            mine, also_mine, theirs}
        assert [c["clip_id"] for c in officer_station.recent_clips(
            store, chief, serial="SIM0002")] == [theirs]
        assert officer_station.recent_clips(store, officer, serial="SIM0002") == []
        # Picked from: the officer's case windows, then the cases of their recent clips.
        assert officer_station.case_choices(store, officer) == ["WINDOW-1"]
        officer_station.tag(store, config, officer, also_mine, "CASE-2")
        assert officer_station.case_choices(store, officer) == ["WINDOW-1", "CASE-2"]
        assert officer_station.case_choices(store, chief) == []
        entries = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.tagged' ORDER BY seq")]
        assert [(e["source"], e["action"], e["case_id"], e.get("credential_id"))
                for e in entries] == [
            ("case-window", "add", "WINDOW-1", None), ("case-window", "add", "WINDOW-1", None),
            ("station-officer", "add", "CHIEF-1", "C-9"),
            ("station-officer", "add", CHINESE, "C-1"),
            ("station-officer", "remove", CHINESE, "C-9"),
            ("station-officer", "remove", "CHIEF-1", "C-9"),
            ("station-officer", "add", "CASE-2", "C-1")]
    finally:
        store.close()
