"""The station's pages in a real browser (Debian's chromium): what an officer and IT staff see.

A simulated camera is docked the way a real one is (its directory appears in
the watched root) and its tile is watched through copying to "safe to
undock"; a camera that cannot be read shows its problem; IT staff sign in,
requeue a quarantined clip and are signed out when idle; forged actions are
refused.  axe-core checks both pages.  Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.station import Station
from agent.store import ClipState
from drivers.simcam import make_camera
from tests.support.browser import axe_violations
from tests.web.conftest import PASSWORD, browser_page, custody, log_size, url_of

pytestmark = pytest.mark.browser

OFFICERS = ["李明", "王芳", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "黄勇", "周婷", "吴刚",
            "徐娜", "孙涛", "马超", "朱丽", "胡斌", "郭敏", "何军", "高峰", "林琳", "罗勇",
            "郑浩", "梁雪", "谢东", "宋佳", "唐亮"]


def _sim_root(station: Station) -> Path:
    return Path(station.config.devices["simulated"].root)


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def _tile(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => {
        const d = document.querySelector('.dock');
        if (!d) return null;
        const bar = d.querySelector('.bar');
        return {state: d.dataset.state, safe: d.dataset.safe, value: bar.value, max: bar.max,
                stateText: d.querySelector('.state-text').textContent,
                officer: d.querySelector('.name').textContent,
                number: d.querySelector('.number').textContent,
                port: d.querySelector('.port').textContent};
    }""")


def _small_targets(page: Any) -> list[str]:
    """Buttons and links smaller than 48 x 48 CSS pixels (touch targets)."""
    return page.evaluate("""() => [...document.querySelectorAll('button, a, [role=button]')]
        .filter(e => e.offsetParent !== null)
        .filter(e => { const r = e.getBoundingClientRect();
                       return r.width < 48 || r.height < 48; })
        .map(e => e.outerHTML.slice(0, 80))""")


def test_a_docked_camera_is_watched_from_copying_to_safe_to_undock(
        make_station: Callable[..., Station], axe: str, artifacts: Path) -> None:
    station = make_station(sim="read_kib_s = 160\n", before="""
        [ingest]
        chunk_kib = 64
        """)
    base = url_of(station)
    with browser_page(width=1024, height=600) as page:
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
        page.goto(base)
        page.wait_for_selector("#empty:not([hidden])")
        assert page.inner_text("#empty .empty-title") == "请插入执法记录仪"
        page.screenshot(path=str(artifacts / "kiosk-empty-1024x600.png"))

        make_camera(_sim_root(station), serial="ZFY0042", officer_id="010203",
                    officer_name="李明", clips=2, seconds=2.0, width=640, height=480)
        page.wait_for_selector(".dock")
        samples: list[tuple[str, float, float]] = []
        shot = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tile = _tile(page)
            samples.append((tile["stateText"], tile["value"], tile["max"]))
            if tile["state"] == "copying" and 0 < tile["value"] < tile["max"] and not shot:
                page.screenshot(path=str(artifacts / "kiosk-copying-1024x600.png"))
                shot = True
            if tile["safe"] == "true":
                break
            time.sleep(0.1)
        tile = _tile(page)
        assert (tile["state"], tile["stateText"], tile["safe"]) == ("safe", "可以取下", "true")
        assert (tile["officer"], tile["number"], tile["port"]) == ("李明", "警号 010203",
                                                                    "接口 ZFY0042")
        copying = [value for text, value, maximum in samples
                   if text == "正在复制" and 0 < value < maximum]
        assert len(set(copying)) >= 3, samples
        assert copying == sorted(copying), "the camera's progress bar went backwards"
        assert tile["value"] == tile["max"]
        # Never "safe" before the last sample that was still working.
        first_safe = next(i for i, s in enumerate(samples) if s[0] == "可以取下")
        assert all(s[0] == "可以取下" for s in samples[first_safe:])
        page.screenshot(path=str(artifacts / "kiosk-safe-1024x600.png"))
        assert page.inner_text("#summary") == "已插入 1 台记录仪"
        assert _small_targets(page) == []
        assert axe_violations(page, axe) == []

        # A tap shows every recording with its own bar and state.
        page.tap(".dock .tile")
        page.wait_for_selector("#detail[open] .clip")
        rows = page.eval_on_selector_all(
            "#detail .clip", "rows => rows.map(r => [r.querySelector('.clip-step').textContent,"
            " r.querySelector('.clip-bar').value === r.querySelector('.clip-bar').max])")
        assert rows == [["已封存", True], ["已封存", True]]
        page.screenshot(path=str(artifacts / "kiosk-detail-1024x600.png"))
        assert axe_violations(page, axe) == []
        page.tap("#detail-close")
        page.wait_for_selector("#detail:not([open])", state="attached")

        # The language switch works by touch, and the live tile follows it.
        page.tap("a.lang[lang=en]")
        page.wait_for_function(
            "() => document.querySelector('.dock .state-text')?.textContent === 'Safe to undock'")
        assert page.inner_text("h1") == "Camera dock"
        page.screenshot(path=str(artifacts / "kiosk-safe-en-1024x600.png"))
        assert len(streams) == 2, streams  # one stream per page load, no polling

    with browser_page(width=1920, height=1080) as big:
        big.goto(base)
        big.wait_for_selector(".dock[data-safe=true]")
        big.screenshot(path=str(artifacts / "kiosk-safe-1920x1080.png"))
        assert _small_targets(big) == []

    # The camera is taken away: its tile goes.
    cam = next(_sim_root(station).iterdir())
    import shutil

    shutil.rmtree(cam)
    _wait(lambda: station.progress.snapshot() == [], what="the undock")


def test_a_camera_that_cannot_be_read_shows_its_problem(
        make_station: Callable[..., Station], axe: str, artifacts: Path) -> None:
    station = make_station()
    base = url_of(station)
    make_camera(_sim_root(station), serial="ZFY0007", officer_id="020304", officer_name="王芳",
                clips=1, seconds=0.5, width=160, height=120)
    broken = _sim_root(station).parent / "staging-broken"
    broken.mkdir()
    (broken / "BWC_DEVICE.json").write_text(json.dumps({"serial": "ZFY0099"}), encoding="utf-8")
    os.rename(broken, _sim_root(station) / "ZFY0099")
    with browser_page(width=1024, height=600) as page:
        page.goto(base)
        page.wait_for_selector(".dock[data-state=attention]")
        page.wait_for_selector(".dock[data-safe=true]")
        bad = page.locator(".dock[data-state=attention]")
        assert bad.locator(".state-text").inner_text() == "需要处理"
        assert bad.locator(".advice").inner_text().startswith("无法读取该记录仪。请取下后重新插入")
        assert bad.locator(".port").inner_text() == "接口 ZFY0099"
        page.screenshot(path=str(artifacts / "kiosk-attention-1024x600.png"))
        bad.locator(".tile").tap()
        page.wait_for_selector("#detail[open]")
        errors = page.inner_text("#detail-errors")
        assert "identify failed" in errors and "field 'vendor' is missing" in errors
        assert axe_violations(page, axe) == []
    alerts = custody(station, "alert")
    assert any(a["code"] == "device.unidentified" for a in alerts)


def test_twenty_five_cameras_fit_both_screens(make_station: Callable[..., Station],
                                              axe: str, artifacts: Path) -> None:
    station = make_station()
    base = url_of(station)
    for i, name in enumerate(OFFICERS):
        make_camera(_sim_root(station), serial=f"ZFY{i + 1:04d}", officer_id=f"{10200 + i:06d}",
                    officer_name=name, clips=1, seconds=0.3, width=96, height=64)
    for width, height in ((1024, 600), (1920, 1080)):
        with browser_page(width=width, height=height) as page:
            page.goto(base)
            page.wait_for_function(
                "() => document.querySelectorAll('.dock[data-safe=true]').length === 25",
                timeout=90_000)
            boxes = page.eval_on_selector_all(".dock .tile", """tiles => tiles.map(t => {
                const r = t.getBoundingClientRect();
                const name = t.querySelector('.name').getBoundingClientRect();
                return [r.left, r.top, r.right, r.bottom, name.height > 0]; })""")
            assert len(boxes) == 25
            for left, top, right, bottom, name_shown in boxes:
                assert left >= 0 and top >= 0 and right <= width and bottom <= height
                assert bottom - top >= 48 and right - left >= 48 and name_shown
            page.screenshot(path=str(artifacts / f"kiosk-25-{width}x{height}.png"))
            assert _small_targets(page) == []
            assert axe_violations(page, axe) == []


def _quarantine_after_upload(station: Station) -> str:
    """A sealed clip whose upload the platform refused (what the uploader records)."""
    assert station.store is not None
    row = _wait(lambda: next(iter(station.store.clips("sealed")), None), what="a sealed clip")
    with station.store.transaction() as tx:
        tx.transition(row["clip_id"], ClipState.UPLOADING)
        tx.transition(row["clip_id"], ClipState.QUARANTINED,
                      reason="upload refused by the platform: 413 Request Entity Too Large",
                      log_body={"reason": "upload refused"})
    return str(row["clip_id"])


def _sign_in(page: Any, base: str, name: str = "alice", password: str = PASSWORD) -> None:
    page.goto(base + "it")
    page.wait_for_url("**/it/signin?lang=zh_Hans_CN")
    page.fill("#name", name)
    page.fill("#password", password)
    page.tap("button[type=submit]")


def test_it_staff_sign_in_and_requeue_a_quarantined_clip(
        make_station: Callable[..., Station], axe: str, artifacts: Path) -> None:
    station = make_station(users={"alice": PASSWORD})
    base = url_of(station)
    make_camera(_sim_root(station), serial="ZFY0042", officer_id="010203", officer_name="李明",
                clips=2, seconds=0.5, width=160, height=120)
    clip_id = _quarantine_after_upload(station)
    with browser_page(width=1920, height=1080) as page:
        page.goto(base + "it/signin")
        assert axe_violations(page, axe) == []
        page.screenshot(path=str(artifacts / "it-signin-1920x1080.png"))
        _sign_in(page, base)
        page.wait_for_url("**/it?lang=zh_Hans_CN")
        row = page.locator(f"#quarantined tr[data-clip='{clip_id}']")
        row.wait_for()
        assert "413" in row.inner_text()
        page.wait_for_selector("#docks tr")
        assert "可以取下" in page.inner_text("#docks")
        assert "已登录：alice" in page.inner_text("header")
        page.screenshot(path=str(artifacts / "it-1920x1080.png"), full_page=True)
        assert axe_violations(page, axe) == []
        assert _small_targets(page) == []
        page.set_viewport_size({"width": 1024, "height": 600})
        page.screenshot(path=str(artifacts / "it-1024x600.png"))

        row.locator("button").tap()
        page.wait_for_url("**/it?lang=zh_Hans_CN&done=requeued")
        assert page.inner_text(".notice") == "该录像已重新加入上传队列。"
        page.wait_for_selector("#quarantined-empty:not([hidden])")
    assert station.store is not None
    assert station.store.clip(clip_id)["state"] == "sealed"
    (signed_in,) = custody(station, "web.signed_in")
    assert (signed_in["user"], signed_in["role"]) == ("alice", "it")
    requeued = [e for e in custody(station, "clip.sealed")
                if e["clip_id"] == clip_id and "requeued_by" in e]
    assert len(requeued) == 1 and requeued[0]["requeued_by"] == "it:alice"
    assert requeued[0]["previous_reason"].startswith("upload refused by the platform")
    assert signed_in["seq"] < requeued[0]["seq"]


def test_an_idle_it_session_is_signed_out_by_itself(make_station: Callable[..., Station]
                                                    ) -> None:
    station = make_station("session_timeout_s = 2\n", users={"alice": PASSWORD})
    base = url_of(station)
    with browser_page(width=1024, height=600) as page:
        _sign_in(page, base)
        page.wait_for_url("**/it?lang=zh_Hans_CN")
        page.wait_for_selector("#health dt")
        # Nobody touches the page: it goes back to the sign-in form on its own.
        page.wait_for_url("**/it/signin?lang=zh_Hans_CN", timeout=15_000)
        page.goto(base + "it")
        page.wait_for_url("**/it/signin?lang=zh_Hans_CN")
    (ended,) = custody(station, "web.signed_out")
    assert (ended["user"], ended["reason"]) == ("alice", "timeout")


def test_forged_actions_are_refused_and_log_nothing(make_station: Callable[..., Station]
                                                    ) -> None:
    station = make_station(users={"alice": PASSWORD})
    base = url_of(station)
    make_camera(_sim_root(station), serial="ZFY0042", clips=1, seconds=0.5, width=160,
                height=120)
    clip_id = _quarantine_after_upload(station)
    with browser_page(width=1024, height=600) as page:
        _sign_in(page, base)
        page.wait_for_url("**/it?lang=zh_Hans_CN")
        before = log_size(station)
        # From the signed-in page itself, but without the form's token, or with a wrong one.
        statuses = page.evaluate("""async (clip) => {
            const post = (body) => fetch('/it/requeue', {method: 'POST', body: body,
                headers: {'Content-Type': 'application/x-www-form-urlencoded'}});
            const a = await post('clip_id=' + clip);
            const b = await post('clip_id=' + clip + '&csrf_token=' + 'A'.repeat(43));
            return [a.status, b.status];
        }""", clip_id)
        assert statuses == [403, 403]
        # From another site: a page that is not the station's submits the form.
        page.goto("about:blank")
        page.set_content(f"""<form method="post" action="{base}it/requeue">
            <input name="clip_id" value="{clip_id}"><input name="csrf_token" value="guess">
            <button id="go">go</button></form>""")
        with page.expect_navigation():
            page.click("#go")
        assert "该表单已过期或并非来自本工作站" in page.content()
        assert log_size(station) == before
    assert station.store is not None
    assert station.store.clip(clip_id)["state"] == "quarantined"


def test_a_vertical_script_catalog_turns_the_page_vertical(
        make_station: Callable[..., Station], artifacts: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "locale"
    station = make_station(f"""
        languages = ["zh_Hans_CN", "en", "mn_Mong"]
        locale_dir = "{fixtures}"
        """)
    base = url_of(station)
    with browser_page(width=1024, height=600) as page:
        page.goto(base)
        assert page.evaluate("getComputedStyle(document.body).writingMode") == "horizontal-tb"
        page.tap("a.lang[lang=mn-Mong]")
        page.wait_for_url("**/?lang=mn_Mong")
        assert page.evaluate("document.documentElement.lang") == "mn-Mong"
        assert page.evaluate("getComputedStyle(document.body).writingMode") == "vertical-lr"
        assert page.inner_text("h1") == "ᠬᠠᠷᠠᠭᠤᠯ ᠤᠨ ᠪᠠᠭᠠᠵᠢ"
        family = page.evaluate("getComputedStyle(document.querySelector('h1')).fontFamily")
        assert "Mongolian" in family
        page.screenshot(path=str(artifacts / "kiosk-mn-Mong-1024x600.png"))
