"""The officers part of the station status: the roster held, and clips whose officer is unverified.

One place computes it; ``bwc-agent status`` (text and JSON) and the MQTT
status object show it.
"""

from __future__ import annotations

from typing import Any

from agent.config import Config
from agent.officers.credentials import Outcome
from agent.store import Store

# Outcomes worth a line in status: every failure, not a station that checks nothing.
_QUIET = (Outcome.VALID.value, Outcome.NOT_CHECKED.value)
_MAX_PROBLEMS = 20


def officers_status(config: Config, store: Store) -> dict[str, Any]:
    roster = store.query_one("SELECT version, kind, issued_at, received_at FROM roster_messages "
                             "ORDER BY version DESC, kind LIMIT 1")
    counts = store.query_one("SELECT COUNT(*) AS n, SUM(revoked_at IS NOT NULL) AS revoked "
                             "FROM roster_entries")
    problems = store.query(
        "SELECT officer_id, device_serial, officer_status, credential_id, COUNT(*) AS clips, "
        "MAX(sealed_at) AS last FROM clips WHERE officer_status IS NOT NULL AND "
        f"officer_status NOT IN ({','.join('?' * len(_QUIET))}) "
        "GROUP BY officer_id, device_serial, officer_status, credential_id "
        "ORDER BY last DESC LIMIT ?", (*_QUIET, _MAX_PROBLEMS))
    windows = store.query_one("SELECT COUNT(DISTINCT window_id) AS n FROM case_windows")
    return {
        "credential_key": config.custody.credential_key_file is not None,
        "roster": None if roster is None else {
            "version": roster["version"], "kind": roster["kind"],
            "issued_at": roster["issued_at"], "received_at": roster["received_at"],
            "credentials": int(counts["n"] or 0) if counts else 0,
            "revoked": int(counts["revoked"] or 0) if counts else 0},
        "unverified": [
            {"officer_id": r["officer_id"] or None, "serial": r["device_serial"],
             "status": r["officer_status"], "credential_id": r["credential_id"],
             "clips": int(r["clips"]), "last_sealed": r["last"]} for r in problems],
        "case_windows": int(windows["n"]) if windows else 0,
    }


def status_lines(info: dict[str, Any]) -> list[str]:
    """The officers lines of ``bwc-agent status``."""
    roster = info["roster"]
    if not info["credential_key"]:
        head = "officers: credentials not checked (custody.credential_key_file not set)"
    elif roster is None:
        head = "officers: no roster received yet; clips are sealed with unverified officers"
    else:
        head = (f"officers: roster version {roster['version']} ({roster['credentials']} "
                f"credentials, {roster['revoked']} revoked), received {roster['received_at']}; "
                f"{info['case_windows']} case window(s)")
    lines = [head]
    for item in info["unverified"]:
        credential = f" credential {item['credential_id']}" if item["credential_id"] else ""
        lines.append(f"  UNVERIFIED officer {item['officer_id'] or '-'}{credential} on camera "
                     f"{item['serial']}: {item['status']}, {item['clips']} clip(s), last "
                     f"sealed {item['last_sealed']}")
    return lines
