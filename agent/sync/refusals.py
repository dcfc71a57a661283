"""Refused platform messages, recorded in the custody log without letting a sender fill it.

Anyone who can publish on the station's ``ack``, ``cmd/``, ``roster`` or
``case-window`` topics can send refusable messages at will; the custody log
is permanent.  So:

- a refusal records bounded fields only: every text cut to
  ``FIELD_CHARS`` characters (invalid Unicode escaped), and the SHA-256
  and length of the whole message, which identify it without keeping it;
- refusals are collapsed per (kind, code, clip) and time window, where
  the clip is one the station holds (an ack about a real clip, signed by
  the platform) or none: the first refusal of a window is written in full
  (``ack.refused`` / ``command.refused``) with its alert; later ones in the
  same window are only counted, and when the window has ended one summary
  entry of the same kind says how many there were (``repeated``,
  ``first_at``, ``last_at``), with one alert;
- codes come from a fixed set and clips from the station's own clips, so
  the number of open windows is bounded.

So a flood of junk adds at most two entries (and two alerts) per code per
window.  A count not yet written is lost if the process dies; the first
refusal of its window is not.  One RefusalLog is used by one thread.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.store import Store
from agent.timeutil import now

log = logging.getLogger(__name__)

FIELD_CHARS = 400
WINDOW_S = 300.0


def bounded(value: Any, limit: int = FIELD_CHARS) -> Any:
    """``value`` made safe to record: text cut to ``limit`` characters, valid Unicode only.

    Containers become their JSON-ish text, cut the same way: a recorded field
    is never bigger than ``limit`` characters whatever the sender put in it.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class _Window:
    opened: float
    first_at: str
    last_at: str = ""
    repeated: int = 0


class RefusalLog:
    """Writes refusals to the store's custody log and outbox, bounded and collapsed."""

    def __init__(self, store: Store, *, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str, str | None], _Window] = {}

    def refuse(self, kind: str, code: str, reason: str, *, payload: bytes,
               clip_id: str | None = None, fields: dict[str, Any] | None = None) -> bool:
        """Record one refusal of ``kind`` ("ack", "command", "roster", "case_window").

        True if written, False if only counted.

        ``clip_id`` is given only for a clip the station knows; ``fields``
        are extra details (bounded here).
        """
        self.flush()
        key = (kind, code, clip_id)
        window = self._windows.get(key)
        if window is not None:
            window.repeated += 1
            window.last_at = now()
            log.debug("%s refused again (%s): %s", kind, code, bounded(reason))
            return False
        opened = _Window(opened=self._clock(), first_at=now())
        text = bounded(reason)
        log.error("%s refused (%s): %s", "acknowledgement" if kind == "ack" else kind, code,
                  text)
        body = {"code": code, "reason": text,
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
                "payload_bytes": len(payload),
                **{name: bounded(value) for name, value in (fields or {}).items()}}
        with self.store.transaction() as tx:
            tx.log(f"{kind}.refused", clip_id, body)
            tx.event("alert", {"code": f"{kind}.refused", "refusal": code,
                               "clip_id": clip_id, "message": text,
                               **{name: body[name] for name in (fields or {})}})
        # Only once written: a refusal whose record failed is tried again in full.
        self._windows[key] = opened
        return True

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every window that has ended (every window with ``force``)."""
        current = self._clock()
        for key, window in list(self._windows.items()):
            if not force and current - window.opened < self.window_s:
                continue
            del self._windows[key]
            if window.repeated:
                self._summary(*key, window)

    def _summary(self, kind: str, code: str, clip_id: str | None, window: _Window) -> None:
        message = (f"{window.repeated} more {kind} message(s) refused ({code}) between "
                   f"{window.first_at} and {window.last_at}; only the first was recorded "
                   "in full")
        log.error("%s", message)
        body = {"code": code, "repeated": window.repeated, "first_at": window.first_at,
                "last_at": window.last_at, "window_s": self.window_s}
        with self.store.transaction() as tx:
            tx.log(f"{kind}.refused", clip_id, body)
            tx.event("alert", {"code": f"{kind}.refused", "refusal": code, "clip_id": clip_id,
                               "repeated": window.repeated, "message": message})
