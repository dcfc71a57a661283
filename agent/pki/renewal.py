"""Certificate care in the daemon: expiry alerts, and renewal before it is too late.

One thread (``Renewer``) looks at the certificates at start and then every
``pki.check_interval_s`` seconds (agent/pki/status.py gives the facts):

- ``cert.expiring`` alerts when 30, then 7 days or less are left of a
  certificate that should have been renewed by then (or that no EST server
  renews), and ``cert.expired`` once a certificate expired: each once per
  certificate (role and serial), remembered in the store with the alert, so
  a restart does not repeat them;
- with ``pki.est_url`` set, once ``pki.renew_after`` of a certificate's
  validity has passed, both certificates are renewed (``simplereenroll``,
  authenticated by the current TLS certificate; agent/pki/lifecycle.py);
  the new files replace the old all at once and ``on_renewed`` runs, so the
  next MQTT connection presents the new TLS certificate.  A failed renewal
  is retried every round and alerted (``cert.renewal_failed``) at most once
  a day.

Nothing here stops ingest or sealing: an expired certificate is reported
(status, MQTT status, alerts) while clips keep being offloaded and sealed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.errors import AgentError
from agent.pki.lifecycle import renew_station
from agent.pki.status import certificate_status
from agent.store import Store

__all__ = ["ALERT_DAYS", "Renewer"]

log = logging.getLogger(__name__)

ALERT_DAYS = (30, 7)
_FAILURE_ALERT_EVERY_S = 86400.0
_ROLES = {"station": "signing certificate", "tls": "TLS client certificate"}


class Renewer:
    def __init__(self, config: Config, store: Store,
                 on_renewed: Callable[[], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.on_renewed = on_renewed
        self.renewals = 0
        self.last_error: str | None = None
        self._last_failure_alert = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="certificates", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.pki.timeout_s * 2 + 5)

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.exception("certificate check failed")  # and again next round
            if self._stop.wait(self.config.pki.check_interval_s):
                return

    # --- one round -----------------------------------------------------------------------

    def check(self, at: dt.datetime | None = None) -> str | None:
        """A renewal if one is due, then alerts; returns "renewed", the failure, or None."""
        status = certificate_status(self.config, at)
        outcome = None
        if self.config.pki.est_url is not None and self._due(status):
            outcome = self._renew()
            if outcome == "renewed":
                status = certificate_status(self.config, at)
        for role in ("station", "tls"):
            block = status.get(role)
            if block is not None and "serial" in block:
                self._alerts(role, block)
        return outcome

    def _renew(self) -> str:
        try:
            renew_station(self.config, self.store)
        except AgentError as exc:
            self.last_error = exc.diagnostics()
            log.error("certificate renewal failed: %s", self.last_error)
            self._failure_alert(self.last_error)
            return self.last_error
        self.renewals += 1
        self.last_error = None
        if self.on_renewed is not None:
            self.on_renewed()
        return "renewed"

    def _overdue(self, block: dict[str, Any]) -> bool:
        """Past the point where the daemon renews it (or no EST server to renew with)."""
        return (self.config.pki.est_url is None
                or block.get("validity_used", 0) >= self.config.pki.renew_after)

    def _due(self, status: dict[str, Any]) -> bool:
        blocks = [b for b in (status.get("station"), status.get("tls"))
                  if b is not None and "serial" in b]
        # An expired signing certificate is renewed too, while the TLS one still
        # authenticates the station to the CA (enroll.renew says so when it cannot).
        return any(b["state"] == "expired" or self._overdue(b) for b in blocks)

    def _alerts(self, role: str, block: dict[str, Any]) -> None:
        """Alerts say something is wrong: a certificate the daemon renews in time (even one
        that lives less than 30 days) raises none."""
        what = f"{_ROLES[role]} {block['path']} (serial {block['serial']})"
        if block["state"] == "expired":
            if self.config.pki.est_url is None:
                advice = "enrol again (bwc-agent enroll) or install a renewed certificate"
            elif self.last_error is not None:
                advice = f"renewal failed: {self.last_error}"
            else:
                advice = "renewal is retried"
            self._alert_once(role, block, "expired", "cert.expired",
                             f"the station's {what} expired at {block['not_after']}; clips are "
                             f"still offloaded and sealed; {advice}")
            return
        days = [d for d in ALERT_DAYS if block["days_left"] <= d]
        if days and block["days_left"] >= 0 and self._overdue(block):
            threshold = min(days)
            self._alert_once(role, block, str(threshold), "cert.expiring",
                             f"the station's {what} expires at {block['not_after']} "
                             f"({block['days_left']:.1f} days left)", days=threshold)

    def _alert_once(self, role: str, block: dict[str, Any], mark: str, code: str,
                    message: str, **extra: Any) -> None:
        key = f"cert_alert:{role}:{block['serial']}"
        with self.store.transaction() as tx:
            row = tx.one("SELECT value FROM meta WHERE key = ?", (key,))
            sent = set(row["value"].split(",")) if row and row["value"] else set()
            # The 7-day alert makes the 30-day one moot; an expiry makes both moot.
            implied = {"expired": {"expired", "7", "30"}, "7": {"7", "30"}, "30": {"30"}}[mark]
            if mark in sent:
                return
            body = {"code": code, "role": role, "serial": block["serial"],
                    "not_after": block["not_after"], "days_left": block["days_left"],
                    "message": message, **extra}
            tx.log("alert", None, body)
            tx.event("alert", body)
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                       (key, ",".join(sorted(sent | implied))))
        log.warning("%s", message)

    def _failure_alert(self, message: str) -> None:
        if time.monotonic() - self._last_failure_alert < _FAILURE_ALERT_EVERY_S:
            return
        self._last_failure_alert = time.monotonic()
        body = {"code": "cert.renewal_failed", "message": message[:1000]}
        with self.store.transaction() as tx:
            tx.log("alert", None, body)
            tx.event("alert", body)
