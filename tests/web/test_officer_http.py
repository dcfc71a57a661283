"""The officer routes over real HTTP: CSRF and origin on every action, the sign-in limit, a
credential revoked while signed in, forged requests for another officer's clip, and what a
browser elsewhere on the network gets.  Nothing refused reaches the custody log."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import requests

from agent.officers import registry
from agent.officers.roster import UPDATE
from agent.station import Station
from scripts.devplatform.officers import revocation
from tests.web.conftest import PASSWORD, custody, log_size
from tests.web.officer_station import (
    CHINESE,
    UNKNOWN,
    OfficerStation,
    network_officer_config,
    officer_station,
)

ACTIONS = ("officer/tag", "officer/untag", "officer/important", "officer/signout")


def _page_token(http: requests.Session, base: str) -> str:
    page = http.get(base, timeout=10)
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def _sign_in(http: requests.Session, base: str, card: str, **extra: str) -> requests.Response:
    token = _page_token(http, base)
    return http.post(base + "officer/signin", timeout=10, headers={"Origin": base.rstrip("/")},
                     data={"csrf_token": token, "card": card, **extra})


def _post(http: requests.Session, base: str, path: str, data: dict[str, str],
          headers: dict[str, str] | None = None) -> requests.Response:
    return http.post(base + path, timeout=10, data=data,
                     headers={"Origin": base.rstrip("/")} if headers is None else headers)


def test_every_officer_action_needs_the_sessions_token_and_origin(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path)
    base, station = setup.base, setup.station
    mine = setup.clips("000001")[0]["clip_id"]
    before = log_size(station)
    # Sign-in itself: the page's token, bound to this browser's cookie, from the page's origin.
    good = _page_token(http, base)
    for data, headers in [
        ({"card": "8800000001"}, {"Origin": base.rstrip("/")}),
        ({"csrf_token": "0" * 64, "card": "8800000001"}, {"Origin": base.rstrip("/")}),
        ({"csrf_token": good, "card": "8800000001"}, {"Origin": "http://evil.example"}),
        ({"csrf_token": good, "card": "8800000001"}, {}),
    ]:
        refused = http.post(base + "officer/signin", data=data, headers=headers, timeout=10)
        assert refused.status_code == 403, (data, headers)
        assert "bwc_officer" not in refused.cookies
    stranger = requests.post(base + "officer/signin", data={"csrf_token": good,
                                                            "card": "8800000001"},
                             headers={"Origin": base.rstrip("/")}, timeout=10)
    assert stranger.status_code == 403  # the token without the cookie it is bound to
    assert log_size(station) == before

    signed = _sign_in(http, base, "8800000001")
    assert signed.status_code == 200
    cookie = signed.headers["set-cookie"]
    assert "bwc_officer=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    session = signed.json()
    assert session["officer"]["credential_id"] == "C-1" and session["timeout_s"] == 90
    size = log_size(station)
    data = {"clip_id": mine, "case_id": CHINESE}
    for path in ACTIONS:
        for token, headers in [(None, None), ("x" * 43, None), (good, None),
                               (session["csrf"], {"Origin": "http://evil.example"}),
                               (session["csrf"], {})]:
            form = dict(data, **({"csrf_token": token} if token else {}))
            refused = _post(http, base, path, form, headers)
            assert refused.status_code == 403, (path, token, headers)
            assert "过期" in refused.json()["error"]
        # The right token from a browser without the session: signed out, nothing done.
        other = requests.post(base + path, data=dict(data, csrf_token=session["csrf"]),
                              headers={"Origin": base.rstrip("/")}, timeout=10)
        assert other.status_code == 401 and other.json()["signed_out"] is True
    assert log_size(station) == size
    done = _post(http, base, "officer/tag", dict(data, csrf_token=session["csrf"]))
    assert done.status_code == 200
    assert log_size(station) == size + 1


def test_refused_sign_ins_are_rate_limited_and_never_logged(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path, """
        officer_sign_in_attempts = 3
        officer_sign_in_window_s = 600
        """, cameras=False, users={"alice": PASSWORD})
    before = log_size(setup.station)
    for card in (UNKNOWN, "12", "x" * 300):
        refused = _sign_in(http, setup.base, card)
        assert refused.status_code == 401
    limited = _sign_in(http, setup.base, "8800000001")  # a good card waits too
    assert limited.status_code == 429
    assert re.fullmatch(r"登录被拒绝次数过多，请 \d+ 秒后再试。", limited.json()["error"])
    assert "bwc_officer" not in limited.cookies
    assert log_size(setup.station) == before
    assert setup.station.web is not None
    assert setup.station.web.ctx.officer_refusals.snapshot() == {"unknown": 3, "limited": 1}
    # IT staff see the count on their page (from memory: the log has nothing of it).
    it = requests.Session()
    form = it.get(setup.base + "it/signin", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    assert it.post(setup.base + "it/signin", timeout=30, allow_redirects=False,
                   headers={"Origin": setup.base.rstrip("/")},
                   data={"csrf_token": token.group(1), "name": "alice",
                         "password": PASSWORD}).status_code == 303
    with it.get(setup.base + "it/events", stream=True, timeout=10) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and line != "data: {}":
                health = {h["label"]: h["value"] for h in json.loads(line[6:])["health"]}
                break
    assert health["本次启动以来被拒绝的民警登录"] == "4"


def test_an_officer_number_alone_never_signs_in(make_station: Callable[..., Station],
                                                tmp_path: Path,
                                                http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path, cameras=False)
    for card, number in (("000001", None), ("", "000001"), ("8800000002", "000001")):
        extra = {"officer_number": number} if number else {}
        assert _sign_in(http, setup.base, card, **extra).status_code == 401
    ok = _sign_in(http, setup.base, "8800000001", officer_number="000001")
    assert ok.status_code == 200 and ok.json()["officer"]["name"] == "张三"
    assert custody(setup.station, "web.signed_in")[0]["method"] == "officer-number+card"


def test_a_credential_revoked_while_signed_in_ends_the_session(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path)
    mine = setup.clips("000001")[0]["clip_id"]
    session = _sign_in(http, setup.base, "8800000001").json()
    _revoke_c1(setup)
    refused = _post(http, setup.base, "officer/important",
                    {"clip_id": mine, "csrf_token": session["csrf"]})
    assert refused.status_code == 401 and refused.json()["signed_out"] is True
    assert refused.json()["error"] == "您的凭证在本工作站已不再有效，已自动退出登录。"
    (ended,) = custody(setup.station, "web.signed_out")
    assert (ended["credential_id"], ended["reason"]) == ("C-1", "credential_invalid")
    assert custody(setup.station, "clip.important") == []
    again = _sign_in(http, setup.base, "8800000001")
    assert again.status_code == 401
    assert again.json()["error"] == "此卡已被注销，不能使用。请联系本单位管理员。"


def _revoke_c1(setup: OfficerStation) -> None:
    assert setup.station.store is not None
    credential = setup.station.store.query_one(
        "SELECT envelope FROM officer_credentials WHERE credential_id = 'C-1'")
    assert credential is not None
    update = setup.authority.update(2, 1, revoke=[revocation(json.loads(credential["envelope"]),
                                                             "card lost")])
    registry.accept(setup.station.store, json.dumps(update).encode(), UPDATE,
                    registry.load_keys(setup.authority.pub_path))


def test_tags_are_undone_only_by_who_made_them_or_a_supervisor(
        make_station: Callable[..., Station], tmp_path: Path) -> None:
    setup = officer_station(make_station, tmp_path)
    mine = setup.clips("000001")[0]["clip_id"]
    chief, officer = requests.Session(), requests.Session()
    chief_token = _sign_in(chief, setup.base, "8800000009").json()["csrf"]
    assert _post(chief, setup.base, "officer/tag",
                 {"clip_id": mine, "case_id": "CASE-7", "csrf_token": chief_token}
                 ).status_code == 200
    token = _sign_in(officer, setup.base, "8800000001").json()["csrf"]
    # The supervisor was signed out by the next card: one officer at the screen at a time.
    assert [e["reason"] for e in custody(setup.station, "web.signed_out")] == ["another_card"]
    before = log_size(setup.station)
    refused = _post(officer, setup.base, "officer/untag",
                    {"clip_id": mine, "case_id": "CASE-7", "csrf_token": token})
    assert refused.status_code == 403
    assert refused.json()["error"] == "只有在工作站添加此案件编号的民警或督察可以移除它。"
    missing = _post(officer, setup.base, "officer/untag",
                    {"clip_id": mine, "case_id": "CASE-8", "csrf_token": token})
    assert missing.status_code == 409
    unknown = _post(officer, setup.base, "officer/important",
                    {"clip_id": "0190f1e2-0000-7000-8000-000000000000", "csrf_token": token})
    assert unknown.status_code == 404
    assert log_size(setup.station) == before
    listed = officer.get(setup.base + "officer/clips", timeout=10).json()
    cases = {c["id"]: c["cases"] for c in listed["clips"]}
    assert cases[mine] == [{"case_id": "CASE-7", "removable": False,
                            "remove_label": f"移除案件 CASE-7（{_name(setup, mine)}）"}]


def _name(setup: OfficerStation, clip_id: str) -> str:
    assert setup.station.store is not None
    return str(setup.station.store.clip(clip_id)["name"])


def test_officer_routes_answer_the_stations_own_screen_only(tmp_path: Path) -> None:
    from agent.store import Store
    from agent.web.server import WebServer
    from tests.web.test_web_http import _asgi_get

    config = network_officer_config(tmp_path)
    store = Store(tmp_path / "state.db", station_id="ST-0001")
    try:
        server = WebServer(config, store, None, None)  # never started: nothing is bound
        assert _asgi_get(server.app, "/officer/session", "192.0.2.7") == 403
        assert _asgi_get(server.app, "/officer/clips", "192.0.2.7") == 403
        assert _asgi_get(server.app, "/officer/session", "127.0.0.1") == 200
    finally:
        store.close()


def test_without_officer_credentials_no_officer_route_answers(
        make_station: Callable[..., Station], http: requests.Session) -> None:
    from tests.web.conftest import url_of

    base = url_of(make_station())
    page = http.get(base, timeout=10).text
    assert 'id="officer-slot" class="officer-slot" hidden' in page
    assert "officer.js" not in page and 'id="card-input"' not in page
    for path in ("officer/session", "officer/clips"):
        assert http.get(base + path, timeout=10).status_code == 404
    for path in ("officer/signin", *ACTIONS):
        assert http.post(base + path, timeout=10).status_code == 404
