"""What of a device's listing is offloaded, and how the rest is reported.

A driver lists recordings and the entries it skipped, each with a reason
(drivers/base.py).  Here the listing is screened once more (a path that is
not safe inside a volume is never copied, whichever driver listed it), and
the rest is reported:

* skipped entries, as a summary whatever their number: a count by reason,
  the first :data:`SHOWN` entries and a SHA-256 over the whole sorted list
  (:func:`summarise`).  The summary goes to the custody log
  (``device.skipped``) and one warning line, only when it differs from the
  camera's last one: a camera docked every day with the same hundred
  thousand files is not reported every day;
* entries that could not be read at all raise a ``device.unreadable``
  alert (they may hide recordings nobody else will see), and recordings
  refused on purpose (several hard links) a ``device.hard_links`` alert, at
  every dock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent.alerts import Alerts
from agent.store import Store
from drivers.base import DeviceInfo, Listing, Recording, Skipped
from drivers.paths import unsafe_reason
from drivers.walk import REFUSED, TOO_DEEP, TOO_MANY, UNREADABLE_DIR

log = logging.getLogger(__name__)

# Skip reasons (drivers/walk.py) that mean "could not look", not "not a recording".
UNREADABLE_REASONS = (UNREADABLE_DIR, "cannot stat", TOO_DEEP, TOO_MANY)
SHOWN = 20  # skipped entries kept in a summary and a dock report
ALERTED = 10  # entries named in an alert
LOGGED = 3  # entries named in the journal line


@dataclass
class Screened:
    recordings: list[Recording]
    skipped: list[dict[str, str]]  # sorted by path, then reason
    unreadable: list[dict[str, str]]  # could not be looked at: may hide recordings
    refused: list[dict[str, str]]  # recordings not read on purpose (several hard links)


def screen(listing: Listing) -> Screened:
    """Split a listing into what is copied, what is skipped, and what could not be read."""
    recordings = []
    for rec in listing.recordings:
        # Defence in depth: a driver should never list these, and the name is never
        # used as a local path, but such an entry is reported rather than copied.
        reason = unsafe_reason(rec.path)
        if reason is not None:
            listing.skipped.append(Skipped(rec.path, f"unsafe name: {reason}"))
        else:
            recordings.append(rec)
    skipped = [{"path": s.path, "reason": s.reason}
               for s in sorted(listing.skipped, key=lambda s: (s.path, s.reason))]
    unreadable = [entry for entry in skipped if entry["reason"].startswith(UNREADABLE_REASONS)]
    refused = [entry for entry in skipped if entry["reason"].endswith(REFUSED)]
    return Screened(recordings, skipped, unreadable, refused)


def reason_class(reason: str) -> str:
    """What a skip reason is, without its details: the text before the first colon."""
    return reason.split(":", 1)[0]


def summarise(skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Count by reason class, the first entries, and SHA-256 of the JCS of the whole list."""
    by_reason = Counter(reason_class(e["reason"]) for e in skipped)
    # The JCS (RFC 8785) of a list of objects whose members are strings is what json gives
    # with sorted keys, no whitespace and raw UTF-8: JCS escapes strings as JSON does.
    # Ten times faster than the general canonicalizer, for 100,000 entries at each dock.
    jcs = json.dumps(skipped, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return {"count": len(skipped), "by_reason": dict(sorted(by_reason.items())),
            "first": skipped[:SHOWN], "sha256": hashlib.sha256(jcs.encode()).hexdigest()}


def report_skipped(store: Store, alerts: Alerts, info: DeviceInfo,
                   screened: Screened) -> dict[str, Any]:
    """Report the skipped entries (once per change) and alert; returns their summary."""
    summary = summarise(screened.skipped)
    with store.transaction() as tx:
        row = tx.one("SELECT skipped_sha256 FROM devices WHERE serial = ?", (info.serial,))
        changed = (row["skipped_sha256"] if row else None) != summary["sha256"]
        if changed:
            tx.execute("UPDATE devices SET skipped_sha256 = ? WHERE serial = ?",
                       (summary["sha256"], info.serial))
            if summary["count"]:
                tx.log("device.skipped", None, {"serial": info.serial, **summary})
    if summary["count"]:
        counts = ", ".join(f"{k}: {v}" for k, v in summary["by_reason"].items())
        first = ", ".join(f"{e['path']} ({e['reason']})" for e in screened.skipped[:LOGGED])
        log.log(logging.WARNING if changed else logging.INFO,
                "%s: %d %s not ingested (%s); first: %s%s", info.serial, summary["count"],
                "entry" if summary["count"] == 1 else "entries", counts, first,
                "" if changed else " (unchanged since the last dock)")
    unreadable = screened.unreadable
    if unreadable:
        shown = "; ".join(f"{e['path']}: {e['reason']}" for e in unreadable[:ALERTED])
        alerts.send(info.serial, "device.unreadable",
                    f"{_entries(len(unreadable))} on {info.serial} could not be read and may "
                    f"hold recordings: {shown}{_more(len(unreadable))}")
    refused = screened.refused
    if refused:
        shown = "; ".join(e["path"] for e in refused[:ALERTED])
        alerts.send(info.serial, "device.hard_links",
                    f"{_entries(len(refused))} on {info.serial} with several hard links, "
                    "which a camera's FAT or exFAT never has, refused and left on the camera "
                    f"(check the camera volume): {shown}{_more(len(refused))}")
    return summary


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _more(count: int) -> str:
    return f" (and {count - ALERTED} more)" if count > ALERTED else ""
