"""When a clip was recorded: the camera's times, corrected by its clock offset at the dock.

Sources, by the camera's own clock:

- the start, from the file name (the catalog's ``start`` group), else the
  file time less the duration (``time_source`` ``"name"`` / ``"file-time"``);
- the duration, from the media probe (:func:`media_duration_s` is the one
  place the probe's output is read for this);
- the file time (mtime), which cameras set when a recording ends.

The camera's clock minus the station's was measured at the dock
(``device.clock_offset_s``); the corrected times are the camera's times less
that offset.  Case windows match corrected times.  Both are in the manifest.

A clip is flagged ``recorded.time_mismatch`` when its name-based end and its
file time differ by more than ``officers.time_tolerance_s`` (a difference of
a whole number of half hours up to 14 h is the volume's time zone, which the
camera's file system does not record, not a disagreement), and
``recorded.after_dock`` when the corrected end lies after the dock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.timeutil import parse_rfc3339, rfc3339

TIME_MISMATCH = "recorded.time_mismatch"
AFTER_DOCK = "recorded.after_dock"
_ZONE_STEP_S = 1800
_ZONE_MAX_S = 14 * 3600


def media_duration_s(media: Mapping[str, Any] | None) -> float | None:
    """The probed duration in seconds, or None when the probe gave none usable."""
    value = media.get("duration_s") if media else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


@dataclass(frozen=True)
class RecordedTimes:
    camera_start: str | None
    camera_end: str | None
    start: str | None
    end: str | None
    time_source: str | None
    flags: list[str] = field(default_factory=list)


def recorded_times(*, name_start: str | None, mtime: float, duration_s: float | None,
                   clock_offset_s: float | None, docked_at: str | None,
                   tolerance_s: float) -> RecordedTimes:
    """The clip's camera and corrected times and the flags their disagreements raise."""
    flags: list[str] = []
    start: float | None = None
    end: float | None = None
    source: str | None = None
    if name_start is not None:
        source = "name"
        start = _epoch(name_start)
        end = start + duration_s if start is not None and duration_s is not None else None
        if start is None:
            source = None
        elif _disagree((end if end is not None else start) - mtime, tolerance_s) and (
                end is not None or mtime < start - tolerance_s):
            flags.append(TIME_MISMATCH)
    if source is None:
        source, end = "file-time", mtime
        start = mtime - duration_s if duration_s is not None else None
    offset = clock_offset_s or 0.0
    corrected_end = end - offset if end is not None else None
    docked = _epoch(docked_at) if docked_at else None
    if corrected_end is not None and docked is not None \
            and corrected_end > docked + tolerance_s:
        flags.append(AFTER_DOCK)
    return RecordedTimes(
        camera_start=_text(start), camera_end=_text(end),
        start=_text(start - offset if start is not None else None),
        end=_text(corrected_end), time_source=source, flags=flags)


def _disagree(difference: float, tolerance_s: float) -> bool:
    if abs(difference) <= tolerance_s:
        return False
    zone = round(difference / _ZONE_STEP_S) * _ZONE_STEP_S
    return abs(zone) > _ZONE_MAX_S or abs(difference - zone) > tolerance_s


def _epoch(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text).timestamp()
    except ValueError:
        return None


def _text(value: float | None) -> str | None:
    return rfc3339(value) if value is not None else None


def overlaps(start: str | None, end: str | None, window_start: datetime,
             window_end: datetime) -> bool:
    """Whether a recording [start, end] lies in a case window (touching counts; a clip
    with no known end counts by its start)."""
    if start is None:
        return False
    first = parse_rfc3339(start)
    last = parse_rfc3339(end) if end is not None else first
    return first <= window_end and last >= window_start
