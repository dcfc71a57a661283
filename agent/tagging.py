"""Case tags: which cases a clip belongs to, as custody log entries (manifests stay sealed).

Each tag is a ``clip.tagged`` log entry and a ``clip.tagged`` platform event
in one transaction; the sealed manifest is never rewritten.  Body::

    {"action": "add" | "remove" | "correct", "case_id", "previous_case_id",
     "refers_to", "source", "by", "sha256", ...source details}

A removal or a correction is a new entry whose ``refers_to`` is the seq of
the entry that put the case there; ``previous_case_id`` is the case a
correction replaces.  A clip may be in several cases.  ``clip_cases`` holds
the cases each clip is in now (derived from the entries, for lookups);
``clips.case_id`` is the most recently added of them.

Sources: ``station-cli`` (bwc-agent tag), ``platform-command`` (the ``tag``
command), ``case-window`` (a platform case window, agent/officers/windows.py)
and ``station-officer`` (an officer at the station, agent/officers/station.py).

Case IDs: any Unicode, checked against ``custody.case_id_pattern`` and never
holding control or format characters or more than 256 UTF-8 bytes, whatever
the pattern says.  They are compared exactly as given.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from agent.errors import ConfigError
from agent.store import Store, Tx
from agent.store.db import LogEntry

SOURCES = ("station-cli", "platform-command", "case-window", "station-officer")
MAX_CASE_ID_BYTES = 256


class TagError(ConfigError):
    """A tag that cannot be made as asked (bad case ID, case not on the clip)."""


def check_case_id(case_id: Any, pattern: str) -> str:
    """``case_id`` if it is a valid case ID; TagError saying why not."""
    if not isinstance(case_id, str) or not case_id:
        raise TagError("a case ID must be a non-empty string")
    if len(case_id.encode("utf-8")) > MAX_CASE_ID_BYTES:
        raise TagError(f"case ID {case_id[:40]!r}... is longer than {MAX_CASE_ID_BYTES} bytes")
    bad = next((c for c in case_id if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn",
                                                                   "Zl", "Zp")), None)
    if bad is not None:
        raise TagError(f"case ID {case_id!r} holds the control or format character "
                       f"U+{ord(bad):04X}")
    if not re.fullmatch(pattern, case_id):
        raise TagError(f"case ID {case_id!r} does not match the configured pattern "
                       f"custody.case_id_pattern = {pattern!r}")
    return case_id


def cases_of(db: Store | Tx, clip_id: str) -> dict[str, Any]:
    """The cases ``clip_id`` is in now: case ID -> its clip_cases row."""
    sql = "SELECT * FROM clip_cases WHERE clip_id = ? ORDER BY tag_seq"
    rows = db.execute(sql, (clip_id,)).fetchall() if isinstance(db, Tx) else db.query(
        sql, (clip_id,))
    return {row["case_id"]: row for row in rows}


# --- inside a transaction ------------------------------------------------------------------

def add_case(tx: Tx, clip_id: str, case_id: str, *, source: str, by: str | None = None,
             details: dict[str, Any] | None = None) -> LogEntry | None:
    """Put ``clip_id`` in ``case_id``; None (no entry) if it is in that case already."""
    if case_id in cases_of(tx, clip_id):
        return None
    entry = _log(tx, clip_id, "add", case_id, None, None, source, by, details)
    _set(tx, clip_id, case_id, entry.seq, source, details)
    return entry


def remove_case(tx: Tx, clip_id: str, case_id: str, *, source: str, by: str | None = None,
                details: dict[str, Any] | None = None) -> LogEntry:
    """Take ``clip_id`` out of ``case_id`` (TagError if it is not in it)."""
    row = _current(tx, clip_id, case_id)
    entry = _log(tx, clip_id, "remove", case_id, None, row["tag_seq"], source, by, details)
    tx.execute("DELETE FROM clip_cases WHERE clip_id = ? AND case_id = ?", (clip_id, case_id))
    _sync_column(tx, clip_id)
    return entry


def correct_case(tx: Tx, clip_id: str, old: str, new: str, *, source: str,
                 by: str | None = None, details: dict[str, Any] | None = None) -> LogEntry:
    """Replace case ``old`` of ``clip_id`` by ``new`` (a wrong case number mended)."""
    row = _current(tx, clip_id, old)
    if new in cases_of(tx, clip_id):
        raise TagError(f"clip {clip_id} is in case {new!r} already; remove {old!r} instead")
    entry = _log(tx, clip_id, "correct", new, old, row["tag_seq"], source, by, details)
    tx.execute("DELETE FROM clip_cases WHERE clip_id = ? AND case_id = ?", (clip_id, old))
    _set(tx, clip_id, new, entry.seq, source, details)
    return entry


def _current(tx: Tx, clip_id: str, case_id: str) -> Any:
    cases = cases_of(tx, clip_id)
    if case_id not in cases:
        shown = ", ".join(repr(c) for c in cases) or "none"
        raise TagError(f"clip {clip_id} is not in case {case_id!r} (its cases: {shown})")
    return cases[case_id]


def _log(tx: Tx, clip_id: str, action: str, case_id: str, previous: str | None,
         refers_to: int | None, source: str, by: str | None,
         details: dict[str, Any] | None) -> LogEntry:
    if source not in SOURCES:
        raise ValueError(f"unknown tag source {source!r}")
    clip = tx.clip(clip_id)
    body: dict[str, Any] = {"action": action, "case_id": case_id, "previous_case_id": previous,
                            "refers_to": refers_to, "source": source, "by": by,
                            "sha256": clip["sha256"]}
    body.update(details or {})
    entry = tx.log("clip.tagged", clip_id, body)
    tx.event("clip.tagged", {"clip_id": clip_id, "log_seq": entry.seq, **body})
    return entry


def _set(tx: Tx, clip_id: str, case_id: str, seq: int, source: str,
         details: dict[str, Any] | None) -> None:
    window = (details or {}).get("window_id")
    tx.execute("INSERT INTO clip_cases (clip_id, case_id, tag_seq, source, window_id) "
               "VALUES (?,?,?,?,?)", (clip_id, case_id, seq, source, window))
    _sync_column(tx, clip_id)


def _sync_column(tx: Tx, clip_id: str) -> None:
    row = tx.one("SELECT case_id FROM clip_cases WHERE clip_id = ? ORDER BY tag_seq DESC "
                 "LIMIT 1", (clip_id,))
    tx.update_clip(clip_id, case_id=row["case_id"] if row is not None else None)


# --- one transaction each (the CLI, the platform's tag command) -----------------------------

def tag_clip(store: Store, clip_id: str, case_id: str, *, pattern: str, source: str,
             by: str | None = None, details: dict[str, Any] | None = None
             ) -> dict[str, Any] | None:
    """Put a clip in a case; returns the log entry body, None if it was in the case already."""
    check_case_id(case_id, pattern)
    with store.transaction() as tx:
        entry = add_case(tx, clip_id, case_id, source=source, by=by, details=details)
    return entry.body if entry is not None else None


def untag_clip(store: Store, clip_id: str, case_id: str, *, source: str,
               by: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    with store.transaction() as tx:
        return remove_case(tx, clip_id, case_id, source=source, by=by, details=details).body


def retag_clip(store: Store, clip_id: str, old: str, new: str, *, pattern: str, source: str,
               by: str | None = None, details: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    check_case_id(new, pattern)
    with store.transaction() as tx:
        return correct_case(tx, clip_id, old, new, source=source, by=by,
                            details=details).body
