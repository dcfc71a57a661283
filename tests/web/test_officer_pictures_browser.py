"""The pictures of the officer's recordings in a real browser (Debian's chromium).

A camera of the catalog entry that records video, photos and sound (MP4 and
AVI written by OpenCV, a JPEG photo and a WAV made by the ffmpeg command) is
docked for officer 000001, a camera of 000002 beside it.  Signed in, the
officer's list shows the first picture of each video and of the photo, and
the sound icon for the recording; the camera's tile shows the same pictures
to its officer only; signing out takes them off the screen.  Screenshots at
1024x600 land in test-artifacts/; axe-core checks each view.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.station import Station
from drivers import catalog as catalog_mod
from drivers.simcam import DEFAULT_CATALOG, make_camera
from tests.support.browser import axe_violations
from tests.web.conftest import browser_page
from tests.web.officer_station import OfficerStation, officer_station

pytestmark = pytest.mark.browser

ENTRY = "gat947-generic-b"  # mp4, avi, jpg, wav, amr


def _dock(setup: OfficerStation, tmp_path: Path, serial: str, officer: str, name: str,
          *, extras: bool) -> None:
    """Build the camera outside the watched root, add a photo and a sound recording, dock it."""
    entry = catalog_mod.load(DEFAULT_CATALOG).get(ENTRY)
    outside = tmp_path / "outside"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    cam = make_camera(outside, serial=serial, officer_id=officer, officer_name=name, clips=2,
                      seconds=0.5, width=320, height=180, important_every=0, start=start,
                      catalog_key=ENTRY)
    if extras:
        for seq, ext, source in ((3, "jpg", ["-f", "lavfi", "-i", "testsrc2=size=640x480",
                                             "-frames:v", "1"]),
                                 (4, "wav", ["-f", "lavfi", "-i",
                                             "sine=frequency=440:duration=1"])):
            target = cam / catalog_mod.format_name(
                entry, serial=serial, officer=officer, start=start + timedelta(minutes=seq),
                seq=seq, important=False, ext=ext)
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *source, str(target)],
                           check=True)
    os.rename(cam, Path(setup.station.config.devices["simulated"].root) / cam.name)


def _station(make_station: Callable[..., Station], tmp_path: Path) -> OfficerStation:
    def with_entry(extra: str = "", users: dict[str, str] | None = None,
                   before: str = "") -> Station:
        return make_station(extra, users=users, before=before,
                            sim=f'catalog_key = "{ENTRY}"\n')

    setup = officer_station(with_entry, tmp_path, cameras=False)
    _dock(setup, tmp_path, "ZFY0001", "000001", "张三", extras=True)
    _dock(setup, tmp_path, "ZFY0002", "000002", "李四", extras=False)
    deadline = time.monotonic() + 90
    while not (len(setup.clips("000001")) == 4 and len(setup.clips("000002")) == 2):
        assert time.monotonic() < deadline, "the clips of both cameras sealed"
        time.sleep(0.1)
    return setup


def _pictures(page: Any, root: str) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(f"{root} .picture", """els => els.map(e => ({
        tag: e.tagName.toLowerCase(), alt: e.alt || e.getAttribute('aria-label'),
        role: e.getAttribute('role'), width: e.naturalWidth || 0, height: e.naturalHeight || 0,
        clip: e.closest('li').dataset.clip}))""")


def _loaded(page: Any, root: str, count: int) -> None:
    page.wait_for_function(
        "([root, n]) => { const imgs = [...document.querySelectorAll(root + ' img.picture')];"
        " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=[root, count])


def test_the_officer_sees_the_first_picture_of_each_of_their_recordings(
        make_station: Callable[..., Station], tmp_path: Path, axe: str, artifacts: Path) -> None:
    setup = _station(make_station, tmp_path)
    mine = {r["clip_id"]: r["name"] for r in setup.clips("000001")}
    theirs = {r["clip_id"] for r in setup.clips("000002")}
    sound = next(c for c, n in mine.items() if n.endswith(".WAV"))
    with browser_page(width=1024, height=600) as page:
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url) if "/thumbnail/" in r.url else None)
        page.goto(setup.base)
        page.wait_for_selector(".dock[data-safe=true] >> nth=1")
        page.keyboard.type("8800000001\n")
        page.wait_for_selector("#mine[open] #mine-clips li")
        _loaded(page, "#mine-clips", 3)
        shown = {p["clip"]: p for p in _pictures(page, "#mine-clips")}
        assert set(shown) == set(mine)
        for clip_id, name in mine.items():
            p = shown[clip_id]
            if clip_id == sound:
                assert (p["tag"], p["role"], p["alt"]) == ("span", "img", f"{name} 是录音，没有画面")
            else:
                assert p["tag"] == "img" and p["alt"] == f"{name} 的第一个画面"
                # 320x180 video keeps its size; the 640x480 photo is made 240x180.
                assert (p["width"], p["height"]) == ((240, 180) if name.endswith(".JPG")
                                                     else (320, 180))
        page.screenshot(path=str(artifacts / "officer-recordings-pictures-1024x600.png"))
        assert axe_violations(page, axe) == []
        # The list is drawn again after each action: its pictures are not asked for again.
        asked = len(requested)
        first_video = next(c for c, n in mine.items() if n.endswith(".MP4"))
        page.locator(f"#mine-clips li[data-clip='{first_video}'] .mark").tap()
        page.wait_for_selector(f"#mine-clips li[data-clip='{first_video}'][data-important=true]")
        _loaded(page, "#mine-clips", 3)
        assert len(requested) == asked == 3

        # The camera's tile: its recordings with their pictures, for its officer.
        page.tap("#mine-close")
        page.locator(".dock", has_text="ZFY0001").locator(".tile").tap()
        page.wait_for_selector("#detail[open]")
        _loaded(page, "#detail-clips", 3)
        page.wait_for_selector("#detail-clips .picture-icon")  # the sound has no picture
        shown = {p["clip"]: p for p in _pictures(page, "#detail-clips")}
        assert set(shown) == set(mine)
        assert {c: p["tag"] for c, p in shown.items() if p["tag"] != "img"} == {sound: "span"}
        assert shown[sound]["alt"] == f"{mine[sound]} 没有画面"
        # The tile's rows are drawn again at each live update (another camera docks): their
        # pictures stay, and are not asked for again.
        asked = len(requested)
        page.evaluate("document.querySelectorAll('#detail-clips li').forEach(li => "
                      "li.dataset.before = 'yes')")
        _dock(setup, tmp_path, "ZFY0003", "000002", "李四", extras=False)
        page.wait_for_selector(".dock >> nth=2", state="attached")
        page.wait_for_function("() => document.querySelectorAll('.dock[data-safe=true]')"
                               ".length === 3")
        _loaded(page, "#detail-clips", 3)
        assert page.locator("#detail-clips li[data-before]").count() == 0  # drawn anew
        assert len(requested) == asked
        page.screenshot(path=str(artifacts / "officer-tile-pictures-1024x600.png"))
        assert axe_violations(page, axe) == []
        page.tap("#detail-close")

        # Another officer's camera: no picture is even asked for.
        page.locator(".dock", has_text="ZFY0002").locator(".tile").tap()
        page.wait_for_selector("#detail[open] #detail-clips li")
        assert _pictures(page, "#detail-clips") == []
        page.tap("#detail-close")
        assert not any(c in url for url in requested for c in theirs)

        # Signed out: the pictures leave the screen.
        page.tap("#signout")
        page.wait_for_selector("#card-form:not([hidden])")
        page.locator(".dock", has_text="ZFY0001").locator(".tile").tap()
        page.wait_for_selector("#detail[open] #detail-clips li")
        assert _pictures(page, "#detail-clips") == []
        assert page.eval_on_selector_all("#mine-clips li", "rows => rows.length") == 0
