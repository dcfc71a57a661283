"""What one dock session did, for people: shown by ``run --once``, stored with the dock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.timeutil import now


@dataclass
class DockReport:
    """What happened during one dock session: shown to people, stored with the dock.

    The copy of a clip is recorded (``copied``) by the probe worker, beside the
    session's thread: the lists are appended to, never rewritten.
    """

    handle: str
    serial: str = ""
    model: str = ""
    officer_id: str = ""
    docked_at: str = field(default_factory=now)
    recordings: int = 0
    new: int = 0
    already_ingested: int = 0
    copied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    # Entries not ingested: their number, and the first few (a camera may hold 100,000).
    skipped_count: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # may hide recordings
    refused: list[dict[str, str]] = field(default_factory=list)  # left on the camera
    refused_device: str = ""  # why the device policy refused the device (nothing was read)
    errors: list[str] = field(default_factory=list)
    clock_offset_s: float | None = None
    # Which disk was full when ingest stopped ("vault" or "database"), if it stopped so.
    stopped_full: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.quarantined or self.interrupted or self.unreadable
                    or self.refused)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
