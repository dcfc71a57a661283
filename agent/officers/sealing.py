"""What sealing a clip adds about its officer and its recording time, in the seal transaction.

:func:`prepare` works out the recording times and the officer binding from
the clip's row and the roster held now; the sealer puts them in the manifest
(``officer``, ``recorded``, ``flags``) and on the clip's row.  After the
``clip.sealed`` entry, :func:`after_seal` raises the binding's alert and tags
the clip with the case windows it falls in.  Everything is in the sealer's
one transaction: a clip is never sealed without its binding, its alert or
its window tags, nor those recorded for a clip left unsealed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.officers import windows
from agent.officers.binding import Binding, bind
from agent.officers.registry import Keys
from agent.officers.times import RecordedTimes, media_duration_s, recorded_times
from agent.store import Tx
from agent.timeutil import parse_rfc3339

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealFacts:
    binding: Binding
    times: RecordedTimes
    flags: list[str]
    officer: dict[str, Any]
    recorded: dict[str, Any]

    def columns(self) -> dict[str, Any]:
        """The clip row's columns that record the same (set with the seal transition)."""
        return {"credential_id": self.binding.credential_id,
                "roster_version": self.binding.roster_version,
                "officer_status": self.binding.outcome.value,
                "start_at": self.times.start, "end_at": self.times.end,
                "flags": json.dumps(self.flags)}


def prepare(tx: Tx, clip: sqlite3.Row, *, keys: Keys, tolerance_s: float) -> SealFacts:
    media = json.loads(clip["media"]) if clip["media"] else None
    times = recorded_times(name_start=clip["recorded_start"], mtime=clip["mtime_ms"] / 1000,
                           duration_s=media_duration_s(media),
                           clock_offset_s=clip["clock_offset_s"], docked_at=clip["docked_at"],
                           tolerance_s=tolerance_s)
    binding = bind(tx, officer_id=clip["officer_id"] or "", serial=clip["device_serial"],
                   at=_when(times, clip), keys=keys)
    flags = sorted(set(json.loads(clip["flags"])) | set(binding.flags) | set(times.flags))
    credential = binding.credential if binding.verified else None
    officer = {
        "id": clip["officer_id"] or None,
        # The camera's words first; a verified credential fills what the camera left out.
        "name": clip["officer_name"] or (credential.name if credential else None),
        "unit_code": clip["unit_code"] or (credential.unit_code if credential else None) or None,
        "unit_name": clip["unit_name"] or (credential.unit_name if credential else None) or None,
        "credential_id": binding.credential_id,
        "verified": binding.verified,
        "status": binding.outcome.value,
        "roster_version": binding.roster_version,
    }
    recorded = {
        "start": times.start, "end": times.end, "important": bool(clip["important"]),
        "camera_start": times.camera_start, "camera_end": times.camera_end,
        "time_source": times.time_source,
    }
    return SealFacts(binding, times, flags, officer, recorded)


def after_seal(tx: Tx, clip: sqlite3.Row, facts: SealFacts) -> None:
    binding = facts.binding
    code = binding.alert_code
    if code is not None:
        message = (f"clip {clip['clip_id']} ({clip['name']}) from camera "
                   f"{clip['device_serial']} is sealed with an unverified officer: "
                   f"{binding.detail}")
        log.warning("%s: %s", code, message)
        body = {"code": code, "clip_id": clip["clip_id"], "serial": clip["device_serial"],
                "officer_id": binding.officer_id or None,
                "credential_id": binding.credential_id, "outcome": binding.outcome.value,
                "message": message}
        tx.log("alert", None, body)
        tx.event("alert", body)
    windows.apply_at_seal(tx, clip["clip_id"], clip["officer_id"] or "", facts.times.start,
                          facts.times.end)


def _when(times: RecordedTimes, clip: sqlite3.Row) -> datetime:
    """The recording's corrected start; else its end; else the dock (no better clue)."""
    for text in (times.start, times.end, clip["docked_at"], clip["discovered_at"]):
        if text:
            return parse_rfc3339(text)
    raise AssertionError("a clip row always has discovered_at")
