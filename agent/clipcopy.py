"""Copying one recording into the vault, and the clip states that copy moves through.

    discovered ─▶ copying ─▶ copied ─▶ (sealed, by the custody sealer)
                   │  ├──▶ discovered   device removed mid-copy: partial discarded,
                   │  │                 resumes on the next dock
                   │  ├──▶ duplicate    the same bytes are already in the vault
                   │  └──▶ quarantined  kept changing after retries, or unreadable

A file that changes while it is read (size, mtime, or a short read) is read
again, up to ``ingest.change_retries`` times; what the last attempt read is
kept and quarantined.  A copy that is whole is moved into the vault and
handed to the checks (agent/clipcheck.py: verify, probe, record ``copied``,
seal) while the session copies the next recording.  Every state change is
one transaction with its custody log entry.

Many cameras copy at once (one dock session each): their blocks come from
the vault's one :class:`~agent.blockbudget.BlockBudget`, and the vault's free
space is shared by reserving each recording's size while it is copied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from agent.alerts import Alerts
from agent.clipcheck import (
    ClipChecker,
    Copied,
    SessionWork,
    back_to_discovered,
    database_full,
    quarantine,
    reset_if_copying,
)
from agent.config import Config
from agent.dockreport import DockReport
from agent.errors import AgentError, Cancelled, DeviceError, DeviceGoneError
from agent.ingest import copy_to_vault
from agent.logsetup import log_fields
from agent.progress import DockObserver, NullObserver
from agent.store import ClipState, Store
from agent.timeutil import rfc3339
from agent.vault import Vault
from drivers.base import Device, DeviceInfo, Recording

__all__ = ["ClipCopier", "SessionWork", "back_to_discovered", "database_full", "mtime_ms",
           "quarantine", "reset_if_copying"]

log = logging.getLogger(__name__)
S = ClipState

Outcome = Literal["handed_over", "quarantined"]


def mtime_ms(value: float) -> int:
    return round(value * 1000)


class ClipCopier:
    """Copies recordings of a device its caller owns; thread-safe across devices."""

    def __init__(self, config: Config, store: Store, vault: Vault, alerts: Alerts,
                 checker: ClipChecker, *, stopping: threading.Event,
                 observer: DockObserver | None = None) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.alerts = alerts
        self.checker = checker
        self.stopping = stopping
        self.observer: DockObserver = observer or NullObserver()  # the station's screen
        self._reserved = 0  # bytes of the recordings being copied now, all cameras
        self._reserved_lock = threading.Lock()

    def copy(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
             report: DockReport, work: SessionWork) -> None:
        """Copy a discovered clip, retrying while the file changes; the outcome goes to ``report``.

        A whole copy is handed to the checks, which record it in ``report.copied``
        (or ``duplicates``) and may ask for another copy in ``work.again``.  Raises
        DeviceGoneError / Cancelled (the clip is back to ``discovered``) and
        AgentError for the station's side (vault disk, database).
        """
        with log_fields(clip_id=clip_id):
            self._copy(device, info, clip_id, rec, report, work)

    def _copy(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
              report: DockReport, work: SessionWork) -> None:
        retries = self.config.ingest.change_retries
        for attempt in range(work.attempts.pop(clip_id, 0), retries + 1):
            last = attempt == retries
            outcome = self._copy_once(device, info, clip_id, rec, report, work,
                                      attempt=attempt, last_attempt=last)
            if outcome == "handed_over":
                log.info("clip %s: %r copied (%d bytes)", clip_id, rec.path, rec.size)
                return  # verified, probed and recorded on the check workers
            if outcome == "quarantined":
                self.observer.clip_phase(device.handle, clip_id, rec, "failed")
                report.quarantined.append(clip_id)
                return
            # "retry": the file changed or a read failed; try again.

    def free_for(self, size: int) -> int:
        """Free vault bytes left if a recording of ``size`` were copied beside those running."""
        with self._reserved_lock:
            return self.vault.free_bytes() - self._reserved - size

    @contextmanager
    def _reserving(self, size: int) -> Iterator[None]:
        """Count ``size`` as taken while it is copied (it is on the disk once committed)."""
        with self._reserved_lock:
            self._reserved += size
        try:
            yield
        finally:
            with self._reserved_lock:
                self._reserved -= size

    def _copy_once(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
                   report: DockReport, work: SessionWork, *, attempt: int,
                   last_attempt: bool) -> Outcome | Literal["retry"]:
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
            with self._reserving(before[0]):
                started = time.monotonic()
                with device.open(rec) as stream:
                    result = copy_to_vault(
                        stream, temp, chunk_size=ingest.chunk_kib * 1024,
                        queue_chunks=ingest.queue_chunks, cancel=self.stopping,
                        budget=self.vault.budget,
                        progress=lambda n: self.observer.clip_bytes(device.handle, clip_id, n))
                log.debug("clip %s: %d bytes copied in %.2f s", clip_id, result.size,
                          time.monotonic() - started)
                after = device.stat(rec)
                changed = _changes(before, after, result.size)
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
                copied = self._commit(temp, result.sha256, result.size, clip_id, info, rec,
                                      device.handle, attempt=attempt, last_attempt=last_attempt)
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
        self.checker.hand_over(copied, report, work)
        return "handed_over"

    def _commit(self, temp: Path, sha256: str, size: int, clip_id: str, info: DeviceInfo,
                rec: Recording, handle: str, *, attempt: int, last_attempt: bool) -> Copied:
        """Move the copy into the vault (durably); what the checks need to know of it."""
        existed = self.vault.has(sha256)
        repairs: list[Path] = []

        def repaired(aside: Path) -> None:
            repairs.append(aside)
            self.alerts.send(info.serial, "vault.repaired",
                             f"vault object {sha256} no longer held its bytes; the copy of clip "
                             f"{clip_id} ({rec.path}) replaced it, the damaged file is kept at "
                             f"{aside}")

        final = self.vault.commit(temp, sha256, on_repair=repaired)
        return Copied(clip_id=clip_id, rec=rec, info=info, handle=handle, final=final,
                      sha256=sha256, size=size, existed=existed, repaired=bool(repairs),
                      attempt=attempt, last_attempt=last_attempt)

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


def _changes(before: tuple[int, float], after: tuple[int, float], read: int) -> list[str]:
    """How a file changed while it was copied (size, mtime, bytes read); empty if it did not."""
    return [what for what, ok in (
        (f"{read} bytes read of {before[0]}", read == before[0]),
        (f"size {before[0]} -> {after[0]} during the copy", after[0] == before[0]),
        ("mtime changed during the copy", mtime_ms(after[1]) == mtime_ms(before[1])),
    ) if not ok]
