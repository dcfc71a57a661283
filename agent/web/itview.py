"""The IT page's figures (from agent.overview and the store) and their words.

Messages that the agent wrote into the custody log (alert texts, quarantine
reasons) are shown as they are: they are technical details for IT staff,
written by the agent in English, and never trusted as markup.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.custody.keys import load_certificate
from agent.custody.sealer import key_paths
from agent.errors import AgentError
from agent.overview import backlog, recent_alerts, station_status
from agent.progress import ProgressRegistry
from agent.requeue import requeue_problem
from agent.store import ClipState, Store
from agent.vault import Vault
from agent.web.i18n import Language
from agent.web.views import camera_state_text, size_text

MAX_QUARANTINED = 200
CERT_WARN_DAYS = 30


def _certificate(label: str, path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        cert = load_certificate(path)
    except AgentError as exc:
        return {"what": label, "path": str(path), "not_after": None, "error": str(exc)}
    not_after = cert.not_valid_after_utc
    days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    return {"what": label, "path": str(path), "error": None,
            "not_after": not_after.strftime("%Y-%m-%d %H:%M UTC"), "days_left": int(days)}


def figures(config: Config, store: Store, vault: Vault | None,
            progress: ProgressRegistry | None, docks: Sequence[Mapping[str, Any]], *,
            officer_refusals: Mapping[str, int] | None = None,
            daemon: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the IT page shows, language-neutral (``daemon``: the live daemon's facts)."""
    status = station_status(config, store, vault=vault, daemon=daemon)
    quarantined: list[sqlite3.Row] = store.query(
        "SELECT * FROM clips WHERE state = ? ORDER BY updated_at DESC LIMIT ?",
        (ClipState.QUARANTINED.value, MAX_QUARANTINED))
    alerts = recent_alerts(store, 100)
    certs = [c for c in (
        _certificate("station", key_paths(config)[1]),
        _certificate("web", config.web.tls_cert_file if config.web else None),
    ) if c is not None]
    return {
        "status": status,
        "backlog": backlog(status["clips"]),
        "alerts": [a for a in alerts if not a["code"].startswith("device.")][:50],
        "refused": [a for a in alerts if a["code"].startswith("device.")][:50],
        "quarantined": [{"clip_id": r["clip_id"], "name": r["name"],
                         "serial": r["device_serial"], "reason": r["reason"] or "",
                         "since": r["updated_at"], "problem": requeue_problem(r)}
                        for r in quarantined],
        "docks": [{"port": d["port"], "serial": d["serial"], "officer_id": d["officer_id"],
                   "officer_name": d["officer_name"], "state": d["state"],
                   "safe": d["safe_to_undock"], "errors": d["errors"]} for d in docks],
        "certificates": certs,
        "officer_refusals": dict(officer_refusals) if officer_refusals is not None else None,
    }


def _connection_rows(lang: Language, status: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The agent's version and heartbeat, the broker connection, the active alerts."""
    _ = lang.gettext
    daemon = status["daemon"]
    started = daemon.get("started_at")
    agent = (_("version %(version)s, running since %(at)s") if started
             else _("version %(version)s")) % {"version": status["version"], "at": started}
    # These pages are served by the daemon itself, so it runs; its main loop may not (the
    # web thread goes on while it hangs): that is what "unresponsive" says.
    hung = daemon.get("state") == "unresponsive"
    if hung:
        agent += " — " + _("not responding: last heartbeat %(age)s s ago") % {
            "age": daemon.get("heartbeat_age_s")}
    rows = [(_("Agent"), agent, "bad" if hung else "ok")]
    broker = status["sync"]["broker"]
    if status["sync"]["platform"]:
        state = (broker or {}).get("state") or "unknown"
        since = (broker or {}).get("since") or "?"
        text = {"connected": _("connected since %(at)s"),
                "connecting": _("connecting since %(at)s"),
                "disconnected": _("disconnected since %(at)s")}.get(
            state, _("unknown")) % {"at": since}
        if state != "connected" and (broker or {}).get("last_error"):
            text += " — " + str(broker["last_error"])
        rows.append((_("Message broker"), text, "ok" if state == "connected" else "bad"))
    active = status["alerts"]["active"]
    rows.append((_("Alerts"), lang.ngettext("%(n)d kind raised in the last day",
                                            "%(n)d kinds raised in the last day", len(active))
                 % {"n": len(active)}, "warn" if active else "ok"))
    return rows


def words(lang: Language, fig: Mapping[str, Any], user: str) -> dict[str, Any]:
    """The IT page's live content in ``lang``."""
    _ = lang.gettext
    status = fig["status"]
    disk = status["disk"]
    checkpoint = status["log"]["checkpoint"]
    sync = status["sync"]
    health = [
        (_("Station"), status["station_id"], "ok"),
        (_("Free disk space"), _("%(free)s of %(total)s") % {
            "free": size_text(disk["free_bytes"]), "total": size_text(disk["total_bytes"])},
         "ok" if disk["free_bytes"] > disk["total_bytes"] * 0.1 else "bad"),
        (_("Custody log"), lang.ngettext("%(n)d entry", "%(n)d entries",
                                         status["log"]["size"]) % {"n": status["log"]["size"]},
         "ok"),
        (_("Last checkpoint"), checkpoint["at"] if checkpoint else _("none yet"), "ok"),
        (_("Platform"), (_("%(n)d events waiting to be sent") % {
            "n": sync["outbox_pending"]}) if sync["platform"] else _("none configured"),
         "ok" if not sync["platform"] or sync["outbox_pending"] < 100 else "warn"),
        (_("Last acknowledgement"), sync["last_ack"] or _("never"), "ok"),
        *_connection_rows(lang, status),
        (_("Clips not yet acknowledged"), str(status["backlog"]), "ok"),
        (_("Quarantined clips"), str(status["clips"].get("quarantined", 0)),
         "bad" if status["clips"].get("quarantined") else "ok"),
    ]
    refusals = fig.get("officer_refusals")
    if refusals is not None:
        # Counted in memory only: a refused sign-in never grows the custody log.
        total = sum(refusals.values())
        health.append((_("Refused officer sign-ins since the station started"),
                       str(total), "warn" if total else "ok"))
    state_names = {
        "discovered": _("found, not copied"), "copying": _("copying"),
        "copied": _("copied, not sealed"), "sealed": _("sealed, waiting for upload"),
        "uploading": _("uploading"), "uploaded": _("uploaded, waiting for acknowledgement"),
    }
    certs = []
    for c in fig["certificates"]:
        what = _("Station signing certificate") if c["what"] == "station" \
            else _("Certificate of these pages")
        if c["error"]:
            certs.append({"what": what, "text": c["error"], "level": "bad"})
            continue
        days = c["days_left"]
        text = (lang.ngettext("expires %(date)s (in %(n)d day)",
                              "expires %(date)s (in %(n)d days)", days)
                % {"date": c["not_after"], "n": days}) if days >= 0 else \
            _("expired on %(date)s") % {"date": c["not_after"]}
        certs.append({"what": what, "text": text,
                      "level": "bad" if days < 7 else "warn" if days < CERT_WARN_DAYS else "ok"})
    return {
        "user": user,
        "health": [{"label": a, "value": b, "level": c} for a, b, c in health],
        "backlog": [{"label": state_names[s], "count": n} for s, n in fig["backlog"].items()],
        "alerts": fig["alerts"],
        "refused": fig["refused"],
        "quarantined": [{**q, "can_requeue": q["problem"] is None,
                         "why_not": q["problem"] or ""} for q in fig["quarantined"]],
        "docks": [{**d, "state_text": camera_state_text(lang, d["state"])}
                  for d in fig["docks"]],
        "certificates": certs,
    }
