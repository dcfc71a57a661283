"""The outbox the MQTT link drains: the interface, and a small SQLite reference implementation.

Evidence events are written to a durable outbox first and published from
there, because paho's own queue lives in memory and dies with the process.
The link reads ``pending()`` (oldest first), publishes, and calls
``mark_delivered()`` only after the broker acknowledged the message (PUBACK
with a success reason code).  Delivery is therefore at-least-once: an item
published but not acknowledged when the connection or the process died is
published again, and the platform de-duplicates by the event id in the
payload.

Invariants of ``SqliteOutbox``:
- every change (add, mark delivered) is one SQLite transaction, committed
  with ``synchronous=FULL`` in WAL mode, so an item that ``add()`` returned
  survives a power cut;
- ``delivered_at`` is set once and never cleared; an item is never deleted
  before it was delivered;
- ``pending()`` returns undelivered items by ascending id, i.e. in the order
  they were added.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.errors import StoreError
from agent.timeutil import now


@dataclass(frozen=True)
class OutboxItem:
    """One message waiting to be published: where, what, and how."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox(Protocol):
    """What the MQTT link needs from a durable outbox."""

    def pending(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` undelivered items, oldest first."""
        ...

    def mark_delivered(self, item_id: int) -> None:
        """Record that the broker acknowledged item ``item_id``; idempotent."""
        ...

    def wait_for_new(self, timeout: float) -> None:
        """Block until an item was added since the last ``pending()`` call, or ``timeout``."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE delivered_at IS NULL;
"""


class SqliteOutbox:
    """A durable outbox in its own SQLite file; safe to share between threads.

    One connection guarded by a lock: the outbox sees a handful of writes per
    second at most, so serialising them costs nothing and keeps every
    transaction whole.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        # Counts additions; pending() remembers the value it saw, so that an
        # add() between pending() and wait_for_new() is never missed.
        self._added_seq = 0
        self._seen_seq = 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed item survives a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open outbox database {self.path}: {exc}") from exc

    def add(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Append one message (durably) and wake a waiting drainer; returns its id."""
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (topic, bytes(payload), qos, int(retain), now()))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot add to outbox {self.path}: {exc}") from exc
            item_id = cur.lastrowid
            assert item_id is not None
            self._added_seq += 1
            self._added.notify_all()
        return item_id

    def pending(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` undelivered items, oldest first."""
        with self._lock:
            self._seen_seq = self._added_seq
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain FROM outbox "
                    "WHERE delivered_at IS NULL ORDER BY id LIMIT ?", (limit,)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read outbox {self.path}: {exc}") from exc
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def mark_delivered(self, item_id: int) -> None:
        """Record the broker's acknowledgement of ``item_id`` (the first one counts)."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                    (now(), item_id))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot mark outbox item {item_id} delivered: {exc}") from exc

    def wait_for_new(self, timeout: float) -> None:
        """Block until ``add()`` ran after the last ``pending()``, or ``timeout`` seconds."""
        with self._added:
            self._added.wait_for(lambda: self._added_seq != self._seen_seq, timeout)

    def backlog(self) -> int:
        """Number of undelivered items (for the status report)."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read outbox {self.path}: {exc}") from exc
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
