"""A running station with officer credentials, a signed roster and clips of two officers.

The roster is signed by a development credential authority (as the platform
signs it) and accepted by the station's own code; the clips come from
simulated cameras docked the way real ones are.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.custody.keys import StationKey
from agent.officers import registry, windows
from agent.officers.roster import SNAPSHOT
from agent.station import Station
from drivers.simcam import make_camera
from scripts.devplatform.officers import OfficerAuthority, case_window, revocation
from tests.web.conftest import url_of

CHINESE = "内公(治)行罚决字〔2019〕123号"
WINDOW_CASE = "内公(治)行罚决字〔2019〕77号"
NOW = dt.datetime.now(dt.UTC)

# card number -> (officer number, name, credential id, roles)
CARDS = {
    "8800000001": ("000001", "张三", "C-1", ["officer"]),
    "8800000002": ("000002", "李四", "C-2", ["officer"]),
    "8800000009": ("000009", "刘队", "C-9", ["officer", "supervisor"]),
    "8800000005": ("000005", "钱七", "C-5", ["officer"]),  # revoked
    "8800000006": ("000006", "孙八", "C-6", ["officer"]),  # expired
}
REVOKED, EXPIRED, UNKNOWN = "8800000005", "8800000006", "8899999999"


@dataclass
class OfficerStation:
    station: Station
    base: str
    authority: OfficerAuthority
    platform_key: StationKey

    def clips(self, officer_id: str) -> list[Any]:
        assert self.station.store is not None
        return self.station.store.query(
            "SELECT * FROM clips WHERE officer_id = ? AND manifest IS NOT NULL "
            "ORDER BY name", (officer_id,))


def _wait(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def officer_station(make_station: Callable[..., Station], tmp_path: Path, extra: str = "",
                    *, cameras: bool = True, users: dict[str, str] | None = None
                    ) -> OfficerStation:
    """The station, its roster accepted, a case window of officer 000001 that ended yesterday,
    and (``cameras``) two sealed clips of 000001 on ZFY0001 and one of 000002 on ZFY0002."""
    authority = OfficerAuthority(tmp_path / "platform")
    station = make_station(extra, users=users, before=f"""
        [custody]
        credential_key_file = "{authority.pub_path}"
        """)
    envelopes = []
    for card, (number, name, cid, roles) in CARDS.items():
        if card == EXPIRED:
            envelopes.append(authority.credential(
                number, name, credential_id=cid, card_id=card, roles=roles,
                not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=35)))
        else:
            envelopes.append(authority.credential(number, name, credential_id=cid, card_id=card,
                                                  roles=roles))
    revoked = envelopes[list(CARDS).index(REVOKED)]
    roster = authority.snapshot(1, envelopes, revoked=[revocation(revoked, "card lost")])
    assert station.store is not None
    registry.accept(station.store, json.dumps(roster).encode(), SNAPSHOT,
                    registry.load_keys(authority.pub_path))
    platform_key = StationKey.generate()
    window = case_window(platform_key, officer_id="000001", case_id=WINDOW_CASE,
                         start=NOW - dt.timedelta(days=1, hours=2),
                         end=NOW - dt.timedelta(days=1), reference="110-20260301-0042")
    windows.accept(station.store, json.dumps(window).encode(),
                   {platform_key.keyid: platform_key.public_key},
                   station.config.custody.case_id_pattern)
    result = OfficerStation(station, url_of(station), authority, platform_key)
    if cameras:
        root = Path(station.config.devices["simulated"].root)
        make_camera(root, serial="ZFY0001", officer_id="000001", officer_name="张三", clips=2,
                    seconds=0.5, width=160, height=120, important_every=0)
        make_camera(root, serial="ZFY0002", officer_id="000002", officer_name="李四", clips=1,
                    seconds=0.5, width=160, height=120, important_every=0)
        _wait(lambda: len(result.clips("000001")) == 2 and len(result.clips("000002")) == 1,
              what="the clips of both cameras sealed")
    return result


def events(station: Station, kind: str) -> list[dict[str, Any]]:
    """The events of ``kind`` the station queued for the platform, in order."""
    assert station.store is not None
    found = [json.loads(r["payload"]) for r in station.store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    return [e["data"] for e in found if e["type"] == kind]


def network_officer_config(tmp_path: Path) -> Any:
    """A station whose pages listen on a LAN address (TLS, an IT account) and that checks
    officer credentials: its server is built but never started (nothing is bound)."""
    from tests.web.conftest import network_web_config

    authority = OfficerAuthority(tmp_path / "platform")
    return network_web_config(tmp_path, f"""
        [custody]
        credential_key_file = "{authority.pub_path}"
        """)
