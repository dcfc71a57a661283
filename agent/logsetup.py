"""The daemon's log: text or JSON lines, with the clip, camera and dock each line is about,
and the last lines kept in memory for the platform's ``logs`` command.

* :func:`log_fields` says what the code running in this thread works on
  (``with log_fields(serial=..., dock_id=...)``); every record logged inside
  carries those fields.  A record also takes ``clip_id`` / ``serial`` /
  ``dock_id`` given as ``extra=``, and otherwise the first clip id (a UUID)
  among its arguments: "where known".
* ``station.log_format = "json"``: one JSON object per line on stderr
  (journald stores each line as one entry; log shippers parse it):
  ``{"at", "level", "logger", "message", "clip_id"?, "serial"?, "dock_id"?,
  "exception"?}``.
* :class:`LogRing`: the last :data:`RING_LINES` records, each cut to
  :data:`RING_LINE_CHARS`, with anything shaped like a secret (a PEM private
  key, ``password=...``, a bearer token) replaced by ``[redacted]`` — the
  agent never logs secrets, and this keeps a mistake from reaching the
  platform.  Bounded whatever is logged.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

from agent.timeutil import rfc3339

FIELDS = ("clip_id", "serial", "dock_id")
RING_LINES = 1000
RING_LINE_CHARS = 2000
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bwc_log_fields", default=None)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
               re.S),
    re.compile(r"(?i)\b(password|passwd|secret|token|authorization)\b(\s*[=:]\s*|\s+)"
               r"(bearer\s+|basic\s+)?\S+"),
]


@contextlib.contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Records logged in this block (this thread) carry ``fields`` (added to outer ones)."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the thread's :func:`log_fields` (and a clip id among the arguments) on records."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        if getattr(record, "clip_id", None) is None:
            args = record.args if isinstance(record.args, tuple) else ()
            for arg in args:
                if isinstance(arg, str) and _UUID.fullmatch(arg):
                    record.clip_id = arg
                    break
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key in FIELDS if (value := getattr(record, key, None)) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"at": rfc3339(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        line.update(record_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def redact(text: str) -> str:
    for pattern in _SECRETS:
        text = pattern.sub("[redacted]", text)
    return text


class LogRing(logging.Handler):
    """The last :data:`RING_LINES` records, as JSON-able dicts (the platform's ``logs``)."""

    def __init__(self, capacity: int = RING_LINES) -> None:
        super().__init__()
        self._lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._ring_lock = threading.Lock()
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            line = {"at": rfc3339(record.created), "level": record.levelname.lower(),
                    "logger": record.name,
                    "message": redact(message)[:RING_LINE_CHARS], **record_fields(record)}
        except Exception:  # a broken record must not break logging
            self.handleError(record)
            return
        with self._ring_lock:
            self._lines.append(line)

    def last(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` lines, oldest first."""
        with self._ring_lock:
            lines = list(self._lines)
        return lines[-count:] if count > 0 else []


_ring: LogRing | None = None


def ring() -> LogRing | None:
    """The daemon's ring of recent log lines (None outside ``bwc-agent run``)."""
    return _ring


def configure(log_format: str, level: str) -> LogRing:
    """Set up the daemon's log: the stderr format, the context filter, the ring buffer."""
    global _ring
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(ContextFilter())
        handler.setFormatter(JsonFormatter() if log_format == "json"
                             else logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
    if _ring is None:
        _ring = LogRing()
        root.addHandler(_ring)
    return _ring
