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


def build_manifest(clip: sqlite3.Row, device: sqlite3.Row | None, *, station_id: str,
                   key_id: str, credential_id: str | None = None,
                   officer_verified: bool = False) -> dict[str, Any]:
    media = json.loads(clip["media"]) if clip["media"] else None
    dev: dict[str, Any] = {"serial": clip["device_serial"], "vendor": "", "model": "",
                           "firmware": "", "clock_offset_s": None}
    officer: dict[str, Any] = {"id": clip["officer_id"] or None, "name": None, "unit_code": None,
                               "unit_name": None, "credential_id": credential_id,
                               "verified": officer_verified}
    if device is not None:
        dev.update(vendor=device["vendor"], model=device["model"], firmware=device["firmware"],
                   clock_offset_s=device["clock_offset_s"])
        officer.update(name=device["officer_name"] or None,
                       unit_code=device["unit_code"] or None,
                       unit_name=device["unit_name"] or None)
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
        "device": dev,
        "officer": officer,
        "recorded": {
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
        "flags": json.loads(clip["flags"]),
    }
