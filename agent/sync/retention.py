"""Release from the camera and purge from the vault: the only two places that delete evidence.

Both require a valid platform acknowledgement first — the clip's state says
so (``acknowledged`` is reached only through :mod:`agent.sync.inbound`):

* release (``retention.release = "after-ack"``): the dock worker that owns the
  camera deletes an acknowledged clip from it; the driver deletes only the
  very file it has just found to have the same size, mtime and SHA-256 as
  what was sealed (``Device.release``).  A duplicate (the same bytes found
  again, on this camera or another) is released once the clip it duplicates
  is acknowledged: the platform holds those bytes;
* purge: the local vault copy of a released (or, with ``release = "never"``,
  acknowledged) clip is removed after ``retention.keep_days``, or earlier,
  oldest acknowledgement first, while free space is under
  ``retention.low_water_mb``.

Each deletion is a state change with its custody log entry and event.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any, NamedTuple

from agent.alerts import Alerts
from agent.config import Config
from agent.errors import (
    AgentError,
    DeviceError,
    DeviceGoneError,
    RecordingChangedError,
    RecordingMissingError,
)
from agent.officers.policy import release_held
from agent.offload import mtime_ms
from agent.store import ClipState, Store
from agent.thumbnails import Thumbnails
from agent.timeutil import now, parse_rfc3339
from agent.vault import Vault
from drivers.base import Device, DeviceInfo, Recording

log = logging.getLogger(__name__)
S = ClipState


def release_acknowledged(config: Config, store: Store, device: Device, info: DeviceInfo,
                         *, retry_failed: bool = False) -> list[str]:
    """Delete this camera's acknowledged clips from it; returns the clip ids released.

    A clip whose last release failed waits for its back-off (:func:`retry_delay`)
    unless ``retry_failed`` (a new dock: the camera may have been fixed).  The
    first failure on a camera with no failing release raises one
    ``release.failed`` alert.
    """
    if config.retention.release != "after-ack":
        return []
    current = time.time()
    due = "" if retry_failed else " AND release_retry_at <= ?"
    rows = store.query(f"SELECT * FROM clips WHERE device_serial = ? AND {_AWAITING_RELEASE}"
                       f"{due} ORDER BY clip_id",
                       (info.serial,) if retry_failed else (info.serial, current))
    failing_before = _failing(store, info.serial)
    released: list[str] = []
    failed: list[str] = []
    for row in rows:
        # A duplicate holds its original's bytes: it leaves the camera when they may.
        judged = store.clip(row["duplicate_of"]) if row["state"] == S.DUPLICATE.value else row
        held = release_held(config, judged)
        if held is not None:
            log.info("clip %s stays on %s: %s", row["clip_id"], info.serial, held)
            continue
        with _RELEASING_LOCK:
            # Claimed under the lock purge checks: purge leaves a claimed clip alone until
            # its release is recorded.
            if row["clip_id"] in _RELEASING or store.query_one(
                    f"SELECT 1 FROM clips WHERE clip_id = ? AND {_AWAITING_RELEASE}",
                    (row["clip_id"],)) is None:
                continue  # released, purged, or being released by another job
            _RELEASING.add(row["clip_id"])
        try:
            failure = _release_one(store, device, info, row, current)
        finally:
            with _RELEASING_LOCK:
                _RELEASING.discard(row["clip_id"])
        if failure is None:
            released.append(row["clip_id"])
        elif failure.alert:
            failed.append(failure.reason)
    if failed and not failing_before:
        delay = retry_delay(1)
        Alerts(store).send(
            info.serial, "release.failed",
            f"{len(failed)} {'clip' if len(failed) == 1 else 'clips'} acknowledged by the "
            f"platform could not be deleted from camera {info.serial}: {failed[0]}; they stay "
            f"on the camera and are tried again in {delay:.0f} s, then less often (at most "
            f"every {RETRY_MAX_S / 60:.0f} min), and at every dock")
    return released


# Back-off of a failing release: 1 min, doubling, at most an hour.  A failure needs a
# person (a read-only or protected card): trying every few seconds only fills the log.
RETRY_FIRST_S = 60.0
RETRY_MAX_S = 3600.0


def retry_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed release in a row."""
    return float(min(RETRY_FIRST_S * 2 ** max(failures - 1, 0), RETRY_MAX_S))


def releases_due(store: Store, serial: str, at: float | None = None) -> bool:
    """Whether a failed release of this camera's clips waits no longer."""
    current = time.time() if at is None else at
    return store.query_one(f"SELECT 1 FROM clips WHERE device_serial = ? AND "
                           f"{_AWAITING_RELEASE} AND release_failures > 0 AND "
                           "release_retry_at <= ? LIMIT 1", (serial, current)) is not None


def cameras_holding(store: Store, clip_id: str) -> list[str]:
    """Serials of the cameras holding an acknowledged clip's bytes: its own, its duplicates'."""
    rows = store.query("SELECT DISTINCT device_serial FROM clips WHERE clip_id = ? OR "
                       "(duplicate_of = ? AND state = 'duplicate' AND released_at IS NULL) "
                       "ORDER BY device_serial", (clip_id, clip_id))
    return [r["device_serial"] for r in rows]


def _failing(store: Store, serial: str) -> int:
    row = store.query_one(f"SELECT COUNT(*) AS n FROM clips WHERE device_serial = ? AND "
                          f"{_AWAITING_RELEASE} AND release_failures > 0", (serial,))
    return int(row["n"]) if row else 0


# Acknowledged clips; those purged from the vault under disk pressure while they waited
# for their camera (the ack stands: the platform holds them); and duplicates (the same
# bytes recorded twice) once the very clip they duplicate is acknowledged.
_AWAITING_RELEASE = (
    "(state = 'acknowledged' OR (state = 'purged' AND released_at IS NULL AND ack IS NOT "
    "NULL) OR (state = 'duplicate' AND released_at IS NULL AND EXISTS (SELECT 1 FROM clips "
    "AS original WHERE original.clip_id = clips.duplicate_of AND original.sha256 = "
    "clips.sha256 AND original.ack IS NOT NULL AND original.state IN ('acknowledged', "
    "'released', 'purged'))))")
# Clips whose release from a camera is under way (any dock worker); purge leaves them be.
_RELEASING: set[str] = set()
_RELEASING_LOCK = threading.Lock()


class Failure(NamedTuple):
    reason: str
    # The camera is there but the station could not check or delete the file (a
    # read-only card, an I/O error): not when the file is gone or is another one now,
    # nor when the camera was unplugged.
    alert: bool


def _release_one(store: Store, device: Device, info: DeviceInfo, row: Any,
                 current: float) -> Failure | None:
    """Release one acknowledged clip from the camera; None if it is released now."""
    clip_id = row["clip_id"]
    rec = Recording(path=row["path"], size=row["size"], mtime=row["mtime_ms"] / 1000)
    problem = _precheck(device, rec)
    if problem is not None and problem.reason.startswith(GONE) and _release_started(store,
                                                                                    clip_id):
        # A crash came between the deletion and its record: finish the record.
        _record_release(store, row, info, recovered=True)
        return None
    if problem is not None:
        _log_release(store, row, "release.skipped", problem.reason, info, current)
        return problem
    started: list[bool] = []

    def before_delete() -> None:
        # Logged after the check and before the deletion, so a crash in between is
        # recognised later.
        with store.transaction() as tx:
            tx.log("release.started", clip_id, {"device_serial": info.serial,
                                                "path": row["path"]})
        started.append(True)

    try:
        device.release(rec, sha256=row["sha256"], before_delete=before_delete)
    except BaseException as exc:
        # Recorded whatever the error, so the next dock never takes this file's absence
        # for a deletion that happened.
        failure = Failure(str(exc), not isinstance(exc, DeviceGoneError) and (
            started != [] or not isinstance(exc, RecordingChangedError | RecordingMissingError)))
        _log_release(store, row, "release.failed" if started else "release.skipped",
                     failure.reason, info, current)
        if isinstance(exc, DeviceError):
            return failure
        raise
    _record_release(store, row, info, recovered=False)
    return None


def _log_release(store: Store, row: Any, kind: str, reason: str, info: DeviceInfo,
                 current: float) -> None:
    """Log a release that did not happen, and when to try it again."""
    failures = int(row["release_failures"]) + 1
    log.warning("clip %s not released from %s: %s", row["clip_id"], info.serial, reason)
    with store.transaction() as tx:
        tx.log(kind, row["clip_id"], {"reason": reason})
        tx.update_clip(row["clip_id"], release_failures=failures, release_error=reason,
                       release_retry_at=current + retry_delay(failures))


GONE = "not on the camera any more"


def _release_started(store: Store, clip_id: str) -> bool:
    """Whether the last release attempt of the clip was started and did not end otherwise."""
    row = store.query_one("SELECT kind FROM custody_log WHERE clip_id = ? AND kind IN "
                          "('release.started', 'release.failed', 'release.skipped') "
                          "ORDER BY seq DESC LIMIT 1", (clip_id,))
    return row is not None and row["kind"] == "release.started"


def _record_release(store: Store, row: Any, info: DeviceInfo, *, recovered: bool) -> None:
    body = {"device_serial": info.serial, "path": row["path"], "sha256": row["sha256"]}
    if recovered:
        body["recovered"] = True
    with store.transaction() as tx:
        state = tx.clip(row["clip_id"])["state"]
        if state == S.DUPLICATE.value:
            # Its own record, naming the acknowledged clip whose bytes it holds; it stays
            # a duplicate (nothing of it is in the vault under its name).
            body["duplicate_of"] = row["duplicate_of"]
            tx.update_clip(row["clip_id"], released_at=now(), release_error=None)
            tx.log("release.duplicate", row["clip_id"], body)
        elif state == S.PURGED.value:
            # Purged from the vault before its camera came back: no state to move to,
            # the release is recorded beside the purge.
            body["after_purge"] = True
            tx.update_clip(row["clip_id"], released_at=now(), release_error=None)
            tx.log("release.after_purge", row["clip_id"], body)
        else:
            tx.transition(row["clip_id"], S.RELEASED, released_at=now(), release_error=None,
                          log_body=body)
        tx.event("clip.released", {"clip_id": row["clip_id"], **body})


def _precheck(device: Device, rec: Recording) -> Failure | None:
    """Why the camera's file is not worth hashing (gone, unreadable, changed), or None.

    Cheap (a stat by name); the check that counts is made by ``Device.release``
    on the file it deletes.
    """
    try:
        size, mtime = device.stat(rec)
    except RecordingMissingError as exc:
        return Failure(f"{GONE} ({exc})", alert=False)
    except DeviceError as exc:  # an I/O error, or the camera itself gone: not "deleted"
        return Failure(f"could not be checked on the camera: {exc}",
                       alert=not isinstance(exc, DeviceGoneError))
    if size != rec.size or mtime_ms(mtime) != mtime_ms(rec.mtime):
        return Failure(f"changed on the camera since it was copied (size {rec.size} -> "
                       f"{size})", alert=False)
    return None


_PURGE_LOCK = threading.Lock()


def purge(config: Config, store: Store, vault: Vault, *, at: float | None = None) -> list[str]:
    """Purge vault copies past retention, then more while under the low-water mark.

    Serialised: the housekeeping timer and dock workers (making room) may call it at once.
    """
    with _PURGE_LOCK:
        return _purge(config, store, vault, at)


def _purge(config: Config, store: Store, vault: Vault, at: float | None) -> list[str]:
    current = time.time() if at is None else at
    # With release = after-ack an acknowledged clip waits for its camera to come back;
    # only pressure on the disk purges it before that (the platform holds it anyway).
    after_ack = config.retention.release == "after-ack"
    rows = store.query("SELECT * FROM clips WHERE state IN (?, ?) ORDER BY acknowledged_at",
                       (S.ACKNOWLEDGED.value, S.RELEASED.value))
    keep = timedelta(days=config.retention.keep_days).total_seconds()
    low_water = config.retention.low_water_mb * 1024 * 1024
    thumbnails = Thumbnails(config.data_dir)
    purged = []
    for row in rows:
        acked = parse_rfc3339(row["acknowledged_at"]).timestamp()
        waiting_for_camera = after_ack and row["state"] == S.ACKNOWLEDGED.value
        if current - acked >= keep and not waiting_for_camera:
            reason = f"retention of {config.retention.keep_days:g} days passed"
        elif vault.free_bytes() < low_water:
            reason = f"free space under the low-water mark ({config.retention.low_water_mb} MB)"
        else:
            continue
        with _RELEASING_LOCK:
            if row["clip_id"] in _RELEASING:
                continue  # its camera copy is being deleted right now; purged after that
            # The thumbnail first (it is not evidence): a crash after it leaves a clip
            # without a picture, never a picture of a purged clip.
            thumbnails.discard(row["clip_id"])
            _purge_one(store, vault, row["clip_id"], row["sha256"], reason)
        purged.append(row["clip_id"])
    return purged


LIVE_STATES = ("copied", "sealed", "uploading", "uploaded", "acknowledged", "released",
               "quarantined")


def _shared(store: Store, sha256: str, clip_id: str) -> bool:
    """Whether another clip still needs the vault object (the same bytes)."""
    marks = ",".join("?" for _ in LIVE_STATES)
    row = store.query_one(f"SELECT 1 FROM clips WHERE sha256 = ? AND clip_id != ? AND state IN "
                          f"({marks})", (sha256, clip_id, *LIVE_STATES))
    return row is not None


def _purge_one(store: Store, vault: Vault, clip_id: str, sha256: str, reason: str) -> None:
    with store.transaction() as tx:
        clip = tx.clip(clip_id)
        if clip["state"] == S.PURGED.value:
            return
        if clip["state"] not in (S.ACKNOWLEDGED.value, S.RELEASED.value) or not clip["ack"]:
            raise AgentError(f"refusing to purge clip {clip_id} in state {clip['state']}")
        tx.transition(clip_id, S.PURGED, purged_at=now(),
                      log_body={"sha256": sha256, "reason": reason})
        tx.event("clip.purged", {"clip_id": clip_id, "sha256": sha256, "reason": reason})
    # After the commit: a crash in between leaves an orphan object, which
    # sweep_purged() removes at the next start; never a live clip without bytes.
    if not _shared(store, sha256, clip_id):
        vault.remove(sha256)
    log.info("clip %s purged from the vault: %s", clip_id, reason)


def sweep_purged(store: Store, vault: Vault) -> int:
    """Remove vault objects of purged clips left behind by a crash; returns how many."""
    removed = 0
    for row in store.query("SELECT clip_id, sha256 FROM clips WHERE state = 'purged'"):
        if vault.has(row["sha256"]) and not _shared(store, row["sha256"], row["clip_id"]):
            vault.remove(row["sha256"])
            removed += 1
    return removed
