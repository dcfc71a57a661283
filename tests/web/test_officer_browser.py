"""Officers at the station screen, in a real browser (Debian's chromium): sign in with the police
ID card as a USB reader types it, tag recordings with a Chinese case number, mark them
important, and what is refused.  Every action is checked afterwards in the custody log (naming
the credential) and in the events queued for the platform.  Screenshots land in
test-artifacts/; axe-core checks every signed-in view.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.station import Station
from tests.support.browser import axe_violations
from tests.web.conftest import browser_page, custody, log_size
from tests.web.officer_station import (
    CHINESE,
    EXPIRED,
    REVOKED,
    UNKNOWN,
    WINDOW_CASE,
    events,
    officer_station,
)

pytestmark = pytest.mark.browser


def _swipe(page: Any, card: str) -> None:
    """What a USB card reader does: the card number and Enter, typed at reader speed."""
    page.keyboard.type(card + "\n")


def _signed_in(page: Any, name: str) -> None:
    page.wait_for_function(
        "name => document.getElementById('officer-name').textContent === name "
        "&& !document.getElementById('officer-on').hidden", arg=name)


def _small_targets(page: Any, root: str = "body") -> list[str]:
    """Controls smaller than 48 x 48 CSS pixels (touch targets) in ``root``."""
    return page.evaluate("""root => [...document.querySelector(root)
            .querySelectorAll('button, a, input, [role=button]')]
        .filter(e => e.offsetParent !== null || e.closest('dialog[open]'))
        .filter(e => { const r = e.getBoundingClientRect();
                       return r.width > 0 && (r.width < 48 || r.height < 48); })
        .map(e => e.outerHTML.slice(0, 80))""", root)


def _row(page: Any, clip_id: str) -> Any:
    return page.locator(f"#mine-clips li[data-clip='{clip_id}']")


def test_an_officer_signs_in_with_the_card_tags_with_a_chinese_case_and_marks_important(
        make_station: Callable[..., Station], tmp_path: Path, axe: str, artifacts: Path) -> None:
    setup = officer_station(make_station, tmp_path)
    station = setup.station
    first, second = (r["clip_id"] for r in setup.clips("000001"))
    (theirs,) = (r["clip_id"] for r in setup.clips("000002"))
    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.wait_for_selector(".dock[data-safe=true]")
        # The card field has the focus, as the reader needs; the number never shows.
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        page.screenshot(path=str(artifacts / "officer-signed-out-1024x600.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#officer-slot") == []
        _swipe(page, "8800000001")
        _signed_in(page, "张三")
        assert page.inner_text("#officer-number") == "警号 000001"
        # The officer's recordings open by themselves; another officer's are not there.
        page.wait_for_selector("#mine[open] #mine-clips li")
        listed = page.eval_on_selector_all("#mine-clips li", "rows => rows.map(r => r.dataset.clip)")
        assert sorted(listed) == sorted([first, second]) and theirs not in listed
        assert page.inner_text("#mine-title") == "我的录像"
        page.screenshot(path=str(artifacts / "officer-recordings-1024x600.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#mine") == []

        # A case number typed or pasted (what an input method gives the field).
        _row(page, first).locator(".add-case").tap()
        page.wait_for_selector("#case-editor[open]")
        assert page.inner_text("#case-choices") == WINDOW_CASE  # the officer's case window
        page.fill("#case-input", CHINESE)
        page.screenshot(path=str(artifacts / "officer-case-editor-1024x600.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#case-editor") == []
        page.tap("#case-save")
        page.wait_for_selector("#case-editor:not([open])", state="attached")
        done = f"已将 {first_name(setup, first)} 加入案件 {CHINESE}。"
        page.wait_for_function(
            "text => document.getElementById('mine-status').textContent === text", arg=done)
        assert _row(page, first).locator(".case-text").all_inner_texts() == [CHINESE]

        # Marked important: the button goes, the badge shows.
        _row(page, first).locator(".mark").tap()
        page.wait_for_selector(f"#mine-clips li[data-clip='{first}'][data-important=true]")
        assert _row(page, first).locator(".badge.important").is_visible()
        assert _row(page, first).locator(".mark").count() == 0

        # A case number picked from the officer's case windows, and one built on the keys.
        _row(page, second).locator(".add-case").tap()
        page.locator("#case-choices button", has_text=WINDOW_CASE).tap()
        page.tap("#case-save")
        page.wait_for_function(
            "([id, text]) => [...document.querySelectorAll("
            "`#mine-clips li[data-clip='${id}'] .case-text`)].some(e => e.textContent === text)",
            arg=[second, WINDOW_CASE])
        _row(page, second).locator(".add-case").tap()
        page.locator("#case-prefixes button", has_text="内公(治)行罚决字").tap()
        for key in "〔2026〕12号":
            page.locator(f"#case-editor .key[data-key='{key}']").tap()
        assert page.input_value("#case-input") == "内公(治)行罚决字〔2026〕12号"
        page.tap("#case-save")
        page.wait_for_selector("#case-editor:not([open])", state="attached")

        # A case number the station's pattern refuses: a plain message, nothing recorded.
        before = log_size(station)
        _row(page, second).locator(".add-case").tap()
        page.fill("#case-input", "案件 12?")
        page.tap("#case-save")
        error = page.locator("#case-error")
        error.wait_for()
        assert error.inner_text().startswith("“案件 12?”不是本工作站接受的案件编号")
        assert log_size(station) == before
        page.tap("#case-cancel")

        # Removing a case the officer added takes two taps.
        chip = _row(page, second).locator(".case-chip", has_text="〔2026〕12号")
        chip.locator(".remove").tap()
        assert chip.locator(".remove").inner_text() == "再点一次确认移除"
        chip.locator(".remove").tap()
        page.wait_for_function(
            "id => ![...document.querySelectorAll(`#mine-clips li[data-clip='${id}'] .case-text`)]"
            ".some(e => e.textContent.includes('〔2026〕'))", arg=second)
        page.screenshot(path=str(artifacts / "officer-tagged-1024x600.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#mine") == []
        page.tap("#mine-close")
        page.tap("#signout")
        page.wait_for_selector("#card-form:not([hidden])")
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")

    # Each action is one custody log entry naming the credential, and one event.
    (signed_in,) = custody(station, "web.signed_in")
    assert {k: signed_in[k] for k in ("user", "role", "credential_id", "method")} == {
        "user": "000001", "role": "officer", "credential_id": "C-1", "method": "card"}
    tags = [(t["clip_id"], t["action"], t["case_id"], t["source"], t["by"], t["credential_id"])
            for t in custody(station, "clip.tagged")]
    assert tags == [
        (first, "add", CHINESE, "station-officer", "000001", "C-1"),
        (second, "add", WINDOW_CASE, "station-officer", "000001", "C-1"),
        (second, "add", "内公(治)行罚决字〔2026〕12号", "station-officer", "000001", "C-1"),
        (second, "remove", "内公(治)行罚决字〔2026〕12号", "station-officer", "000001", "C-1"),
    ]
    (important,) = custody(station, "clip.important")
    assert (important["clip_id"], important["important"], important["credential_id"],
            important["by"]) == (first, True, "C-1", "000001")
    (signed_out,) = custody(station, "web.signed_out")
    assert (signed_out["credential_id"], signed_out["reason"]) == ("C-1", "signed_out")
    assert signed_in["seq"] < min(t["seq"] for t in custody(station, "clip.tagged"))
    assert signed_out["seq"] > important["seq"]
    sent = [(e["clip_id"], e["action"], e["case_id"], e["credential_id"])
            for e in events(station, "clip.tagged")]
    assert sent == [(t[0], t[1], t[2], t[5]) for t in tags]
    (marked,) = events(station, "clip.important")
    assert (marked["clip_id"], marked["credential_id"], marked["important"]) == (first, "C-1",
                                                                                  True)
    assert station.store is not None
    assert station.store.clip(first)["important"] == 1


def first_name(setup: Any, clip_id: str) -> str:
    assert setup.station.store is not None
    return str(setup.station.store.clip(clip_id)["name"])


def test_the_signed_in_views_at_1920x1080(make_station: Callable[..., Station], tmp_path: Path,
                                         axe: str, artifacts: Path) -> None:
    setup = officer_station(make_station, tmp_path)
    with browser_page(width=1920, height=1080) as page:
        page.goto(setup.base)
        page.wait_for_selector(".dock[data-safe=true]")
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        page.screenshot(path=str(artifacts / "officer-signed-out-1920x1080.png"))
        _swipe(page, "8800000001")
        _signed_in(page, "张三")
        page.wait_for_selector("#mine[open] #mine-clips li")
        page.screenshot(path=str(artifacts / "officer-recordings-1920x1080.png"))
        assert axe_violations(page, axe) == []
        page.locator("#mine-clips li .add-case").first.tap()
        page.wait_for_selector("#case-editor[open]")
        # Focus order with a keyboard: the field, the recent cases, the keys, then the buttons.
        order = []
        for _ in range(3):
            page.keyboard.press("Tab")
            order.append(page.evaluate("() => document.activeElement.textContent"))
        assert order == [WINDOW_CASE, "内公(治)行罚决字", "1"]
        page.focus("#case-input")
        page.screenshot(path=str(artifacts / "officer-case-editor-1920x1080.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#case-editor") == []
        page.tap("#case-cancel")
        page.tap("#mine-close")
        page.screenshot(path=str(artifacts / "officer-signed-in-1920x1080.png"))
        assert axe_violations(page, axe) == []
        # In English too.
        page.tap("a.lang[lang=en]")
        page.wait_for_url("**/?lang=en")
        _signed_in(page, "张三")
        assert page.inner_text("#mine-open") == "My recordings"
        page.tap("#mine-open")
        page.wait_for_selector("#mine[open] #mine-clips li")
        assert page.inner_text("#mine-title") == "My recordings"
        page.screenshot(path=str(artifacts / "officer-recordings-en-1920x1080.png"))
        assert axe_violations(page, axe) == []


def test_revoked_expired_and_unknown_cards_are_refused_with_a_plain_message(
        make_station: Callable[..., Station], tmp_path: Path, axe: str, artifacts: Path) -> None:
    setup = officer_station(make_station, tmp_path, cameras=False)
    station = setup.station
    before = log_size(station)
    expected = {
        REVOKED: "此卡已被注销，不能使用。请联系本单位管理员。",
        EXPIRED: "此卡的凭证已于",
        UNKNOWN: "本工作站不认识此卡。如果这是您的警官证，请让运维人员检查本工作站的民警名单。",
    }
    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        for card, text in expected.items():
            _swipe(page, card)
            page.wait_for_function(
                "text => document.getElementById('officer-notice').textContent.startsWith(text)",
                arg=text)
            assert page.is_hidden("#officer-on")
            if card == EXPIRED:
                assert re.fullmatch(r"此卡的凭证已于 \d{4}-\d\d-\d\d \d\d:\d\d 过期。"
                                    r"请向本单位管理员申请新的凭证。",
                                    page.inner_text("#officer-notice"))
            if card == REVOKED:
                page.screenshot(path=str(artifacts / "officer-refused-1024x600.png"))
                assert axe_violations(page, axe) == []
    assert log_size(station) == before  # refused attempts never reach the custody log
    assert station.web is not None
    assert station.web.ctx.officer_refusals.snapshot() == {"revoked": 1, "expired": 1,
                                                           "unknown": 1}


def test_an_idle_officer_is_signed_out_by_the_station(make_station: Callable[..., Station],
                                                      tmp_path: Path) -> None:
    setup = officer_station(make_station, tmp_path, "officer_timeout_s = 3\n", cameras=False)
    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        _swipe(page, "8800000001")
        _signed_in(page, "张三")
        # While the officer uses the screen, they stay signed in.
        for _ in range(6):
            page.tap("#mine-title")
            time.sleep(1.0)
        assert page.is_visible("#officer-on") and page.is_hidden("#card-form")
        assert custody(setup.station, "web.signed_out") == []
        # Then nobody touches it: the page counts down and the station signs the officer out.
        page.wait_for_function(
            "() => document.getElementById('mine-countdown').textContent.includes('秒内无操作')")
        started = time.monotonic()
        page.wait_for_selector("#card-form:not([hidden])", timeout=15_000)
        assert time.monotonic() - started < 5
        assert page.inner_text("#officer-notice") == "由于长时间未操作，您已自动退出登录。"
    (ended,) = custody(setup.station, "web.signed_out")
    assert (ended["user"], ended["credential_id"], ended["reason"]) == ("000001", "C-1",
                                                                        "timeout")


def test_another_card_signs_the_officer_out(make_station: Callable[..., Station],
                                            tmp_path: Path) -> None:
    setup = officer_station(make_station, tmp_path)
    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        _swipe(page, "8800000001")
        _signed_in(page, "张三")
        page.wait_for_selector("#mine[open] #mine-clips li")
        # The officer opened a case number field; the next officer swipes: the reader's digits
        # do not end up in the field, and the first officer is signed out.
        page.locator("#mine-clips li .add-case").first.tap()
        page.wait_for_selector("#case-editor[open]")
        page.fill("#case-input", "内公")
        page.focus("#case-input")
        _swipe(page, "8800000009")
        _signed_in(page, "刘队")
        assert page.inner_text("#officer-role") == "督察"
        assert page.is_hidden("#case-editor")  # nothing of the officer before stays
        assert page.input_value("#case-input") == "内公"  # the reader's digits went elsewhere
        page.wait_for_selector("#mine[open] #mine-clips li")
        assert page.inner_text("#mine-title") == "近几天的录像"  # a supervisor sees all
    ends = custody(setup.station, "web.signed_out")
    assert [(e["credential_id"], e["reason"]) for e in ends] == [("C-1", "another_card")]
    assert [e["credential_id"] for e in custody(setup.station, "web.signed_in")] == ["C-1", "C-9"]
    assert custody(setup.station, "clip.tagged") == []


def test_an_officer_cannot_tag_another_officers_clip_a_supervisor_can(
        make_station: Callable[..., Station], tmp_path: Path, axe: str, artifacts: Path) -> None:
    setup = officer_station(make_station, tmp_path)
    station = setup.station
    (theirs,) = (r["clip_id"] for r in setup.clips("000002"))
    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.wait_for_function("() => document.activeElement?.id === 'card-input'")
        _swipe(page, "8800000001")
        _signed_in(page, "张三")
        before = log_size(station)
        # A forged request from the signed-in page: the session's own token, another's clip.
        answers = page.evaluate("""async (clip) => {
            const session = await (await fetch('/officer/session')).json();
            const post = async (path, fields) => {
                const r = await fetch(path, {method: 'POST', body: new URLSearchParams(
                    Object.assign({csrf_token: session.csrf, clip_id: clip}, fields))});
                return [r.status, (await r.json()).error];
            };
            return [await post('/officer/tag', {case_id: 'CASE-1'}),
                    await post('/officer/important', {})];
        }""", theirs)
        refusal = "这条录像不属于您：只有录制它的民警或督察可以修改。"
        assert answers == [[403, refusal], [403, refusal]]
        # The officer's own clip, but without the session's token, or with a wrong one.
        (mine, _) = (r["clip_id"] for r in setup.clips("000001"))
        statuses = page.evaluate("""async (clip) => {
            const post = async (fields) => (await fetch('/officer/important', {method: 'POST',
                body: new URLSearchParams(Object.assign({clip_id: clip}, fields))})).status;
            return [await post({}), await post({csrf_token: 'A'.repeat(43)})];
        }""", mine)
        assert statuses == [403, 403]
        assert log_size(station) == before
        # The tile of the other officer's camera offers nothing to this officer.
        page.tap("#mine-close")
        page.locator(".dock", has_text="李四").locator(".tile").tap()
        page.wait_for_selector("#detail[open]")
        assert page.is_hidden("#detail-mine")
        page.tap("#detail-close")

        # A supervisor may: from that camera's tile.
        _swipe(page, "8800000009")
        _signed_in(page, "刘队")
        page.tap("#mine-close")
        page.locator(".dock", has_text="李四").locator(".tile").tap()
        page.wait_for_selector("#detail[open] #detail-mine:not([hidden])")
        page.tap("#detail-mine")
        page.wait_for_selector("#mine[open] #mine-clips li")
        assert page.eval_on_selector_all("#mine-clips li", "r => r.map(x => x.dataset.clip)") \
            == [theirs]
        assert page.inner_text("#mine-title") == "记录仪 ZFY0002 的录像"
        assert page.inner_text("#mine-clips .mine-officer") == "李四，警号 000002"
        page.screenshot(path=str(artifacts / "officer-supervisor-1024x600.png"))
        assert axe_violations(page, axe) == []
        page.locator("#mine-clips li .add-case").tap()
        page.fill("#case-input", CHINESE)
        page.tap("#case-save")
        page.wait_for_selector("#mine-clips .case-text")
        # Another site's page posts to the station while the supervisor is signed in.
        size = log_size(station)
        page.goto("about:blank")
        page.set_content(f"""<form method="post" action="{setup.base}officer/important">
            <input name="clip_id" value="{mine}"><input name="csrf_token" value="guess">
            <button id="go">go</button></form>""")
        with page.expect_navigation():
            page.click("#go")
        assert "您已退出登录" in page.content() or "过期" in page.content()
        assert log_size(station) == size
    assert station.store is not None and station.store.clip(mine)["important"] == 0
    (tagged,) = custody(station, "clip.tagged")
    assert (tagged["clip_id"], tagged["by"], tagged["credential_id"]) == (theirs, "000009", "C-9")


def test_an_officer_signs_in_on_the_keypad(make_station: Callable[..., Station], tmp_path: Path,
                                           axe: str, artifacts: Path) -> None:
    setup = officer_station(make_station, tmp_path, cameras=False)

    def tap_digits(digits: str) -> None:
        for digit in digits:
            page.locator(f"#keypad .key[data-key='{digit}']").tap()

    with browser_page(width=1024, height=600) as page:
        page.goto(setup.base)
        page.tap("#keypad-open")
        page.wait_for_selector("#keypad[open]")
        tap_digits("000002")
        page.tap("#kp-card")
        tap_digits("8800000001")  # another officer's card
        page.screenshot(path=str(artifacts / "officer-keypad-1024x600.png"))
        assert axe_violations(page, axe) == []
        assert _small_targets(page, "#keypad") == []
        page.tap("#keypad button[type=submit]")
        error = page.locator("#keypad-error")
        error.wait_for()
        assert error.inner_text() == "警号与卡号不属于本工作站的同一名民警。请检查后重试。"
        page.locator("#keypad .key[data-key='clear']").tap()
        tap_digits("8800000002")
        page.tap("#keypad button[type=submit]")
        _signed_in(page, "李四")
    (entry,) = custody(setup.station, "web.signed_in")
    assert (entry["credential_id"], entry["method"]) == ("C-2", "officer-number+card")
