"""Alerts raised by dock sessions: a custody log entry and a platform event, in one transaction.

An alert is for people (the platform's operators, IT staff reading the log);
it never changes a clip's state.  It is logged at error level too, so a
station without a platform still shows it in its journal.
"""

from __future__ import annotations

import logging

from agent.errors import StoreError
from agent.store import Store

log = logging.getLogger(__name__)


class Alerts:
    def __init__(self, store: Store) -> None:
        self.store = store

    def send(self, serial: str | None, code: str, message: str) -> None:
        """Record alert ``code`` about device ``serial`` (None: the station itself)."""
        log.error("%s: %s", code, message)
        try:
            with self.store.transaction() as tx:
                tx.log("alert", None, {"code": code, "serial": serial, "message": message})
                tx.event("alert", {"code": code, "serial": serial, "message": message})
        except StoreError:
            log.exception("could not record alert %s", code)
