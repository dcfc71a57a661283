"""The clip manifest (bwc.manifest/v1): what a clip is, where it came from, who handled it.

Built once, from the store, when the clip is sealed; canonicalized with RFC 8785
and signed in a DSSE envelope.  A sealed manifest is never rewritten: later
facts (case tags, uploads, acknowledgements) are custody log entries.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent.timeutil import rfc3339

SCHEMA = "bwc.manifest/v1"


def build_manifest(clip: sqlite3.Row, *, station_id: str, key_id: str,
                   officer: dict[str, Any] | None = None,
                   recorded: dict[str, Any] | None = None,
                   flags: list[str] | None = None) -> dict[str, Any]:
    """The manifest of a clip, from its row (identity as recorded at discovery).

    ``officer``, ``recorded`` and ``flags`` are what sealing worked out about the
    officer's credential and the corrected recording times (agent/officers/sealing.py);
    without them the manifest says the officer is unverified and gives the camera's times.
    """
    media = json.loads(clip["media"]) if clip["media"] else None
    return {
        "schema": SCHEMA,
        "clip_id": clip["clip_id"],
        "file": {
            "name": clip["name"],
            "path": clip["path"],
            "size": clip["size"],
            "mtime": rfc3339(clip["mtime_ms"] / 1000),
            "digests": {"sha256": clip["sha256"]},
        },
        "media": media,
        "device": {
            "serial": clip["device_serial"],
            "vendor": clip["device_vendor"],
            "model": clip["device_model"],
            "firmware": clip["device_firmware"],
            "clock_offset_s": clip["clock_offset_s"],
        },
        "officer": officer or {
            "id": clip["officer_id"] or None,
            "name": clip["officer_name"] or None,
            "unit_code": clip["unit_code"] or None,
            "unit_name": clip["unit_name"] or None,
            "credential_id": None,
            "verified": False,
        },
        "recorded": recorded or {
            "start": clip["recorded_start"],
            "end": clip["recorded_end"],
            "important": bool(clip["important"]),
        },
        "case_id": clip["case_id"],
        "station": {"id": station_id, "key_id": key_id},
        "ingest": {
            "docked_at": clip["docked_at"],
            "copied_at": clip["copied_at"],
            "verified": bool(clip["verified"]),
        },
        "flags": flags if flags is not None else json.loads(clip["flags"]),
    }
