"""Copying one recording into the vault, and the clip states that copy moves through.

    discovered ─▶ copying ─▶ copied ─▶ (sealed, by the custody sealer)
                   │  ├──▶ discovered   device removed mid-copy: partial discarded,
                   │  │                 resumes on the next dock
                   │  ├──▶ duplicate    the same bytes are already in the vault
                   │  └──▶ quarantined  kept changing after retries, or unreadable

A file that changes while it is read (size, mtime, or a short read) is read
again, up to ``ingest.change_retries`` times; what the last attempt read is
kept and quarantined.  A copy that is whole goes to the probe queue
(agent/media/queue.py), whose worker probes it, records it ``copied`` with
its media facts and seals it while the session copies the next recording.
Every state change is one transaction with its custody log entry.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from agent.alerts import Alerts
from agent.config import Config
from agent.dockreport import DockReport
from agent.errors import (
    AgentError,
    Cancelled,
    DeviceError,
    DeviceGoneError,
    IntegrityError,
    StoreError,
    StoreFullError,
)
from agent.ingest import copy_to_vault
from agent.logsetup import log_fields
from agent.media.queue import ProbeQueue
from agent.progress import DockObserver, NullObserver
from agent.store import ClipState, Store
from agent.timeutil import now, parse_rfc3339, rfc3339
from agent.vault import Vault
from drivers.base import Device, DeviceInfo, Recording

log = logging.getLogger(__name__)
S = ClipState

Outcome = Literal["copied", "duplicate", "quarantined"]
# The media probe of a vault copy (path, clip id, name): the manifest's ``media`` object
# (or None) and flags.
Probe = Callable[[Path, str, str], tuple[dict[str, Any] | None, list[str]]]


def mtime_ms(value: float) -> int:
    return round(value * 1000)


class ClipCopier:
    """Copies recordings of a device its caller owns; thread-safe across devices."""

    def __init__(self, config: Config, store: Store, vault: Vault, alerts: Alerts,
                 probe: Probe, probes: ProbeQueue, *, after_copy: Callable[[str], None] | None,
                 stopping: threading.Event, observer: DockObserver | None = None) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.alerts = alerts
        self.probe = probe
        self.probes = probes
        self.after_copy = after_copy
        self.stopping = stopping
        self.observer: DockObserver = observer or NullObserver()  # the station's screen

    def copy(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
             report: DockReport) -> None:
        """Copy a discovered clip, retrying while the file changes; the outcome goes to ``report``.

        A whole copy is recorded in ``report.copied`` by the probe worker.  Raises
        DeviceGoneError / Cancelled (the clip is back to ``discovered``) and
        AgentError for the station's side (vault disk, database).
        """
        with log_fields(clip_id=clip_id):
            self._copy(device, info, clip_id, rec, report)

    def _copy(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
              report: DockReport) -> None:
        retries = self.config.ingest.change_retries
        for attempt in range(retries + 1):
            last = attempt == retries
            outcome = self._copy_once(device, info, clip_id, rec, report, last_attempt=last)
            if outcome in ("duplicate", "quarantined"):
                self.observer.clip_phase(device.handle, clip_id, rec,
                                         "done" if outcome == "duplicate" else "failed")
            if outcome == "copied":
                log.info("clip %s: %r copied (%d bytes)", clip_id, rec.path, rec.size)
                return  # recorded and sealed by _probe_and_record, on the probe worker
            if outcome == "duplicate":
                report.duplicates.append(clip_id)
                return
            if outcome == "quarantined":
                report.quarantined.append(clip_id)
                return
            # "retry": the file changed or a read failed; try again.

    def _copy_once(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
                   report: DockReport, *, last_attempt: bool) -> Outcome | Literal["retry"]:
        ingest = self.config.ingest
        with self.store.transaction() as tx:
            attempts = int(tx.clip(clip_id)["copy_attempts"]) + 1
            tx.transition(clip_id, S.COPYING, copy_attempts=attempts,
                          log_body={"attempt": attempts})
        temp = self.vault.temp_path(clip_id)
        self.vault.discard(temp)  # a leftover from an earlier attempt in this process
        self.observer.clip_phase(device.handle, clip_id, rec, "copying")
        try:
            before = device.stat(rec)
            self._note_change_since_listing(clip_id, rec, before)
            with device.open(rec) as stream:
                result = copy_to_vault(
                    stream, temp, chunk_size=ingest.chunk_kib * 1024,
                    queue_chunks=ingest.queue_chunks, cancel=self.stopping,
                    progress=lambda n: self.observer.clip_bytes(device.handle, clip_id, n))
            after = device.stat(rec)
        except DeviceGoneError as exc:
            self.vault.discard(temp)
            back_to_discovered(self.store, clip_id, f"device removed during copy: {exc}")
            raise
        except Cancelled:
            self.vault.discard(temp)
            back_to_discovered(self.store, clip_id,
                               "agent stopping; copied again at the next dock")
            raise
        except DeviceError as exc:
            self.vault.discard(temp)
            if last_attempt:
                quarantine(self.store, clip_id, f"unreadable on the device: {exc}", None)
                return "quarantined"
            back_to_discovered(self.store, clip_id, f"read failed, retrying: {exc}")
            return "retry"
        except AgentError:
            self.vault.discard(temp)
            raise
        changed = [
            what for what, ok in (
                (f"{result.size} bytes read of {before[0]}", result.size == before[0]),
                (f"size {before[0]} -> {after[0]} during the copy", after[0] == before[0]),
                ("mtime changed during the copy", mtime_ms(after[1]) == mtime_ms(before[1])),
            ) if not ok
        ]
        if changed:
            reason = "file changed while being copied: " + "; ".join(changed)
            if not last_attempt:
                self.vault.discard(temp)
                back_to_discovered(self.store, clip_id, reason + "; retrying")
                return "retry"
            # Keep what was read: it is evidence too.  The clip is quarantined with it.
            self.vault.commit(temp, result.sha256)
            quarantine(self.store, clip_id, reason, result.sha256)
            return "quarantined"
        self.observer.clip_phase(device.handle, clip_id, rec, "verifying")
        return self._store_copy(clip_id, temp, result.sha256, result.size, info, rec, report,
                                last_attempt=last_attempt, handle=device.handle)

    def _note_change_since_listing(self, clip_id: str, rec: Recording,
                                   current: tuple[int, float]) -> None:
        """A file that changed between listing and copy is copied as it is now, and logged."""
        row = self.store.clip(clip_id)
        if (row["size"], row["mtime_ms"]) == (current[0], mtime_ms(current[1])):
            return
        with self.store.transaction() as tx:
            tx.update_clip(clip_id, size=current[0], mtime_ms=mtime_ms(current[1]))
            tx.log("clip.changed_on_device", clip_id, {
                "size": [row["size"], current[0]],
                "mtime": [rfc3339(row["mtime_ms"] / 1000), rfc3339(current[1])]})

    def _store_copy(self, clip_id: str, temp: Any, sha256: str, size: int, info: DeviceInfo,
                    rec: Recording, report: DockReport, *, last_attempt: bool,
                    handle: str = "") -> Outcome | Literal["retry"]:
        existed = self.vault.has(sha256)
        repairs: list[Path] = []

        def repaired(aside: Path) -> None:
            repairs.append(aside)
            self.alerts.send(info.serial, "vault.repaired",
                             f"vault object {sha256} no longer held its bytes; the copy of clip "
                             f"{clip_id} ({rec.path}) replaced it, the damaged file is kept at "
                             f"{aside}")

        final = self.vault.commit(temp, sha256, on_repair=repaired)
        verified = False
        if self.config.ingest.verify:
            try:
                if not existed or repairs:
                    self.vault.verify(sha256)
                # else: commit has just read the stored object back from the disk, intact.
                verified = True
            except IntegrityError as exc:
                if not existed:
                    self.vault.remove(sha256)
                self.alerts.send(info.serial, "vault.verify_failed", str(exc))
                if last_attempt:
                    quarantine(self.store, clip_id,
                               f"vault copy failed verification: {exc}", None)
                    return "quarantined"
                back_to_discovered(self.store, clip_id,
                                   f"vault copy failed verification: {exc}")
                return "retry"
        dup = self.store.query_one(
            "SELECT clip_id FROM clips WHERE sha256 = ? AND clip_id != ? AND state != ?",
            (sha256, clip_id, S.DUPLICATE.value))
        if dup is not None:
            with self.store.transaction() as tx:
                tx.transition(clip_id, S.DUPLICATE, sha256=sha256, copied_at=now(),
                              verified=int(verified), duplicate_of=dup["clip_id"],
                              log_body={"sha256": sha256, "duplicate_of": dup["clip_id"]})
            return "duplicate"
        with self.store.transaction() as tx:
            # Known before the probe ends, so a second copy of the same bytes is a duplicate.
            tx.update_clip(clip_id, sha256=sha256)
        self.probes.submit(lambda: self._probe_and_record(clip_id, final, sha256, size,
                                                          verified, info, rec, report, handle))
        return "copied"

    def _probe_and_record(self, clip_id: str, final: Path, sha256: str, size: int,
                          verified: bool, info: DeviceInfo, rec: Recording,
                          report: DockReport, handle: str = "") -> None:
        """Probe the vault copy, record the clip copied with its media facts, then seal it."""
        self.observer.clip_phase(handle, clip_id, rec, "probing")
        try:
            self._record_copied(clip_id, final, sha256, size, verified, rec)
        except StoreFullError as exc:
            # The clip stays copying; the next session copies it again (its bytes are kept).
            self.observer.clip_phase(handle, clip_id, rec, "failed")
            database_full(self.alerts, info, report, exc)
            return
        except AgentError as exc:
            self.observer.clip_phase(handle, clip_id, rec, "failed")
            report.errors.append(f"{rec.path}: {exc}")
            self.alerts.send(info.serial, "ingest.failed", f"{rec.path}: {exc.diagnostics()}")
            reset_if_copying(self.store, clip_id, f"ingest failed: {exc}")
            return
        report.copied.append(clip_id)
        self.observer.clip_phase(handle, clip_id, rec, "sealing")
        if self.after_copy is not None:
            try:
                self.after_copy(clip_id)
            except AgentError as exc:
                # The copy is safe and verified in the vault; only sealing failed
                # (a busy store).  The checkpoint timer seals copied clips again.
                self.alerts.send(info.serial, "seal.failed",
                                 f"clip {clip_id} ({rec.path}) is copied and verified but "
                                 f"not sealed yet: {exc.diagnostics()}; sealing is tried "
                                 "again within custody.checkpoint_interval_s")
        self.observer.clip_phase(handle, clip_id, rec, "done")

    def _record_copied(self, clip_id: str, final: Path, sha256: str, size: int,
                       verified: bool, rec: Recording) -> None:
        media_info, flags = self.probe(final, clip_id, rec.name)
        row = self.store.clip(clip_id)
        offset = row["clock_offset_s"]
        all_flags = sorted(set(json.loads(row["flags"])) | set(flags)
                           | set(clock_flags(offset, self.config.media.max_clock_skew_s)))
        recorded_end = None
        if rec.recorded_start and media_info and media_info.get("duration_s"):
            start = parse_rfc3339(rec.recorded_start).timestamp()
            recorded_end = rfc3339(start + float(media_info["duration_s"]))
        with self.store.transaction() as tx:
            tx.transition(
                clip_id, S.COPIED, sha256=sha256, copied_at=now(), verified=int(verified),
                media=json.dumps(media_info) if media_info is not None else None,
                flags=json.dumps(all_flags), recorded_end=recorded_end,
                log_body={"sha256": sha256, "size": size, "verified": verified,
                          "flags": all_flags})


def clock_flags(offset: float | None, max_skew_s: float) -> list[str]:
    if offset is not None and abs(offset) > max_skew_s:
        return ["clock.skew"]
    return []


# --- clip states a copy ends in -----------------------------------------------------------

def back_to_discovered(store: Store, clip_id: str, reason: str) -> None:
    log.warning("clip %s: %s", clip_id, reason)
    with store.transaction() as tx:
        tx.transition(clip_id, S.DISCOVERED, log_body={"reason": reason})


def database_full(alerts: Alerts, info: DeviceInfo, report: DockReport,
                  exc: StoreFullError) -> None:
    """The database's disk is full: nothing more can be recorded, so ingest stops.

    What was copied is safe (each clip is one transaction); the rest stays on
    the camera, and the station resumes this camera once there is room.
    """
    message = (f"disk full: the station database cannot be written ({exc}); ingest "
               f"stopped, the recordings stay on {info.serial}")
    report.errors.append(message)
    report.stopped_full = "database"
    alerts.send(info.serial, "disk.full", message)


def reset_if_copying(store: Store, clip_id: str, reason: str) -> None:
    """Back to ``discovered`` if a failure on the station's side left the clip ``copying``."""
    try:
        with store.transaction() as tx:
            if tx.clip(clip_id)["state"] == S.COPYING.value:
                tx.transition(clip_id, S.DISCOVERED, log_body={"reason": reason})
    except StoreError:
        log.exception("clip %s stays copying; start-up recovery resets it", clip_id)


def quarantine(store: Store, clip_id: str, reason: str, sha256: str | None) -> None:
    log.error("clip %s quarantined: %s", clip_id, reason)
    with store.transaction() as tx:
        fields: dict[str, Any] = {"reason": reason}
        if sha256 is not None:
            fields.update(sha256=sha256, copied_at=now())
        tx.transition(clip_id, S.QUARANTINED, log_body={"reason": reason, "sha256": sha256},
                      **fields)
        tx.event("alert", {"code": "clip.quarantined", "clip_id": clip_id,
                           "message": reason})
