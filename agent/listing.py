"""What of a device's listing is offloaded, and how the rest is reported.

A driver lists recordings and the entries it skipped, each with a reason
(drivers/base.py).  Here the listing is screened once more (a path that is
not safe inside a volume is never copied, whichever driver listed it), the
skipped entries are written to the custody log (``device.skipped``), and
entries that could not be read at all raise a ``device.unreadable`` alert:
they may hide recordings nobody else will see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.alerts import Alerts
from agent.store import Store
from drivers.base import DeviceInfo, Listing, Recording, Skipped
from drivers.paths import unsafe_reason
from drivers.walk import REFUSED, TOO_DEEP, TOO_MANY, UNREADABLE_DIR

log = logging.getLogger(__name__)

# Skip reasons (drivers/walk.py) that mean "could not look", not "not a recording".
UNREADABLE_REASONS = (UNREADABLE_DIR, "cannot stat", TOO_DEEP, TOO_MANY)
SHOWN = 10  # entries named in an alert


@dataclass
class Screened:
    recordings: list[Recording]
    skipped: list[dict[str, str]]
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
    skipped = [{"path": s.path, "reason": s.reason} for s in listing.skipped]
    # Symlinks, special files and other types are skipped on purpose; an entry that
    # could not be read at all may hold recordings nobody else will see: say so.
    unreadable = [entry for entry in skipped if entry["reason"].startswith(UNREADABLE_REASONS)]
    refused = [entry for entry in skipped if entry["reason"].endswith(REFUSED)]
    return Screened(recordings, skipped, unreadable, refused)


def report_skipped(store: Store, alerts: Alerts, info: DeviceInfo, screened: Screened) -> None:
    """Log the skipped entries (custody log and journal); alert about unreadable ones."""
    if screened.skipped:
        with store.transaction() as tx:
            tx.log("device.skipped", None, {"serial": info.serial,
                                            "entries": screened.skipped})
        for s in screened.skipped:
            log.warning("%s: skipped %r: %s", info.serial, s["path"], s["reason"])
    unreadable = screened.unreadable
    if unreadable:
        shown = "; ".join(f"{e['path']}: {e['reason']}" for e in unreadable[:SHOWN])
        alerts.send(info.serial, "device.unreadable",
                    f"{_entries(len(unreadable))} on {info.serial} could not be read and may "
                    f"hold recordings: {shown}{_more(len(unreadable))}")
    refused = screened.refused
    if refused:
        shown = "; ".join(e["path"] for e in refused[:SHOWN])
        alerts.send(info.serial, "device.hard_links",
                    f"{_entries(len(refused))} on {info.serial} with several hard links, "
                    "which a camera's FAT or exFAT never has, refused and left on the camera "
                    f"(check the camera volume): {shown}{_more(len(refused))}")


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _more(count: int) -> str:
    return f" (and {count - SHOWN} more)" if count > SHOWN else ""
