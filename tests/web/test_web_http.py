"""The pages' server over real HTTP: headers, hosts, CSRF, sign-in limits, what no route can do."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from agent.station import Station
from agent.web import app as web_app
from tests.web.conftest import PASSWORD, custody, log_size, network_web_config, url_of


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def _sign_in(http: requests.Session, base: str, name: str = "alice",
             password: str = PASSWORD) -> requests.Response:
    form = http.get(base + "it/signin", timeout=10)
    return http.post(base + "it/signin", timeout=30, allow_redirects=False,
                     headers={"Origin": base.rstrip("/")},
                     data={"csrf_token": _csrf(form.text), "name": name, "password": password})


def test_every_response_carries_the_security_headers(make_station: Callable[..., Station],
                                                     http: requests.Session) -> None:
    base = url_of(make_station())
    for path in ("", "static/pages.css", "it/signin", "nowhere"):
        response = http.get(base + path, timeout=10)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers
    page = http.get(base, timeout=10)
    assert page.headers["cache-control"] == "no-store"
    assert '<html lang="zh-Hans-CN"' in page.text and "执法记录仪采集站" in page.text
    english = http.get(base + "?lang=en", timeout=10)
    assert '<html lang="en"' in english.text and "Camera dock" in english.text
    assert '<html lang="zh-Hans-CN"' in http.get(base + "?lang=xx", timeout=10).text


def test_a_foreign_host_name_is_refused(make_station: Callable[..., Station],
                                        http: requests.Session) -> None:
    """A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing."""
    base = url_of(make_station())
    refused = http.get(base, headers={"Host": "evil.example:80"}, timeout=10)
    assert refused.status_code == 421
    assert http.get(base, headers={"Host": "localhost"}, timeout=10).status_code == 200


def test_no_route_can_delete_anything(make_station: Callable[..., Station],
                                      http: requests.Session) -> None:
    station = make_station()
    base = url_of(station)
    actions = set()
    assert station.web is not None
    app = station.web.app.app  # inside the Guard
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        assert not methods & {"DELETE", "PUT", "PATCH"}, route
        if "POST" in methods:
            actions.add(route.path)
    # The only actions: sign in and out, requeue, the officer's sign-in and out, tag and
    # untag, mark important.  None removes evidence.
    assert actions == {"/it/signin", "/it/signout", "/it/requeue", "/officer/signin",
                       "/officer/signout", "/officer/tag", "/officer/untag",
                       "/officer/important"}
    for path in ("", "it", "it/requeue", "static/pages.css", "events"):
        assert http.delete(base + path, timeout=10).status_code in (404, 405)
    assert http.put(base + "it/requeue", timeout=10).status_code == 405


def test_a_post_without_or_with_a_wrong_token_is_refused_and_logs_nothing(
        make_station: Callable[..., Station], http: requests.Session) -> None:
    station = make_station(users={"alice": PASSWORD})
    base = url_of(station)
    origin = {"Origin": base.rstrip("/")}
    before = log_size(station)
    form = http.get(base + "it/signin", timeout=10)
    good = _csrf(form.text)
    cases = [
        ({"name": "alice", "password": PASSWORD}, origin),                        # no token
        ({"csrf_token": "0" * 64, "name": "alice", "password": PASSWORD}, origin),  # wrong
        ({"csrf_token": good, "name": "alice", "password": PASSWORD},
         {"Origin": "http://evil.example"}),                                         # foreign
        ({"csrf_token": good, "name": "alice", "password": PASSWORD}, {}),           # no origin
    ]
    for data, headers in cases:
        response = http.post(base + "it/signin", data=data, headers=headers, timeout=10,
                             allow_redirects=False)
        assert response.status_code == 403, (data, headers)
        assert "bwc_session" not in response.cookies
    # The same token from another browser (no CSRF cookie) is refused too.
    stranger = requests.post(base + "it/signin", data={"csrf_token": good, "name": "alice",
                                                       "password": PASSWORD},
                             headers=origin, timeout=10, allow_redirects=False)
    assert stranger.status_code == 403
    assert log_size(station) == before

    signed = _sign_in(http, base)
    assert signed.status_code == 303 and signed.headers["location"].startswith("/it")
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    (entry,) = custody(station, "web.signed_in")
    assert (entry["user"], entry["role"], entry["address"]) == ("alice", "it", "127.0.0.1")
    # Signed in, an action still needs the session's own token.
    size = log_size(station)
    for token in (None, "x" * 43, good):
        data = {"clip_id": "0190f1e2-0000-7000-8000-000000000000"}
        if token:
            data["csrf_token"] = token
        refused = http.post(base + "it/requeue", data=data, headers=origin, timeout=10,
                            allow_redirects=False)
        assert refused.status_code == 403
    refused = http.post(base + "it/signout", headers=origin, timeout=10, allow_redirects=False)
    assert refused.status_code == 403
    assert log_size(station) == size


def test_sign_in_is_rate_limited_and_a_wrong_name_looks_like_a_wrong_password(
        make_station: Callable[..., Station], http: requests.Session) -> None:
    station = make_station("""
        sign_in_attempts = 3
        sign_in_window_s = 600
        """, users={"alice": PASSWORD})
    base = url_of(station)
    assert _sign_in(http, base, "mallory", "x" * 12).status_code == 401
    for _ in range(3):
        wrong = _sign_in(http, base, "alice", "wrong password!")
        assert wrong.status_code in (401, 429)
    limited = _sign_in(http, base, "alice", PASSWORD)
    assert limited.status_code == 429 and "10" in limited.text
    assert custody(station, "web.signed_in") == []


def test_oversized_and_malformed_bodies_are_refused(make_station: Callable[..., Station],
                                                    http: requests.Session) -> None:
    base = url_of(make_station())
    big = http.post(base + "it/signin", data={"name": "a" * 100_000}, timeout=10)
    assert big.status_code == 413
    junk = http.post(base + "it/signin", data=b"\xff\xfe" * 100, timeout=10,
                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert junk.status_code == 403


def test_officer_sign_in_is_absent_until_officer_credentials_plug_in(
        make_station: Callable[..., Station], http: requests.Session) -> None:
    base = url_of(make_station())
    assert 'id="officer-slot" class="officer-slot" hidden' in http.get(base, timeout=10).text
    assert http.post(base + "officer/signin", timeout=10).status_code == 404


def test_the_it_page_needs_a_session(make_station: Callable[..., Station],
                                     http: requests.Session) -> None:
    base = url_of(make_station(users={"alice": PASSWORD}))
    redirect = http.get(base + "it", allow_redirects=False, timeout=10)
    assert redirect.status_code == 303 and redirect.headers["location"].startswith("/it/signin")
    assert http.get(base + "it/events", timeout=10).status_code == 401
    assert _sign_in(http, base).status_code == 303
    page = http.get(base + "it", timeout=10)
    assert page.status_code == 200 and "alice" in page.text


def test_no_external_address_in_any_page_asset() -> None:
    """Stations are often offline: every script, style, font and image is served locally."""
    root = Path(web_app.__file__).parent
    files = [p for p in root.rglob("*") if p.suffix in (".html", ".js", ".css", ".po")]
    assert len(files) >= 8
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text), path
        assert "@import" not in text and "url(" not in text, path
    for template in root.glob("templates/*.html"):
        text = template.read_text(encoding="utf-8")
        assert "<style" not in text and " style=" not in text, template
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"inline script in {template}"
        assert not re.search(r"\son[a-z]+=", text), f"inline handler in {template}"


@pytest.mark.parametrize("listen", ["0.0.0.0", "192.0.2.10"])
def test_a_network_address_needs_tls_and_accounts(tmp_path: Path, listen: str) -> None:
    from agent import config as config_mod
    from agent.errors import ConfigError
    from tests.conftest import write_station_config

    path = write_station_config(tmp_path, f"""
        [web]
        listen = "{listen}"
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    (problem,) = info.value.problems
    assert "web.tls_cert_file, web.tls_key_file, web.users_file" in problem
    path = write_station_config(tmp_path, f"""
        [web]
        listen = "{listen}"
        tls_cert_file = "web.pem"
        tls_key_file = "web.key"
        users_file = "users.json"
        """)
    assert config_mod.load(path).web is not None


def test_over_tls_cookies_are_secure_and_hsts_is_sent(make_station: Callable[..., Station],
                                                       tmp_path: Path) -> None:
    from agent.devpki import DevCA

    ca = DevCA(tmp_path / "ca")
    issued = ca.issue("station-web", "web", server=True, client=False)
    os.chmod(issued.key_path, 0o600)
    station = make_station(f"""
        tls_cert_file = "{issued.cert_path}"
        tls_key_file = "{issued.key_path}"
        """, users={"alice": PASSWORD})
    base = url_of(station).replace("127.0.0.1", "localhost")
    assert base.startswith("https://")
    with requests.Session() as http:
        http.trust_env = False  # REQUESTS_CA_BUNDLE would replace the station's CA
        http.verify = str(ca.cert_path)
        page = http.get(base, timeout=10)
        assert page.status_code == 200
        assert page.headers["strict-transport-security"].startswith("max-age=")
        signed = _sign_in(http, base)
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base, timeout=10)  # not trusted without the station's CA


def _asgi_get(app: object, path: str, client: str) -> int:
    """One GET through the real application, from ``client`` (no LAN traffic in tests)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "GET", "scheme": "https", "path": path,
             "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"station.example")], "client": (client, 50000),
             "server": ("192.0.2.1", 8947)}
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    return statuses[0]


def test_from_the_network_the_officer_page_needs_a_session(tmp_path: Path) -> None:
    """Listening on a LAN address, a client elsewhere is sent to sign in; the station is not."""
    from agent.store import Store
    from agent.web.server import WebServer

    config = network_web_config(tmp_path)
    store = Store(tmp_path / "state.db", station_id="ST-0001")
    try:
        server = WebServer(config, store, None, None)  # never started: nothing is bound
        assert _asgi_get(server.app, "/", "192.0.2.7") == 303
        assert _asgi_get(server.app, "/events", "192.0.2.7") == 401
        assert _asgi_get(server.app, "/", "127.0.0.1") == 200
        assert _asgi_get(server.app, "/it/signin", "192.0.2.7") == 200
    finally:
        store.close()


def test_a_network_address_without_accounts_does_not_start(tmp_path: Path) -> None:
    from agent import config as config_mod
    from agent.errors import ConfigError
    from agent.station import Station
    from tests.conftest import write_station_config

    path = write_station_config(tmp_path, f"""
        [web]
        listen = "0.0.0.0"
        port = 0
        tls_cert_file = "{tmp_path / 'web.pem'}"
        tls_key_file = "{tmp_path / 'web.key'}"
        users_file = "{tmp_path / 'users.json'}"
        """)
    station = Station(config_mod.load(path))
    with pytest.raises(ConfigError, match="no IT accounts yet"):
        station.start(watch=True)


def test_one_stream_carries_coalesced_updates_only_when_something_changed(
        make_station: Callable[..., Station]) -> None:
    """A copy makes hundreds of progress reports; the page gets a few messages a second."""
    import time

    from agent.web.live import TICK_S
    from drivers.simcam import make_camera

    station = make_station(sim="read_kib_s = 512\n", before="""
        [ingest]
        chunk_kib = 64
        """)
    base = url_of(station)
    reports = [0]
    real = station.progress.clip_bytes

    def counted(handle: str, clip_id: str, done: int) -> None:
        reports[0] += 1
        real(handle, clip_id, done)

    station.progress.clip_bytes = counted  # type: ignore[method-assign]
    messages: list[tuple[float, dict[str, object]]] = []
    with requests.get(base + "events", stream=True, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines(chunk_size=1, decode_unicode=True)
        make_camera(Path(station.config.devices["simulated"].root), serial="ZFY0042",
                    clips=2, seconds=2.0, width=640, height=480)
        started = time.monotonic()
        for line in lines:
            if line.startswith("data: "):
                data = json.loads(line[6:])
                messages.append((time.monotonic(), data))
                tiles = data["tiles"]
                if tiles and tiles[0]["safe"]:
                    break
            assert time.monotonic() - started < 60
    elapsed = messages[-1][0] - started
    assert reports[0] >= 8  # 64 KiB chunks of ~560 KB
    # At most one message per tick (plus the first), and no two identical in a row.
    assert len(messages) <= elapsed / TICK_S + 2, (len(messages), elapsed)
    texts = [json.dumps(m, sort_keys=True) for _t, m in messages]
    assert all(a != b for a, b in itertools.pairwise(texts))
    done = [m["tiles"][0]["progress"]["value"] for _t, m in messages if m["tiles"]]
    assert done == sorted(done) and len(set(done)) >= 3
