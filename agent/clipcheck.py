"""After the copy: verify the vault copy, probe it, record it copied and seal it.

A dock session copies a recording into the vault and hands it here; while
the session copies the camera's next recording, the clip is checked twice
at once, and recorded when both are done:

    verify pool ──▶ read the vault object back from the disk, compare its SHA-256,
                    record the digest (a duplicate of a clip already held stops here) ─┐
    probe pool  ──▶ media probe (FFmpeg, in a child process) ────────────────────────────┤
                                                      both done: ``copied`` ──▶ sealed ◀─┘

Both pools are shared fairly by the docked cameras (agent/workpool.py): the
verify pool is small (disk-bound), the probe pool has one worker per core
(CPU-bound).  Running the two side by side rather than one after the other
halves the time from the last byte read to the seal, which is what an
officer waits for when every camera finishes at once.  A verify that fails
sends the clip back to ``discovered`` (its probe is dropped) and asks its
session to copy it again (:class:`SessionWork`), until
``ingest.change_retries`` is spent; then it is quarantined.  Every state
change is one transaction with its custody log entry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.alerts import Alerts
from agent.config import Config
from agent.dockreport import DockReport
from agent.errors import AgentError, IntegrityError, StoreError, StoreFullError
from agent.media.queue import ProbeQueue
from agent.progress import DockObserver
from agent.store import ClipState, Store
from agent.timeutil import now, parse_rfc3339, rfc3339
from agent.vault import Vault
from agent.workpool import Batch, FairPool
from drivers.base import DeviceInfo, Recording

log = logging.getLogger(__name__)
S = ClipState

# The media probe of a vault copy (path, clip id, name): the manifest's ``media`` object
# (or None) and flags.
Probe = Callable[[Path, str, str], tuple[dict[str, Any] | None, list[str]]]


@dataclass
class SessionWork:
    """What a dock session's copies hand on: the batch it waits for, clips to copy again."""

    batch: Batch
    again: list[tuple[str, Recording]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)  # clip id -> next attempt


@dataclass(frozen=True)
class Copied:
    """A recording whose bytes are in the vault under ``sha256``, not yet verified."""

    clip_id: str
    rec: Recording
    info: DeviceInfo
    handle: str
    final: Path
    sha256: str
    size: int
    existed: bool  # the vault held the object before this copy (and it read back intact)
    repaired: bool  # this copy replaced a damaged object
    attempt: int
    last_attempt: bool


class ClipChecker:
    """Verifies, probes, records and seals copied clips; thread-safe."""

    def __init__(self, config: Config, store: Store, vault: Vault, alerts: Alerts,
                 probe: Probe, probes: ProbeQueue, verifies: FairPool, *,
                 after_copy: Callable[[str], None] | None, observer: DockObserver,
                 thumbnail: Callable[[str, bool], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.alerts = alerts
        self.probe = probe
        self.probes = probes
        self.verifies = verifies
        self.after_copy = after_copy
        self.observer = observer
        # (clip id, keep): the probe's thumbnail is kept once the clip is recorded copied,
        # dropped when the clip ends any other way.
        self.thumbnail = thumbnail or (lambda _clip_id, _keep: None)

    def hand_over(self, clip: Copied, report: DockReport, work: SessionWork) -> None:
        """Queue ``clip``'s verify and probe, as part of its session's batch."""
        self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "verifying")
        checks = _Checks(clip, report)
        work.batch.add(self.verifies.submit(clip.handle,
                                            lambda: self._verify(checks, work)))
        self.probes.submit(lambda: self._probe(checks), key=clip.handle, batch=work.batch)

    # --- verify pool -----------------------------------------------------------------------

    def _verify(self, checks: _Checks, work: SessionWork) -> None:
        clip, report = checks.clip, checks.report
        try:
            verified = self._read_back(clip, report, work)
            if verified is not None:
                if self._record_sha256(clip, verified) is not None:
                    report.duplicates.append(clip.clip_id)
                    self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "done")
                    verified = None  # nothing more to record: the probe is not needed
                elif not checks.probed:
                    self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "probing")
        except AgentError as exc:
            self._failed(clip, report, exc)
            verified = None
        except Exception as exc:  # a defect: still reported, and the clip copied again
            log.exception("clip %s: the verify failed", clip.clip_id)
            self._failed(clip, report, _unexpected("verify", exc))
            verified = None
        if checks.verify_done(verified):
            self._record_and_seal(checks)
        elif checks.abandoned:
            self.thumbnail(clip.clip_id, False)

    # --- probe pool ------------------------------------------------------------------------

    def _probe(self, checks: _Checks) -> None:
        clip = checks.clip
        if checks.abandoned:
            return  # the verify failed already: the clip is copied again
        started = time.monotonic()
        try:
            media = self.probe(clip.final, clip.clip_id, clip.rec.name)
        except AgentError as exc:
            result: tuple[dict[str, Any] | None, list[str]] | AgentError = exc
        except Exception as exc:  # a defect: still reported, and the clip copied again
            log.exception("clip %s: the media probe failed", clip.clip_id)
            result = _unexpected("media probe", exc)
        else:
            result = media
        log.debug("clip %s: probed in %.2f s", clip.clip_id, time.monotonic() - started)
        if checks.probe_done(result):
            self._record_and_seal(checks)
        elif checks.abandoned:
            self.thumbnail(clip.clip_id, False)

    def _read_back(self, clip: Copied, report: DockReport, work: SessionWork) -> bool | None:
        """Whether the vault copy was read back and matched; None if it failed (handled)."""
        if not self.config.ingest.verify:
            return False
        if clip.existed and not clip.repaired:
            return True  # commit has just read the stored object back from the disk, intact
        started = time.monotonic()
        try:
            self.vault.verify(clip.sha256)
            log.debug("clip %s: vault copy verified in %.2f s", clip.clip_id,
                      time.monotonic() - started)
        except IntegrityError as exc:
            if not clip.existed:
                self.vault.remove(clip.sha256)
            self.alerts.send(clip.info.serial, "vault.verify_failed", str(exc))
            if clip.last_attempt:
                quarantine(self.store, clip.clip_id,
                           f"vault copy failed verification: {exc}", None)
                report.quarantined.append(clip.clip_id)
                self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "failed")
            else:
                back_to_discovered(self.store, clip.clip_id,
                                   f"vault copy failed verification: {exc}")
                work.attempts[clip.clip_id] = clip.attempt + 1
                work.again.append((clip.clip_id, clip.rec))
            return None
        return True

    def _record_sha256(self, clip: Copied, verified: bool) -> str | None:
        """Record the digest, or the clip as a duplicate; the clip it duplicates, if any.

        One transaction: two cameras holding the same bytes cannot both miss the other.
        """
        with self.store.transaction() as tx:
            dup = tx.one("SELECT clip_id FROM clips WHERE sha256 = ? AND clip_id != ? "
                         "AND state != ?", (clip.sha256, clip.clip_id, S.DUPLICATE.value))
            if dup is not None:
                tx.transition(clip.clip_id, S.DUPLICATE, sha256=clip.sha256, copied_at=now(),
                              verified=int(verified), duplicate_of=dup["clip_id"],
                              log_body={"sha256": clip.sha256,
                                        "duplicate_of": dup["clip_id"]})
                return str(dup["clip_id"])
            # Known before the probe ends, so a second copy of the same bytes is a duplicate.
            tx.update_clip(clip.clip_id, sha256=clip.sha256)
        return None

    def _failed(self, clip: Copied, report: DockReport, exc: AgentError) -> None:
        """The station's side failed (vault disk, database): say so, keep the clip for later."""
        self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "failed")
        if isinstance(exc, StoreFullError):
            # The clip stays copying; the next session copies it again (its bytes are kept).
            database_full(self.alerts, clip.info, report, exc)
            return
        report.errors.append(f"{clip.rec.path}: {exc}")
        self.alerts.send(clip.info.serial, "ingest.failed",
                         f"{clip.rec.path}: {exc.diagnostics()}")
        reset_if_copying(self.store, clip.clip_id, f"ingest failed: {exc}")

    # --- both done ------------------------------------------------------------------------

    def _record_and_seal(self, checks: _Checks) -> None:
        """Record the clip copied with its media facts, then seal it (the last check's thread)."""
        clip, report = checks.clip, checks.report
        try:
            if isinstance(checks.media, AgentError):
                raise checks.media
            assert checks.media is not None and checks.verified is not None
            self._record_copied(clip, checks.verified, checks.media)
        except AgentError as exc:
            self.thumbnail(clip.clip_id, False)
            self._failed(clip, report, exc)
            return
        self.thumbnail(clip.clip_id, True)  # before the seal: the screen lists sealed clips
        report.copied.append(clip.clip_id)
        self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "sealing")
        if self.after_copy is not None:
            try:
                self.after_copy(clip.clip_id)
            except AgentError as exc:
                # The copy is safe and verified in the vault; only sealing failed
                # (a busy store).  The checkpoint timer seals copied clips again.
                self.alerts.send(clip.info.serial, "seal.failed",
                                 f"clip {clip.clip_id} ({clip.rec.path}) is copied and "
                                 f"verified but not sealed yet: {exc.diagnostics()}; sealing "
                                 "is tried again within custody.checkpoint_interval_s")
        self.observer.clip_phase(clip.handle, clip.clip_id, clip.rec, "done")

    def _record_copied(self, clip: Copied, verified: bool,
                       media: tuple[dict[str, Any] | None, list[str]]) -> None:
        rec = clip.rec
        media_info, flags = media
        row = self.store.clip(clip.clip_id)
        offset = row["clock_offset_s"]
        all_flags = sorted(set(json.loads(row["flags"])) | set(flags)
                           | set(clock_flags(offset, self.config.media.max_clock_skew_s)))
        recorded_end = None
        if rec.recorded_start and media_info and media_info.get("duration_s"):
            start = parse_rfc3339(rec.recorded_start).timestamp()
            recorded_end = rfc3339(start + float(media_info["duration_s"]))
        with self.store.transaction() as tx:
            tx.transition(
                clip.clip_id, S.COPIED, sha256=clip.sha256, copied_at=now(),
                verified=int(verified),
                media=json.dumps(media_info) if media_info is not None else None,
                flags=json.dumps(all_flags), recorded_end=recorded_end,
                log_body={"sha256": clip.sha256, "size": clip.size, "verified": verified,
                          "flags": all_flags})


class _Checks:
    """The verify and the probe of one clip, run side by side: who finishes last records.

    ``verified`` None after the verify means there is nothing to record (the copy
    failed its verify, is a duplicate, or the station's side failed: handled there).
    """

    def __init__(self, clip: Copied, report: DockReport) -> None:
        self.clip, self.report = clip, report
        self.verified: bool | None = None
        self.media: tuple[dict[str, Any] | None, list[str]] | AgentError | None = None
        self.abandoned = False  # the verify found nothing to record: skip the probe
        self.probed = False
        self._left = 2
        self._lock = threading.Lock()

    def verify_done(self, verified: bool | None) -> bool:
        """The verify's outcome; True if the caller should record the clip now."""
        with self._lock:
            self.verified = verified
            self.abandoned = verified is None
            return self._finished()

    def probe_done(self, media: tuple[dict[str, Any] | None, list[str]] | AgentError) -> bool:
        """The probe's outcome; True if the caller should record the clip now."""
        with self._lock:
            self.media, self.probed = media, True
            return self._finished()

    def _finished(self) -> bool:
        self._left -= 1
        return self._left == 0 and not self.abandoned


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


def _unexpected(check: str, exc: Exception) -> StoreError:
    """An error no check expects, as the station-side failure it is (never a silent clip)."""
    return StoreError(f"the {check} failed: {type(exc).__name__}: {exc}")
