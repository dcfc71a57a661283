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
                   credential_id: str | None = None,
                   officer_verified: bool = False) -> dict[str, Any]:
    """The manifest of a clip, from its row only (identity as recorded at discovery)."""
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
        "officer": {
            "id": clip["officer_id"] or None,
            "name": clip["officer_name"] or None,
            "unit_code": clip["unit_code"] or None,
            "unit_name": clip["unit_name"] or None,
            "credential_id": credential_id,
            "verified": officer_verified,
        },
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
