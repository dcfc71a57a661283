"""Where the officers part of an export bundle lives, and the cases its tag entries make.

Shared by the exporter (agent/officers/bundle.py) and the verifier
(agent/officers/audit.py); docs/FORMATS.md section 15 is the format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.store.db import LogEntry

OFFICERS = "officers"
CREDENTIAL_KEY = "officers/credential-key.pem"
PLATFORM_KEY = "officers/platform-key.pem"
CREDENTIALS_DIR = "officers/credentials"
ROSTERS = "officers/rosters.jsonl"
WINDOWS = "officers/case-windows.jsonl"
CASES_DIR = "cases"


def current_cases(entries: Iterable[dict[str, Any] | LogEntry]) -> dict[str, dict[str, list[int]]]:
    """case -> clip -> seqs of the tag entries that put it there, replayed from the log."""
    out: dict[str, dict[str, list[int]]] = {}
    by_clip: dict[str, dict[str, list[int]]] = {}
    for item in entries:
        entry = item.as_dict() if isinstance(item, LogEntry) else item
        if entry["kind"] != "clip.tagged" or not isinstance(entry["body"], dict):
            continue
        clip, body, seq = entry["clip_id"], entry["body"], entry["seq"]
        held = by_clip.setdefault(clip, {})
        action, case_id = body.get("action"), str(body.get("case_id"))
        if action is None:  # entries made before removals existed: the case replaces all
            held.clear()
            held[case_id] = [seq]
        elif action == "add":
            held.setdefault(case_id, []).append(seq)
        elif action == "remove":
            held.pop(case_id, None)
        elif action == "correct":
            held.pop(str(body.get("previous_case_id")), None)
            held[case_id] = [seq]
    for clip, held in by_clip.items():
        for case_id, seqs in held.items():
            if isinstance(case_id, str):
                out.setdefault(case_id, {})[clip] = seqs
    return out
