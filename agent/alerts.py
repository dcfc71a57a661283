"""Alerts raised by dock sessions: a custody log entry and a platform event, in one transaction.

An alert is for people (the platform's operators, IT staff reading the log);
it never changes a clip's state.  It is logged at error level too, so a
station without a platform still shows it in its journal.

An alert the store cannot take (its disk is full, it is busy) is kept in
memory and recorded by the next :meth:`Alerts.flush` or :meth:`Alerts.send`
that finds the store writable, with the time it was raised.  At most
:data:`PENDING_MAX` wait; a repeat of a waiting alert (same code and device)
replaces it, so a station that stays full does not grow the queue.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

from agent.errors import StoreError
from agent.store import Store
from agent.timeutil import now

log = logging.getLogger(__name__)

PENDING_MAX = 100


@dataclass(frozen=True)
class _Alert:
    serial: str | None
    code: str
    message: str
    raised_at: str
    late: bool = False  # a first try to record it failed


class Alerts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[tuple[str | None, str], _Alert] = {}
        self._lock = threading.Lock()

    def send(self, serial: str | None, code: str, message: str) -> None:
        """Record alert ``code`` about device ``serial`` (None: the station itself)."""
        log.error("%s: %s", code, message)
        with self._lock:
            self._pending.pop((serial, code), None)  # this one is newer
            if len(self._pending) >= PENDING_MAX:
                self._pending.pop(next(iter(self._pending)))
            self._pending[(serial, code)] = _Alert(serial, code, message, now())
        self.flush()

    def flush(self) -> int:
        """Record the alerts waiting for the store; returns how many are still waiting."""
        with self._lock:
            while self._pending:
                key, alert = next(iter(self._pending.items()))
                try:
                    self._record(alert)
                except StoreError as exc:
                    if not alert.late:
                        log.error("alert %s not recorded yet (tried again later): %s",
                                  alert.code, exc)
                        self._pending[key] = replace(alert, late=True)
                    break
                del self._pending[key]
            return len(self._pending)

    def _record(self, alert: _Alert) -> None:
        body = {"code": alert.code, "serial": alert.serial, "message": alert.message}
        if alert.late:
            body["raised_at"] = alert.raised_at
        with self.store.transaction() as tx:
            tx.log("alert", None, body)
            tx.event("alert", body)
