"""Time stamps and identifiers used in every custody format.

Times are RFC 3339 in UTC with a ``Z`` and millisecond precision.  Clip ids
are UUID version 7 (time-ordered, RFC 9562), so that sorting by id sorts by
discovery time.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime


def rfc3339(ts: float | datetime | None = None) -> str:
    """Format ``ts`` (epoch seconds, an aware datetime, or now) as RFC 3339 UTC, ms precision."""
    if ts is None:
        dt = datetime.now(UTC)
    elif isinstance(ts, datetime):
        dt = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    else:
        dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now() -> str:
    """The current time as RFC 3339 UTC."""
    return rfc3339()


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time (``Z`` or offset) into an aware UTC datetime.

    Every invalid time raises ValueError, the one error callers catch: also one that
    is valid with its offset but outside years 1-9999 in UTC (0001-01-01T00:00:00+01:00),
    where the conversion would raise OverflowError.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {text!r} is outside the years 1 to 9999 in UTC") from None


def uuid7() -> str:
    """A new UUID version 7: 48-bit Unix ms time stamp, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))
