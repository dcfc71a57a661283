"""The verification report as the auditor reads it: its text lines, escapes and times.

Each test builds the report a verification would fill and checks the exact text
``bwc-agent verify`` prints for it: one verdict line per clip, the officer line,
general findings and warnings, then the verdict.
"""

from __future__ import annotations

import datetime as dt

from agent.verify.checks import signed_time
from agent.verify.report import Report, escape


def test_an_invisible_character_beyond_the_basic_plane_is_escaped_in_full() -> None:
    """Rule: an invisible character above U+FFFF (a language tag) is printed as its
    eight-digit escape, one below as four digits, a control character as two."""
    assert escape("a\U000e0001b\u202ec\x1b") == "a\\U000e0001b\\u202ec\\x1b"


def test_the_text_report_has_one_exact_line_per_clip_then_findings_then_the_verdict(
) -> None:
    """Rule: each clip gets the line '  <id>  <name or ?>[ [state]]: <verdict>' (OK, OK not
    anchored, or FAILED with every problem joined by '; '), followed by an officer line
    only when an officer or a case is known; then general problems, warnings and the
    verdict, one per line."""
    report = Report()
    report.targets.append({"path": "bundle", "kind": "bundle"})
    anchored = report.clip("C-1", "bundle", "A.MP4")
    anchored.state, anchored.trust = "sealed", "anchored"
    unanchored = report.clip("C-2", "bundle", "")
    unanchored.trust = "unanchored"
    unanchored.officer = {"id": "000001", "name": "张三", "credential_id": "C-9",
                          "status": "valid"}
    failed = report.clip("C-3", "bundle", "B.MP4")
    failed.trust = "anchored"
    failed.cases = ["CASE-7"]
    failed.add("file-digest: one")
    failed.add("file-size: two")
    report.problem("log-order: general")
    report.warning("a warning")
    assert report.render() == "\n".join([
        "bundle bundle",
        "  C-1  A.MP4 [sealed]: OK",
        "  C-2  ?: OK (certificate not anchored: no --trust)",
        "      officer 000001 张三, credential C-9: valid; cases: none",
        "  C-3  B.MP4: FAILED: file-digest: one; file-size: two",
        "      officer -; cases: CASE-7",
        "problem: log-order: general",
        "warning: a warning",
        "NOT VERIFIED: 1 of 3 clip(s) failed, 1 general problem(s)"])


def test_a_failed_clip_that_is_unanchored_still_says_failed() -> None:
    """Rule: 'OK (certificate not anchored ...)' is only for a clip without problems; a
    clip whose trust is not assessed and has none is plain OK."""
    report = Report()
    report.targets.append({"path": "p", "kind": "clip"})
    bad = report.clip("C-1", "p", "A.MP4")
    bad.trust = "unanchored"
    bad.add("file-digest: x")
    report.clip("C-2", "p", "B.MP4")
    assert report.render().splitlines()[1:3] == [
        "  C-1  A.MP4: FAILED: file-digest: x", "  C-2  B.MP4: OK"]


def test_a_checkpoint_s_signing_time_is_its_at_field() -> None:
    """Rule: the certificate is checked at the time the newest checkpoint says it was
    signed; a checkpoint without a readable 'at' gives no time (then: now)."""
    assert signed_time({"at": "2026-01-02T03:04:05.000Z"}) == dt.datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert signed_time({"at": 5}) is None
    assert signed_time({"at": "yesterday"}) is None
    assert signed_time(None) is None


def test_a_clip_keeps_the_first_name_it_is_given() -> None:
    """Rule: a clip first reported without a name takes the first name given later for the
    same clip of the same target, and keeps it: a later finding neither blanks nor renames
    it."""
    report = Report()
    first = report.clip("C-1", "bundle")
    assert report.clip("C-1", "bundle", "A.MP4") is first and first.name == "A.MP4"
    assert report.clip("C-1", "bundle", "B.MP4") is first and first.name == "A.MP4"
    assert report.clip("C-1", "bundle").name == "A.MP4"
    assert report.clip("C-1", "other", "B.MP4") is not first
    assert [(c.clip_id, c.source, c.name) for c in report.clips] == [
        ("C-1", "bundle", "A.MP4"), ("C-1", "other", "B.MP4")]


def test_the_figures_add_up_from_zero() -> None:
    """Rule: each figure printed after the verdict (bytes hashed, seconds) is the sum of
    every target's count, starting from nothing."""
    report = Report()
    report.count("bytes_hashed", 100)
    report.count("hash_seconds", 0.25)
    report.count("bytes_hashed", 23)
    assert report.stats == {"bytes_hashed": 123, "hash_seconds": 0.25}
