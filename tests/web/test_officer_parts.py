"""Parts of officer sign-in at the screen: officer sessions, the refusal count, the words."""

from __future__ import annotations

from agent.web.i18n import Catalogs
from agent.web.officers import Refusals
from agent.web.officerview import prefixes, refusal
from agent.web.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_officer_session_has_its_own_short_timeout_and_one_officer_is_signed_in() -> None:
    clock = Clock()
    sessions = Sessions(600, clock=clock)
    it = sessions.create("it", "alice", "127.0.0.1")
    first = sessions.create("officer", "000001", "127.0.0.1", timeout_s=90, credential_id="C-1")
    assert sessions.remaining(first) == 90
    clock.now += 60
    assert sessions.get(first.id, touch=True) is first
    clock.now += 89
    assert sessions.get(first.id) is first and sessions.remaining(first) == 1
    second = sessions.create("officer", "000009", "127.0.0.1", timeout_s=90, credential_id="C-9")
    ended = sessions.end_kind("officer", "another_card")
    assert [(s.user, s.ended_reason) for s in ended] == [("000001", "another_card"),
                                                         ("000009", "another_card")]
    assert sessions.get(second.id) is None and sessions.get(it.id) is it
    # An officer session that had timed out already is ended as a timeout, logged once.
    third = sessions.create("officer", "000002", "127.0.0.1", timeout_s=90, credential_id="C-2")
    clock.now += 91
    assert sessions.end_kind("officer", "another_card") == []
    assert [(s.user, s.ended_reason, s.credential_id) for s in sessions.expire()] == [
        ("000002", "timeout", "C-2")]
    assert sessions.expire() == []
    assert third.ended_reason == "timeout"
    assert sessions.get(it.id) is it  # IT staff keep their own, longer timeout


def test_refusals_are_counted_by_known_reasons_only() -> None:
    refusals = Refusals()
    for reason in ("unknown", "revoked", "revoked", "limited", "anything\nelse"):
        refusals.count(reason)
    assert refusals.snapshot() == {"unknown": 2, "revoked": 2, "limited": 1}


def test_the_fixed_part_of_case_numbers_is_offered_as_a_key() -> None:
    assert prefixes(["内公(治)行罚决字〔2019〕123号", "内公(治)行罚决字〔2020〕5号",
                     "CASE-2026-0042", "京公（刑）立字[2021]77号", "7"]) == [
        "内公(治)行罚决字", "CASE-", "京公（刑）立字"]


def test_refusals_say_what_to_do_in_both_languages() -> None:
    catalogs = Catalogs(["zh_Hans_CN", "en"])
    zh, en = catalogs.default, catalogs.pick("en")
    assert refusal(en, "revoked", None, with_number=False) == (
        "This card has been withdrawn and cannot be used. Contact your unit's administrator.")
    assert refusal(en, "unknown", None, with_number=True).startswith(
        "This officer number and card number do not belong")
    assert refusal(zh, "bad-signature", None, with_number=False) == "无法核验此卡的凭证，请联系运维。"
    assert refusal(zh, "not-checked", None, with_number=False) == \
        "本工作站尚未设置民警登录，请联系运维。"
