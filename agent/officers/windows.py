"""Case windows: the platform says "officer X, from T1 to T2, worked case C" (dispatch).

A case window is a DSSE envelope of type ``application/vnd.bwc.case-window.v1+json``
signed by the platform key (docs/FORMATS.md section 14), published on the
station's ``case-window`` topic.  The station tags every clip of that officer
whose corrected recording time overlaps the window: those it holds when the
window arrives, and those docked later (at their seal).  A newer revision of a
window moves its tags: clips no longer in it get a removal, a changed case
number a correction, new clips an addition; ``withdrawn`` removes them all.

Invariants: each accepted window revision is kept (the envelope, for export)
and is one transaction with its ``case_window.accepted`` log entry, its
events and every tag it makes; a revision at or below one held changes
nothing; a window whose case ID the station's pattern refuses is refused as
a whole, logged and alerted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent import boundedjson
from agent.custody import dsse
from agent.errors import AgentError, IntegrityError
from agent.officers.credentials import (
    MAX_DEPTH,
    CredentialError,
    check_text,
    check_time,
    payload_of,
)
from agent.officers.registry import Keys, Refuse
from agent.officers.times import overlaps
from agent.store import Store, Tx
from agent.tagging import add_case, cases_of, check_case_id, correct_case, remove_case
from agent.timeutil import now, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

MAX_WINDOW_BYTES = 64 * 1024
MAX_WINDOW_SPAN = timedelta(days=31)
SOURCE = "case-window"


@dataclass(frozen=True)
class CaseWindow:
    window_id: str
    revision: int
    officer_id: str
    start: datetime
    end: datetime
    case_id: str
    reference: str
    withdrawn: bool
    payload_sha256: str
    envelope: Mapping[str, Any]

    def details(self) -> dict[str, Any]:
        """What each tag this window makes records about it."""
        return {"window_id": self.window_id, "window_revision": self.revision,
                "reference": self.reference}


def parse_window(envelope: Any, keys: Keys, pattern: str | None) -> CaseWindow:
    """A verified, checked case window; IntegrityError / TagError saying what is wrong."""
    if not keys:
        raise IntegrityError("no platform key to check case windows with")
    dsse.verify_envelope(envelope, keys, dsse.CASE_WINDOW)
    raw, doc = payload_of(envelope, dsse.CASE_WINDOW, "case window")
    window_id = check_text(doc.get("window_id"), "window_id")
    revision = doc.get("revision", 1)
    if not isinstance(revision, int) or isinstance(revision, bool) or not 1 <= revision < 2**53:
        raise CredentialError(f"case window {window_id}: revision {revision!r} is not a "
                              "positive integer")
    start = check_time(doc.get("start"), f"case window {window_id}: start")
    end = check_time(doc.get("end"), f"case window {window_id}: end")
    if end < start or end - start > MAX_WINDOW_SPAN:
        raise CredentialError(f"case window {window_id}: {rfc3339(start)} to {rfc3339(end)} "
                              f"is not a window of at most {MAX_WINDOW_SPAN.days} days")
    case_id = check_text(doc.get("case_id"), f"case window {window_id}: case_id", limit=256)
    if pattern is not None:
        check_case_id(case_id, pattern)
    withdrawn = doc.get("withdrawn", False)
    if not isinstance(withdrawn, bool):
        raise CredentialError(f"case window {window_id}: withdrawn is not true or false")
    return CaseWindow(
        window_id=window_id, revision=revision,
        officer_id=check_text(doc.get("officer_id"), f"case window {window_id}: officer_id"),
        start=start, end=end, case_id=case_id,
        reference=check_text(doc.get("reference", ""), f"case window {window_id}: reference",
                             limit=256, empty=True),
        withdrawn=withdrawn, payload_sha256=hashlib.sha256(raw).hexdigest(),
        envelope=envelope)


def accept(store: Store, raw: bytes, keys: Keys, pattern: str, *,
           refused: Refuse | None = None) -> tuple[CaseWindow, int] | None:
    """Store a case window and tag its clips; (window, tags made), None if not new.

    A refused window is logged (``case_window.refused``) and alerted, then
    re-raised; ``refused`` records it (default: in full, with its alert).
    """
    try:
        if len(raw) > MAX_WINDOW_BYTES:
            raise CredentialError(f"case window of {len(raw)} bytes is over the limit of "
                                  f"{MAX_WINDOW_BYTES}")
        try:
            envelope = boundedjson.loads(raw, max_bytes=MAX_WINDOW_BYTES, max_depth=MAX_DEPTH)
        except ValueError as exc:
            raise CredentialError(f"case window is not JSON: {exc}") from None
        window = parse_window(envelope, keys, pattern)
    except AgentError as exc:
        if refused is not None:
            refused("case_window", "invalid", str(exc), raw, {})
            raise
        log.error("case window refused: %s", exc)
        with store.transaction() as tx:
            tx.log("case_window.refused", None, {"reason": str(exc)})
            tx.event("alert", {"code": "case_window.refused", "message": str(exc)})
        raise
    with store.transaction() as tx:
        held = tx.one("SELECT MAX(revision) AS r FROM case_windows WHERE window_id = ?",
                      (window.window_id,))
        if held is not None and held["r"] is not None and held["r"] >= window.revision:
            return None
        tx.execute("INSERT INTO case_windows (window_id, revision, officer_id, start_at, "
                   "end_at, case_id, reference, withdrawn, envelope, received_at) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (window.window_id, window.revision, window.officer_id,
                    rfc3339(window.start), rfc3339(window.end), window.case_id,
                    window.reference, int(window.withdrawn),
                    json.dumps(envelope, separators=(",", ":")), now()))
        body = {"window_id": window.window_id, "revision": window.revision,
                "officer_id": window.officer_id, "start": rfc3339(window.start),
                "end": rfc3339(window.end), "case_id": window.case_id,
                "reference": window.reference, "withdrawn": window.withdrawn,
                "sha256": window.payload_sha256}
        tx.log("case_window.accepted", None, body)
        tagged = _apply(tx, window)
        tx.event("case_window.accepted", {**body, "tags": tagged})
    log.info("case window %s (revision %d, case %s): %d tag entries", window.window_id,
             window.revision, window.case_id, tagged)
    return window, tagged


def _apply(tx: Tx, window: CaseWindow) -> int:
    """Bring the tags of ``window`` in line with its newest revision; returns entries made."""
    wanted: set[str] = set()
    if not window.withdrawn:
        for row in tx.execute("SELECT clip_id, start_at, end_at FROM clips WHERE officer_id = ? "
                              "AND manifest IS NOT NULL AND state != 'duplicate'",
                              (window.officer_id,)).fetchall():
            if overlaps(row["start_at"], row["end_at"], window.start, window.end):
                wanted.add(row["clip_id"])
    made = 0
    tagged = {row["clip_id"]: row["case_id"] for row in tx.execute(
        "SELECT clip_id, case_id FROM clip_cases WHERE window_id = ?", (window.window_id,))}
    details = window.details()
    for clip_id, case_id in sorted(tagged.items()):
        if clip_id not in wanted:
            remove_case(tx, clip_id, case_id, source=SOURCE, details=details)
            made += 1
        elif case_id != window.case_id:
            if window.case_id in cases_of(tx, clip_id):
                remove_case(tx, clip_id, case_id, source=SOURCE, details=details)
            else:
                correct_case(tx, clip_id, case_id, window.case_id, source=SOURCE,
                             details=details)
            made += 1
    for clip_id in sorted(wanted - set(tagged)):
        if add_case(tx, clip_id, window.case_id, source=SOURCE, details=details) is not None:
            made += 1
    return made


def apply_at_seal(tx: Tx, clip_id: str, officer_id: str, start: str | None,
                  end: str | None) -> int:
    """Tag a clip being sealed with every window of its officer it falls in."""
    if not officer_id or start is None:
        return 0
    rows = tx.execute(
        "SELECT * FROM case_windows w WHERE officer_id = ? AND withdrawn = 0 AND revision = "
        "(SELECT MAX(revision) FROM case_windows WHERE window_id = w.window_id) "
        "ORDER BY received_at, window_id", (officer_id,)).fetchall()
    made = 0
    for row in rows:
        window_start, window_end = parse_rfc3339(row["start_at"]), parse_rfc3339(row["end_at"])
        if overlaps(start, end, window_start, window_end):
            details = {"window_id": row["window_id"], "window_revision": row["revision"],
                       "reference": row["reference"] or ""}
            if add_case(tx, clip_id, row["case_id"], source=SOURCE, details=details):
                made += 1
    return made
