"""The thumbnails of the officer's recordings over real HTTP, and no evidence from any route.

A thumbnail goes only to the officer signed in at the station's own screen
whose recording it is (or a supervisor), as a JPEG that is never cached or
sniffed; a signed-out browser, another officer and a request from the
network get none.  Then every route of the pages is asked, by a signed-in
officer, a supervisor, IT staff and a stranger, with every clip id and
digest the station holds: no answer carries a byte sequence of any vault
object.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
from starlette.routing import Mount, Route

from agent.station import Station
from agent.thumbnails import Thumbnails
from agent.web.security import CSP
from tests.web.conftest import PASSWORD, log_size
from tests.web.officer_station import CHINESE, network_officer_config, officer_station
from tests.web.test_officer_http import _sign_in

WEB = Path(__file__).resolve().parents[2] / "agent" / "web"


def _thumb(http: requests.Session, base: str, clip_id: str, **params: str) -> requests.Response:
    return http.get(f"{base}officer/thumbnail/{clip_id}", params=params, timeout=10)


def test_the_officer_gets_the_pictures_of_their_own_recordings_only(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path)
    base, station = setup.base, setup.station
    thumbs = Thumbnails(station.config.data_dir)
    first, second = (r["clip_id"] for r in setup.clips("000001"))
    (theirs,) = (r["clip_id"] for r in setup.clips("000002"))
    before = log_size(station)

    signed_out = _thumb(http, base, first)
    assert signed_out.status_code == 401 and signed_out.json()["signed_out"] is True
    assert signed_out.headers["content-type"] == "application/json"

    assert _sign_in(http, base, "8800000001").status_code == 200
    size = log_size(station)
    got = _thumb(http, base, first)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["cache-control"] == "no-store"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == CSP
    assert got.content == thumbs.path(first).read_bytes()
    picture = cv2.imdecode(np.frombuffer(got.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (120, 160, 3)  # 160x120: never enlarged

    refused = _thumb(http, base, theirs)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/json"
    assert refused.json()["error"] == "这条录像不属于您：只有录制它的民警或督察可以查看。"
    assert _thumb(http, base, theirs, lang="en").json()["error"] == (
        "This recording is not yours: only the officer who recorded it, or a supervisor, may "
        "see it.")
    for unknown in ("0190f0c1-0000-7000-8000-00000000dead", "not-a-clip", "..", "%2e%2e"):
        assert _thumb(http, base, unknown).status_code == 404, unknown
    assert log_size(station) == size  # looking is no action: nothing in the custody log

    # The list says which picture each recording has, in the page's language.
    thumbs.discard(second)
    rows = {c["id"]: c for c in http.get(base + "officer/clips", timeout=10).json()["clips"]}
    assert rows[first]["picture"] == {"kind": "image", "src": f"/officer/thumbnail/{first}",
                                      "alt": f"{rows[first]['name']} 的第一个画面"}
    assert rows[second]["picture"] == {"kind": "none", "src": None,
                                       "alt": f"{rows[second]['name']} 没有画面"}
    english = http.get(base + "officer/clips?lang=en", timeout=10).json()["clips"]
    assert {c["id"]: c["picture"]["alt"] for c in english}[first] == \
        f"First picture of {rows[first]['name']}"
    gone = _thumb(http, base, second)
    assert gone.status_code == 404 and gone.json()["error"] == "这条录像没有画面。"

    # A supervisor sees every officer's; once signed out, nobody's.
    assert _sign_in(http, base, "8800000009").status_code == 200
    assert _thumb(http, base, theirs).content == thumbs.path(theirs).read_bytes()
    session = http.get(base + "officer/session", timeout=10).json()
    http.post(base + "officer/signout", data={"csrf_token": session["csrf"]},
              headers={"Origin": base.rstrip("/")}, timeout=10)
    assert _thumb(http, base, theirs).status_code == 401
    assert log_size(station) == before + 4  # two sign-ins, two sign-outs


def test_an_audio_recording_is_listed_with_the_sound_icon(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    setup = officer_station(make_station, tmp_path)
    first = setup.clips("000001")[0]
    assert setup.station.store is not None
    media = first["media"].replace('"kind": "video"', '"kind": "audio"')
    with setup.station.store.transaction() as tx:
        tx.execute("UPDATE clips SET media = ? WHERE clip_id = ?", (media, first["clip_id"]))
    Thumbnails(setup.station.config.data_dir).discard(first["clip_id"])
    assert _sign_in(http, setup.base, "8800000001").status_code == 200
    rows = {c["id"]: c for c in http.get(setup.base + "officer/clips", timeout=10).json()["clips"]}
    assert rows[first["clip_id"]]["picture"] == {
        "kind": "audio", "src": None, "alt": f"{first['name']} 是录音，没有画面"}


def test_from_the_network_no_picture_is_served(tmp_path: Path) -> None:
    from agent.store import Store
    from agent.web.server import WebServer
    from tests.web.test_web_http import _asgi_get

    config = network_officer_config(tmp_path)
    clip = "0190f0c1-0000-7000-8000-000000000001"
    Thumbnails(config.data_dir).save(clip, cv2.imencode(".jpg", np.zeros((9, 16, 3),
                                                                         np.uint8))[1].tobytes())
    store = Store(tmp_path / "state.db", station_id="ST-0001")
    try:
        server = WebServer(config, store, None, None)  # never started: nothing is bound
        assert _asgi_get(server.app, f"/officer/thumbnail/{clip}", "192.0.2.7") == 403
        assert _asgi_get(server.app, f"/officer/thumbnail/{clip}", "127.0.0.1") == 401
    finally:
        store.close()


# --- no route carries evidence -----------------------------------------------------------

WINDOW = 48  # bytes: a run this long from a vault object in an answer would be its bytes


def _samples(objects: list[Path]) -> list[bytes]:
    """Windows of every vault object: its first bytes, then one every 2 KiB."""
    found = []
    for path in objects:
        data = path.read_bytes()
        found += [data[at:at + WINDOW] for at in range(0, max(len(data) - WINDOW, 1), 2048)]
    return found


def _body(response: requests.Response, limit: int = 1 << 20, seconds: float = 1.0) -> bytes:
    """The answer's bytes; of a live stream, what it sends within ``seconds`` (the read
    timeout of its request ends a stream that sends nothing more)."""
    data = b""
    start = time.monotonic()
    try:
        for chunk in response.iter_content(chunk_size=None):
            data += chunk
            if len(data) >= limit or time.monotonic() - start > seconds:
                break
    except requests.ConnectionError:
        pass  # the live stream went quiet
    response.close()
    return data


def _paths(template: str, values: list[str]) -> Iterator[str]:
    names = re.findall(r"\{(\w+)(?::\w+)?\}", template)
    if not names:
        yield template
        return
    for value in values:
        yield re.sub(r"\{\w+(?::\w+)?\}", value, template)


def _it_browser(base: str) -> tuple[requests.Session, str]:
    it = requests.Session()
    form = it.get(base + "it/signin", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    assert it.post(base + "it/signin", timeout=30, allow_redirects=False,
                   headers={"Origin": base.rstrip("/")},
                   data={"csrf_token": token.group(1), "name": "alice",
                         "password": PASSWORD}).status_code == 303
    page = re.search(r'name="csrf_token" value="([^"]+)"', it.get(base + "it", timeout=10).text)
    assert page is not None
    return it, page.group(1)


def _officer_browser(base: str, card: str) -> tuple[requests.Session, str]:
    client = requests.Session()
    assert _sign_in(client, base, card).status_code == 200
    return client, client.get(base + "officer/session", timeout=10).json()["csrf"]


def test_no_route_answers_with_the_bytes_of_evidence(
        make_station: Callable[..., Station], tmp_path: Path) -> None:
    setup = officer_station(make_station, tmp_path, users={"alice": PASSWORD})
    base, station = setup.base, setup.station
    assert station.store is not None and station.vault is not None and station.web is not None
    clips = list(station.store.query("SELECT clip_id, sha256, name FROM clips"))
    objects = sorted(p for p in station.vault.objects.rglob("*") if p.is_file())
    assert len(objects) == len(clips) == 3
    samples = _samples(objects)

    def carries(body: bytes) -> bool:
        return any(s in body for s in samples)

    assert carries(objects[0].read_bytes())  # the check finds a vault object when it sees one

    # Every route, with each clip id, digest and a few paths in its parameters and queries.
    values = [c["clip_id"] for c in clips] + [c["sha256"] for c in clips] + [
        c["sha256"][:2] for c in clips] + ["vault", "state.db", "..", "%2e%2e%2fvault"]
    queries: list[dict[str, str]] = [{}] + [{"clip": v, "clip_id": v, "sha256": v, "path": v,
                                             "serial": "ZFY0001"} for v in (
        clips[0]["clip_id"], clips[0]["sha256"], "../vault")]
    app: Any = station.web.app.app  # the Starlette application inside the Guard
    targets: list[tuple[str, str, list[dict[str, str]]]] = []
    for route in app.routes:
        if isinstance(route, Mount):
            targets += [("GET", f"{route.path}/{name}", [{}]) for name in
                        [p.name for p in sorted((WEB / "static").iterdir())] + values]
            continue
        assert isinstance(route, Route)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            for path in _paths(route.path, values):
                many = method == "GET" and path == route.path and "events" not in path
                targets.append((method, path, queries if many else [{}]))
    targets.sort(key=lambda t: t[0] != "GET")  # the POSTs last: they sign the browser out

    # An officer, a supervisor (one at a time at the screen), IT staff and a stranger.
    browsers: list[Callable[[], tuple[requests.Session, str]]] = [
        lambda: _officer_browser(base, "8800000001"), lambda: _officer_browser(base, "8800000009"),
        lambda: _it_browser(base), lambda: (requests.Session(), "x")]
    asked: list[tuple[str, str, int]] = []
    for browser in browsers:
        client, csrf = browser()
        for method, path, variants in targets:
            for query in variants:
                if method == "GET":
                    live = path.endswith("/events")  # a stream: what it sends at first
                    response = client.get(base + path.lstrip("/"), params=query, stream=True,
                                          timeout=(10, 0.5 if live else 10),
                                          allow_redirects=False)
                else:
                    response = client.post(
                        base + path.lstrip("/"), stream=True, timeout=10,
                        allow_redirects=False, headers={"Origin": base.rstrip("/")},
                        data={"csrf_token": csrf, "case_id": CHINESE,
                              "clip_id": clips[0]["clip_id"], "card": "8800000001"})
                body = _body(response)
                asked.append((method, path, response.status_code))
                assert not carries(body), (method, path, query, response.status_code)

    # Every route was asked, the pictures among them, and answered.
    served = {(m, p) for m, p, s in asked if s == 200}
    assert ("GET", f"/officer/thumbnail/{clips[0]['clip_id']}") in served
    assert {"/", "/events", "/it", "/it/events", "/officer/clips",
            "/static/officer.js"} <= {p for _m, p in served}
    assert {(m, p) for m, p, _s in asked if m == "POST"} == {
        ("POST", r.path) for r in app.routes if isinstance(r, Route) and "POST" in r.methods}
    assert len(asked) > 150


def test_loading_pictures_does_not_keep_an_officer_signed_in(
        make_station: Callable[..., Station], tmp_path: Path, http: requests.Session) -> None:
    """Pictures load by themselves; only the officer's own taps count as use of the screen."""
    setup = officer_station(make_station, tmp_path, "officer_timeout_s = 2\n")
    mine = setup.clips("000001")[0]["clip_id"]
    assert _sign_in(http, setup.base, "8800000001").status_code == 200
    deadline = time.monotonic() + 2.5
    answers = []
    while time.monotonic() < deadline:
        answers.append(_thumb(http, setup.base, mine).status_code)
        time.sleep(0.2)
    assert answers[0] == 200 and answers[-1] == 401
    assert http.get(setup.base + "officer/session", timeout=10).json()["signed_in"] is False
