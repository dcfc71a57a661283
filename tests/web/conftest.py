"""A running station with its pages on a free loopback port, and a real browser to look at them."""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import config as config_mod
from agent.config import Config
from agent.station import Station
from agent.web.accounts import Accounts, users_path
from tests.conftest import write_station_config
from tests.support import browser

PASSWORD = "correct horse battery"
_STARTED = time.time()


@contextmanager
def page_station(base: Path, extra: str = "", *, users: dict[str, str] | None = None,
                 sim: str = "", before: str = "") -> Iterator[Station]:
    """A station (detectors watching its simulated root) with ``[web]`` on port 0.

    ``sim`` adds keys to ``[devices.simulated]``, ``before`` whole tables before ``[web]``,
    ``extra`` keys to ``[web]``.
    """
    path = write_station_config(base, textwrap.dedent(sim) + textwrap.dedent(before)
                                + textwrap.dedent("""
        [web]
        port = 0
        """) + textwrap.dedent(extra))
    config = config_mod.load(path)
    accounts = Accounts(users_path(config))
    for name, password in (users or {}).items():
        accounts.add(name, password)
    station = Station(config)
    station.start(watch=True)
    try:
        yield station
    finally:
        station.stop()


@pytest.fixture
def make_station(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    stack: list[Any] = []

    def make(extra: str = "", users: dict[str, str] | None = None, sim: str = "",
             before: str = "") -> Station:
        cm = page_station(tmp_path, extra, users=users, sim=sim, before=before)
        station = cm.__enter__()
        stack.append(cm)
        return station

    yield make
    while stack:
        stack.pop().__exit__(None, None, None)


def url_of(station: Station) -> str:
    assert station.web is not None
    return str(station.web.url)


def custody(station: Station, kind: str) -> list[dict[str, Any]]:
    import json

    assert station.store is not None
    return [{"seq": r["seq"], "clip_id": r["clip_id"], **json.loads(r["body"])}
            for r in station.store.query("SELECT * FROM custody_log WHERE kind = ? ORDER BY seq",
                                         (kind,))]


def log_size(station: Station) -> int:
    assert station.store is not None
    return station.store.log_size()


def config_of(station: Station) -> Config:
    return station.config


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@contextmanager
def browser_page(*, width: int = 1024, height: int = 600, touch: bool = True) -> Iterator[Any]:
    """A page in Debian's chromium with a fresh profile, sized like the station's screen."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    # Chromium's last helper processes may still write to the profile while it is removed
    # (a busy machine): a leftover temporary profile is not the test's failure.
    with tempfile.TemporaryDirectory(prefix="bwc-chromium-", ignore_cleanup_errors=True) \
            as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=browser.chromium(), headless=True,
            args=browser.CHROMIUM_ARGS, viewport={"width": width, "height": height},
            has_touch=touch, locale="zh-CN", env={**os.environ, "TZ": "UTC"})
        try:
            context.set_default_timeout(20_000)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            try:
                context.close()
            except PlaywrightError as exc:
                # The browser went away after the test's last step (every step before it
                # would have failed otherwise): nothing is left to close.
                if "has been closed" not in str(exc):
                    raise


@pytest.fixture(scope="session")
def axe() -> str:
    return browser.axe_source()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    directory = browser.artifact_dir()
    print(f"\nscreenshots: {directory}")
    return directory


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the page screenshots are (the test artifacts of the browser tests)."""
    shots = [p for p in browser.ARTIFACTS.glob("*.png") if p.stat().st_mtime >= _STARTED] \
        if browser.ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"page screenshots ({len(shots)}): {browser.ARTIFACTS}")


def network_web_config(tmp_path: Path, extra: str = "") -> Config:
    """A station whose pages listen on a LAN address, with TLS files in place and the IT
    account alice (PASSWORD); ``extra`` TOML goes before the [web] table."""
    import os
    import textwrap

    from agent import config as config_mod
    from agent.web.accounts import Accounts
    from tests.conftest import write_station_config

    path = write_station_config(tmp_path, textwrap.dedent(extra) + textwrap.dedent(f"""
        [web]
        listen = "192.0.2.1"
        hostnames = ["station.example"]
        tls_cert_file = "{tmp_path / 'web.pem'}"
        tls_key_file = "{tmp_path / 'web.key'}"
        users_file = "{tmp_path / 'users.json'}"
        """))
    config = config_mod.load(path)
    Accounts(tmp_path / "users.json").add("alice", PASSWORD)
    (tmp_path / "web.key").write_text("unused here")
    os.chmod(tmp_path / "web.key", 0o600)
    return config
