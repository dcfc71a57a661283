"""What the station is doing: the one place that computes it, for every face that shows it.

``bwc-agent status`` (the CLI), the retained MQTT status and the station's
pages all call these functions; none has figures of its own.  Two sources
are joined here: the store (clip states, devices, the custody log: what
lasts) and, inside the daemon, the :class:`~agent.progress.ProgressRegistry`
(which camera is in which dock, bytes copied so far: what only the running
process knows).  The CLI runs in another process and has the store only.

The figures are language-neutral (states as codes, sizes in bytes, times in
seconds); putting them into words is the pages' business (agent/web).

:func:`undock_verdict` is the only definition of "safe to undock".
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import __version__, daemonstate
from agent.config import Config
from agent.devicepolicy import recent_refusals
from agent.officers.status import officers_status
from agent.offload import mtime_ms
from agent.pki.status import certificate_status
from agent.progress import DockProgress, ProgressRegistry
from agent.store import STATES, ClipState, Store
from agent.store.db import OUTBOX_PENDING
from agent.timeutil import parse_rfc3339, rfc3339
from agent.vault import Vault, disk_usage

S = ClipState

# Clips the station still has work on before the platform holds them.
BACKLOG_STATES = ("discovered", "copying", "copied", "sealed", "uploading", "uploaded")

# The platform acknowledged a clip only after checking it holds the same SHA-256
# (docs/PROTOCOL.md): from then on the station's copy is no longer the only one.
ACKNOWLEDGED_STATES = frozenset({S.ACKNOWLEDGED, S.RELEASED, S.PURGED})
# Sealed and, unless acknowledged already, held by the vault.
SEALED_STATES = frozenset({S.SEALED, S.UPLOADING, S.UPLOADED, S.QUARANTINED})

# A camera's state, as its tile shows it.
CAMERA_STATES = ("reading", "copying", "checking", "sealing", "uploading", "safe", "attention")


@dataclass(frozen=True)
class ClipFacts:
    """What the store knows of one clip, as far as safety is concerned."""

    clip_id: str
    state: str
    sealed: bool  # a signed manifest exists
    verified: bool  # the vault copy was read back from the disk and matched
    in_vault: bool  # the vault holds an object with the clip's SHA-256
    original: ClipFacts | None = None  # for a duplicate: the clip holding the same bytes


def clip_safe(clip: ClipFacts) -> bool:
    """Whether this clip no longer needs its camera (see :func:`undock_verdict`)."""
    state = S(clip.state)
    if state in ACKNOWLEDGED_STATES:
        return True
    if state in SEALED_STATES:
        return clip.sealed and clip.verified and clip.in_vault
    if state == S.DUPLICATE:
        return clip.original is not None and clip_safe(clip.original)
    return False


@dataclass(frozen=True)
class Verdict:
    safe: bool
    problems: tuple[str, ...]  # codes; see PROBLEMS
    waiting: int  # recordings not safe yet (still being copied, checked, sealed)


# Why a camera needs attention: the code, and whether the officer may undock it.
PROBLEMS = {
    "camera.unreadable": "the camera could not be identified or read",
    "camera.entries_unreadable": "folders or files on the camera could not be read",
    "disk.full": "the station's disk is full; the rest stays on the camera",
    "clips.failed": "recordings could not be copied or checked",
    "session.failed": "the offload stopped with an error",
}


def undock_verdict(dock: DockProgress, clips: Mapping[str, ClipFacts | None]) -> Verdict:
    """Whether the camera in ``dock`` may be taken away now: True only when it is.

    Safe to undock means ALL of:

    1. this docking's session has listed the camera and has ended (none running
       or queued for the dock);
    2. the session ended without an error, and nothing on the camera was
       unreadable (an unreadable folder may hide recordings);
    3. every recording listed on the camera in this docking is a clip that is
       in the vault, verified and sealed: its state is sealed, uploading,
       uploaded or quarantined after sealing, with a signed manifest, the vault
       copy read back from disk and matched (``ingest.verify``), and the object
       present in the vault; or the platform acknowledged the same SHA-256
       (acknowledged, released, purged); or it is a duplicate of such a clip.

    ``clips`` maps each listed recording's path to its clip (None: no clip yet).
    A camera with no recordings is safe once its session ended cleanly.
    """
    problems: list[str] = []
    if dock.phase == "finished":
        if dock.serial == "":
            problems.append("camera.unreadable")
        if dock.unreadable:
            problems.append("camera.entries_unreadable")
        if any(e.startswith("disk full") for e in dock.errors):
            problems.append("disk.full")
        elif dock.errors and dock.serial:
            problems.append("session.failed")
    if dock.listed is None:
        return Verdict(False, tuple(problems), 0)
    failed = [c for c in clips.values()
              if c is not None and (c.state == S.QUARANTINED.value and not clip_safe(c))]
    if failed and "clips.failed" not in problems:
        problems.append("clips.failed")
    waiting = sum(1 for path, _size, _mtime in dock.listed
                  if (c := clips.get(path)) is None or not clip_safe(c))
    safe = dock.phase == "finished" and not problems and waiting == 0
    return Verdict(safe, tuple(problems), waiting)


# --- reading the store --------------------------------------------------------------------


def _facts(row: sqlite3.Row, vault: Vault | None, originals: Mapping[str, sqlite3.Row]
           ) -> ClipFacts:
    sha = row["sha256"]
    original = None
    if row["state"] == S.DUPLICATE.value and sha in originals:
        original = _facts(originals[sha], vault, {})
    return ClipFacts(clip_id=row["clip_id"], state=row["state"],
                     sealed=row["manifest"] is not None, verified=bool(row["verified"]),
                     in_vault=bool(sha) and (vault is None or vault.has(sha)),
                     original=original)


def listed_clips(store: Store, vault: Vault | None, dock: DockProgress
                 ) -> tuple[dict[str, ClipFacts | None], dict[str, sqlite3.Row]]:
    """The clip of each recording listed on the camera in this docking, by path.

    A recording copied in this docking is known by its clip id (its file may
    have changed between listing and copy); the others by their identity
    (serial, path, size, mtime), as the dock session matched them.
    """
    if dock.listed is None or not dock.serial:
        return {}, {}
    rows = store.query("SELECT * FROM clips WHERE device_serial = ?", (dock.serial,))
    by_id = {r["clip_id"]: r for r in rows}
    by_identity = {(r["path"], r["size"], r["mtime_ms"]): r for r in rows}
    by_path_copied = {c.path: by_id[c.clip_id] for c in dock.clips.values() if c.clip_id in by_id}
    dups = [r["sha256"] for r in rows if r["state"] == S.DUPLICATE.value and r["sha256"]]
    originals = {}
    for sha in dups:
        found = store.query_one("SELECT * FROM clips WHERE sha256 = ? AND state != ? "
                                "ORDER BY discovered_at LIMIT 1", (sha, S.DUPLICATE.value))
        if found is not None:
            originals[sha] = found
    facts: dict[str, ClipFacts | None] = {}
    listed_rows: dict[str, sqlite3.Row] = {}
    for path, size, mtime in dock.listed:
        row = by_path_copied.get(path) or by_identity.get((path, size, mtime_ms(mtime)))
        facts[path] = None if row is None else _facts(row, vault, originals)
        if row is not None:
            listed_rows[path] = row
    return facts, listed_rows


def _clip_step(row: sqlite3.Row | None, phase: str | None, facts: ClipFacts | None) -> str:
    """One word for where a clip is: the live phase while the session works on it."""
    if phase in ("copying", "verifying", "probing", "sealing"):
        return phase
    if row is None:
        return "waiting"
    state = row["state"]
    if state in (S.DISCOVERED.value, S.COPYING.value):
        return "waiting" if phase in (None, "waiting") else "attention"
    if state == S.COPIED.value:
        return "sealing"
    if state == S.QUARANTINED.value:
        return "attention" if facts is None or not clip_safe(facts) else "upload_refused"
    return str(state)


def dock_view(store: Store, vault: Vault | None, dock: DockProgress) -> dict[str, Any]:
    """Everything a dock's tile shows, language-neutral."""
    facts, rows = listed_clips(store, vault, dock)
    verdict = undock_verdict(dock, facts)
    device = store.query_one("SELECT * FROM devices WHERE serial = ?", (dock.serial,)) \
        if dock.serial else None
    clips: list[dict[str, Any]] = []
    for path, size, _mtime in dock.listed or []:
        row = rows.get(path)
        live = next((c for c in dock.clips.values() if c.path == path), None)
        step = _clip_step(row, live.phase if live else None, facts.get(path))
        clips.append({"name": path.rsplit("/", 1)[-1], "path": path, "size": size,
                      "done": live.done if live else (size if row is not None
                                                      and step != "waiting" else 0),
                      "step": step, "clip_id": row["clip_id"] if row is not None else None})
    to_copy = list(dock.clips.values())
    bytes_total = sum(c.size for c in to_copy)
    bytes_done = sum(c.done for c in to_copy)
    eta = ((bytes_total - bytes_done) / dock.bytes_per_s
           if dock.running and dock.bytes_per_s > 0 and bytes_total > bytes_done else None)
    return {
        "handle": dock.handle,
        "port": os.path.basename(dock.handle.rstrip("/")) or dock.handle,
        "serial": dock.serial,
        "model": dock.model,
        "officer_id": dock.officer_id,
        "officer_name": dock.officer_name,
        "battery": _battery(dock.battery, device),
        "state": _camera_state(dock, verdict, clips),
        "safe_to_undock": verdict.safe,
        "problems": list(verdict.problems),
        "errors": list(dock.errors),
        "recordings": len(dock.listed or []),
        "waiting": verdict.waiting,
        "to_copy": len(to_copy),
        "started": sum(1 for c in to_copy if c.phase != "waiting"),
        "bytes_total": bytes_total,
        "bytes_done": bytes_done,
        "eta_s": round(eta) if eta is not None else None,
        "uploading": sum(1 for c in clips if c["step"] in ("sealed", "uploading", "uploaded")),
        "acknowledged": sum(1 for c in clips if c["step"] in ("acknowledged", "released",
                                                               "purged")),
        "clips": clips,
    }


def _camera_state(dock: DockProgress, verdict: Verdict, clips: list[dict[str, Any]]) -> str:
    steps = {c["step"] for c in clips}
    if dock.running:
        if dock.listed is None:
            return "reading"
        if "copying" in steps:
            return "copying"
        if steps & {"verifying", "probing"}:
            return "checking"
        if "sealing" in steps:
            return "sealing"
        return "copying" if "waiting" in steps else "checking"
    if verdict.problems:
        return "attention"
    if verdict.safe:
        return "safe"
    if "sealing" in steps:
        return "sealing"
    return "uploading"  # sealed, waiting for the platform to confirm what is not verified


def _battery(live: Any, device: sqlite3.Row | None) -> int | None:
    """Battery percent, when the camera reports one (serial cameras do)."""
    value = live
    if value is None and device is not None and "battery" in device.keys():  # noqa: SIM118
        value = device["battery"]
    if isinstance(value, Mapping):
        value = value.get("percent", value.get("level"))
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return round(value)
    return None


def dock_views(store: Store, vault: Vault | None, progress: ProgressRegistry | None
               ) -> list[dict[str, Any]]:
    if progress is None:
        return []
    return [dock_view(store, vault, dock) for dock in progress.snapshot()]


# --- the station as a whole ------------------------------------------------------------------


def clip_counts(store: Store) -> dict[str, int]:
    counts = store.counts_by_state()
    return {state: counts.get(state, 0) for state in STATES}


def backlog(counts: Mapping[str, int],
            states: Iterable[str] = BACKLOG_STATES) -> dict[str, int]:
    return {s: counts.get(s, 0) for s in states}


def station_status(config: Config, store: Store, *, vault: Vault | None = None,
                   progress: ProgressRegistry | None = None,
                   daemon: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The station's health, as ``bwc-agent status`` prints it and the IT page shows it.

    ``daemon`` is the daemon's own view of itself (agent.daemonstate) when it is the
    caller; any other process reads it from the data directory.  While the daemon is not
    running, no device counts as docked: the store's last docking is shown as
    ``docked_when_stopped`` (nobody watches the docks).
    """
    when = time.time()
    facts = dict(daemon) if daemon is not None else daemonstate.read(config.data_dir, now=when)
    counts = clip_counts(store)
    checkpoint = store.query_one("SELECT size, at FROM checkpoints ORDER BY size DESC LIMIT 1")
    last_ack = store.query_one("SELECT MAX(acknowledged_at) AS at FROM clips")
    # Acknowledged clips whose deletion from their camera keeps failing (retried with
    # back-off): they stay on the camera until someone looks.
    failing = store.query(
        "SELECT device_serial, COUNT(*) AS clips, MIN(release_retry_at) AS retry_at, "
        "MAX(release_error) AS reason FROM clips WHERE release_failures > 0 AND "
        "released_at IS NULL AND state IN ('acknowledged', 'purged', 'duplicate') "
        "GROUP BY device_serial ORDER BY device_serial")
    status: dict[str, Any] = {
        "station_id": config.station.id,
        "version": __version__,
        "store": {"schema": store.schema_version(), "agent_version": store.agent_version()},
        "data_dir": str(config.data_dir),
        "daemon": facts,
        "devices": _devices(store, running=bool(facts.get("running"))),
        "refused": recent_refusals(store),
        "clips": counts,
        "backlog": sum(backlog(counts).values()),
        "backlog_oldest": oldest_unacknowledged(store, when),
        "disk": disk_usage(config.data_dir),
        "log": {"size": store.log_size(),
                "checkpoint": dict(checkpoint) if checkpoint else None},
        "releases_failing": [
            {"serial": r["device_serial"], "clips": int(r["clips"]), "reason": r["reason"],
             "next_attempt_at": rfc3339(float(r["retry_at"]))} for r in failing],
        "sync": {"platform": config.platform is not None,
                 "outbox_pending": store.outbox_backlog(),
                 "outbox_refused": outbox_refused(store),
                 "last_ack": last_ack["at"] if last_ack else None,
                 "broker": facts.get("broker") if config.platform is not None else None},
        "alerts": {"active": active_alerts(store, when), "window_s": ACTIVE_ALERT_S},
        "officers": officers_status(config, store),
        "certificate": certificate_status(config),  # agent/pki/status.py
    }
    if progress is not None:
        status["docks"] = [dock_summary(v) for v in dock_views(store, vault, progress)]
        status["throughput"] = {
            "ingest_bytes_per_s": round(progress.ingested.rate()),
            "upload_bytes_per_s": round(progress.uploaded.rate()),
            "ingested_bytes": progress.ingested.total,
            "uploaded_bytes": progress.uploaded.total}
    return status


# The clip states the MQTT status's "backlog" object counts (docs/PROTOCOL.md section 3.1).
PLATFORM_BACKLOG_STATES = ("discovered", "copied", "sealed", "uploading", "uploaded")


def platform_status(status: Mapping[str, Any], *, last_sync: str | None) -> dict[str, Any]:
    """The retained MQTT status (docs/PROTOCOL.md section 3.1), from :func:`station_status`.

    The same figures in the shape the platform's contract fixed first: ``clips`` only
    the states that have clips, ``backlog`` by state, ``outbox`` a count.
    """
    counts = status["clips"]
    result = {key: status[key] for key in (
        "station_id", "devices", "disk", "officers", "daemon", "alerts", "certificate",
        "backlog_oldest") if key in status}
    result.update(
        clips={state: n for state, n in counts.items() if n},
        backlog=backlog(counts, PLATFORM_BACKLOG_STATES),
        docks=status.get("docks", []),
        outbox=status["sync"]["outbox_pending"],
        outbox_refused=status["sync"]["outbox_refused"],
        last_sync=last_sync,
        throughput=status.get("throughput"))
    return result


def _devices(store: Store, *, running: bool) -> list[dict[str, Any]]:
    """Every device seen; docked only while a running daemon watches the docks."""
    devices = store.device_summaries()
    if not running:
        for device in devices:
            device["docked_when_stopped"] = device["docked"]
            device["docked"] = False
    return devices


def oldest_unacknowledged(store: Store, when: float) -> dict[str, Any] | None:
    """The clip waiting longest for the platform (discovered, not acknowledged yet)."""
    marks = ",".join("?" * len(BACKLOG_STATES))
    row = store.query_one(f"SELECT clip_id, discovered_at FROM clips WHERE state IN ({marks}) "
                          "ORDER BY discovered_at LIMIT 1", BACKLOG_STATES)
    if row is None:
        return None
    try:
        age = max(0.0, when - parse_rfc3339(row["discovered_at"]).timestamp())
    except ValueError:
        age = None
    return {"clip_id": row["clip_id"], "since": row["discovered_at"],
            "age_s": round(age) if age is not None else None}


def outbox_refused(store: Store) -> int:
    """Outbox items waiting that the broker refused at their last attempt."""
    row = store.query_one(f"SELECT COUNT(*) AS n FROM outbox WHERE {OUTBOX_PENDING} AND "
                          "last_error IS NOT NULL")
    return int(row["n"]) if row else 0


# An alert is active while it was raised within this window: alerts are events, nothing
# clears them, and a day covers a shift and the night after it.
ACTIVE_ALERT_S = 24 * 3600


def active_alerts(store: Store, when: float) -> list[dict[str, Any]]:
    """Alert codes raised within :data:`ACTIVE_ALERT_S`, the latest first, each with how often
    it was raised in all (``count``, since ``first_at``) and its last message."""
    since = rfc3339(when - ACTIVE_ALERT_S)
    rows = store.query("SELECT code, count, first_at, last_at, message, serial, clip_id "
                       "FROM alerts WHERE last_at >= ? ORDER BY last_at DESC", (since,))
    return [dict(r) for r in rows]


def alert_counts(store: Store) -> dict[str, int]:
    """How often each alert code was raised, ever (the metrics' counter)."""
    return {r["code"]: int(r["count"]) for r in store.query("SELECT code, count FROM alerts")}


def dock_summary(view: Mapping[str, Any]) -> dict[str, Any]:
    """A dock's figures without its clip list (the MQTT status and the CLI)."""
    keys = ("handle", "serial", "officer_id", "state", "safe_to_undock", "problems",
            "recordings", "waiting", "bytes_total", "bytes_done", "eta_s", "battery")
    return {k: view[k] for k in keys}


def recent_alerts(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The newest alerts of the custody log, newest first."""
    rows = store.query("SELECT seq, at, body FROM custody_log WHERE kind = 'alert' "
                       "ORDER BY seq DESC LIMIT ?", (limit,))
    alerts = []
    for row in rows:
        body = json.loads(row["body"])
        alerts.append({"seq": row["seq"], "at": row["at"], "code": str(body.get("code", "")),
                       "serial": body.get("serial"), "handle": body.get("handle"),
                       "message": str(body.get("message", ""))})
    return alerts
