"""A dock session: identify a docked device, register its recordings, copy each into the vault.

One worker thread owns a device for the whole session.  For each recording:

    discovered ─▶ copying ─▶ copied ─▶ (sealed, by the custody sealer)
                   │  ├──▶ discovered   device removed mid-copy: partial discarded,
                   │  │                 resumes on the next dock
                   │  ├──▶ duplicate    the same bytes are already in the vault
                   │  └──▶ quarantined  kept changing after retries, or unreadable

A recording already known (same device serial, path, size and mtime) is not
copied again, unless it was quarantined before it was sealed: then the next
dock tries it again (the bytes kept from before stay in the vault).  Every
step is a custody log entry in the same transaction as the state change.
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

from agent import media
from agent.config import Config
from agent.errors import (
    AgentError,
    Cancelled,
    DeviceError,
    DeviceGoneError,
    IntegrityError,
    StoreError,
)
from agent.ingest import copy_to_vault
from agent.media.queue import ProbeQueue
from agent.store import ClipState, Store
from agent.timeutil import now, parse_rfc3339, rfc3339, uuid7
from agent.vault import Vault
from drivers.base import Device, DeviceInfo, Recording, Skipped
from drivers.paths import unsafe_reason

log = logging.getLogger(__name__)
S = ClipState


@dataclass
class DockReport:
    """What happened during one dock session: shown to people, stored with the dock."""

    handle: str
    serial: str = ""
    model: str = ""
    officer_id: str = ""
    docked_at: str = field(default_factory=now)
    recordings: int = 0
    new: int = 0
    already_ingested: int = 0
    copied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # may hide recordings
    errors: list[str] = field(default_factory=list)
    clock_offset_s: float | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.quarantined or self.interrupted or self.unreadable)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Skip reasons (drivers/volume.py) that mean "could not look", not "not a recording".
UNREADABLE_REASONS = ("unreadable directory", "cannot stat")


def mtime_ms(value: float) -> int:
    return round(value * 1000)


class Offloader:
    """Runs dock sessions.  Thread-safe: each call works on its own device."""

    def __init__(self, config: Config, store: Store, vault: Vault,
                 after_copy: Callable[[str], None] | None = None,
                 before_listing: Callable[[Device, DeviceInfo], None] | None = None,
                 make_room: Callable[[], object] | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.after_copy = after_copy
        self.before_listing = before_listing
        self.make_room = make_room
        self.stopping = stopping or threading.Event()
        self._serial_locks: dict[str, threading.Lock] = {}
        self._serial_locks_guard = threading.Lock()
        # Copied clips are probed here while the session copies the next recording.
        self.probes = ProbeQueue()

    # --- the session ---------------------------------------------------------------------

    def offload(self, device: Device) -> DockReport:
        report = DockReport(handle=device.handle)
        try:
            info = device.identify()
        except AgentError as exc:
            report.errors.append(f"identify failed: {exc}")
            self._alert(None, "device.unidentified", f"{device.handle}: {exc}")
            return report
        report.serial, report.model, report.officer_id = info.serial, info.model, info.officer_id
        report.clock_offset_s = _clock_offset(info)
        # One session per camera, whatever handle it came under: a camera re-plugged while
        # its old mount lingers shows up twice, and two sessions would copy the same clips.
        with self._serial_locks_guard:
            serial_lock = self._serial_locks.setdefault(info.serial, threading.Lock())
        with serial_lock:
            return self._session(device, info, report)

    def _session(self, device: Device, info: DeviceInfo, report: DockReport) -> DockReport:
        dock_id = self._record_dock(device, info, report)
        try:
            if self.before_listing is not None:
                self.before_listing(device, info)
            with self.probes.batch():  # the session ends once its clips are probed
                self._ingest_all(device, info, dock_id, report)
        except DeviceGoneError as exc:
            report.errors.append(f"device removed: {exc}")
            log.warning("%s removed during offload: %s", info.serial, exc)
        except Cancelled as exc:
            report.errors.append(str(exc))
        except DeviceError as exc:
            report.errors.append(str(exc))
            self._alert(info.serial, "device.error", str(exc))
        if not report.errors and device.present():
            self._sync_clock(device, info, report)
        with self.store.transaction() as tx:
            tx.execute("UPDATE docks SET report = ? WHERE id = ?",
                       (json.dumps(report.as_dict(), ensure_ascii=False), dock_id))
        return report

    def _record_dock(self, device: Device, info: DeviceInfo, report: DockReport) -> int:
        at = report.docked_at
        with self.store.transaction() as tx:
            tx.execute(
                """INSERT INTO devices (serial, driver, vendor, model, firmware, officer_id,
                       officer_name, unit_code, unit_name, usb_id, clock_offset_s, first_seen,
                       last_seen, docked_handle)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT (serial) DO UPDATE SET driver=excluded.driver,
                       vendor=excluded.vendor, model=excluded.model, firmware=excluded.firmware,
                       officer_id=excluded.officer_id, officer_name=excluded.officer_name,
                       unit_code=excluded.unit_code, unit_name=excluded.unit_name,
                       usb_id=excluded.usb_id, clock_offset_s=excluded.clock_offset_s,
                       last_seen=excluded.last_seen, docked_handle=excluded.docked_handle""",
                (info.serial, info.driver, info.vendor, info.model, info.firmware,
                 info.officer_id, info.officer_name, info.unit_code, info.unit_name,
                 info.usb_id, report.clock_offset_s, at, at, device.handle))
            cur = tx.execute("INSERT INTO docks (device_serial, handle, docked_at) VALUES (?,?,?)",
                             (info.serial, device.handle, at))
            dock_id = int(cur.lastrowid or 0)
            body = device_body(info)
            body.update({"handle": device.handle, "dock_id": dock_id,
                         "clock_offset_s": report.clock_offset_s})
            tx.log("device.docked", None, body)
            tx.event("device.docked", body)
        return dock_id

    def _ingest_all(self, device: Device, info: DeviceInfo, dock_id: int,
                    report: DockReport) -> None:
        listing = device.recordings()
        recordings = []
        for rec in listing.recordings:
            # Defence in depth: a driver should never list these, and the name is never
            # used as a local path, but such an entry is reported rather than copied.
            reason = unsafe_reason(rec.path)
            if reason is not None:
                listing.skipped.append(Skipped(rec.path, f"unsafe name: {reason}"))
            else:
                recordings.append(rec)
        report.recordings = len(recordings)
        report.skipped = [{"path": s.path, "reason": s.reason} for s in listing.skipped]
        if listing.skipped:
            with self.store.transaction() as tx:
                tx.log("device.skipped", None, {"serial": info.serial, "entries": report.skipped})
            for s in listing.skipped:
                log.warning("%s: skipped %r: %s", info.serial, s.path, s.reason)
        # Symlinks, special files and other types are skipped on purpose; an entry that
        # could not be read at all may hold recordings nobody else will see: say so.
        report.unreadable = [entry for entry in report.skipped
                             if entry["reason"].startswith(UNREADABLE_REASONS)]
        if report.unreadable:
            shown = "; ".join(f"{e['path']}: {e['reason']}" for e in report.unreadable[:10])
            more = len(report.unreadable) - 10
            self._alert(info.serial, "device.unreadable",
                        f"{len(report.unreadable)} "
                        f"{'entry' if len(report.unreadable) == 1 else 'entries'} on "
                        f"{info.serial} could not be read and may hold recordings: {shown}"
                        + (f" (and {more} more)" if more > 0 else ""))
        todo: list[tuple[str, Recording]] = []
        # Important clips first: if the officer undocks early, those are already safe.
        for rec in sorted(recordings, key=lambda r: (not r.important, r.path)):
            clip_id = self._register(info, rec, dock_id, report)
            if clip_id is not None:
                todo.append((clip_id, rec))
        for index, (clip_id, rec) in enumerate(todo):
            if self.stopping.is_set():
                report.errors.append(f"agent stopping: {len(todo) - index} recordings left "
                                     "for the next dock")
                return
            if not self._room_for(rec, info, report):
                return
            try:
                self._copy_with_retries(device, info, clip_id, rec, report)
            except (DeviceError, Cancelled):
                raise
            except AgentError as exc:
                # The station's side failed (vault disk, database): say so, keep the clip
                # discoverable, and go on with the next one.
                report.errors.append(f"{rec.path}: {exc}")
                self._alert(info.serial, "ingest.failed", f"{rec.path}: {exc.diagnostics()}")
                self._reset_if_copying(clip_id, f"ingest failed: {exc}")

    def _register(self, info: DeviceInfo, rec: Recording, dock_id: int,
                  report: DockReport) -> str | None:
        """Find or create the clip row for a recording; None if it needs no copy."""
        identity = (info.serial, rec.path, rec.size, mtime_ms(rec.mtime))
        with self.store.transaction() as tx:
            row = tx.one("SELECT clip_id, state, manifest FROM clips WHERE device_serial = ? "
                         "AND path = ? AND size = ? AND mtime_ms = ?", identity)
            if row is not None:
                state = ClipState(row["state"])
                if state == S.COPYING or (state == S.QUARANTINED and row["manifest"] is None):
                    # A copy that died with its session (one agent per data_dir: no other
                    # owner), or a clip quarantined before it was sealed (unreadable, or
                    # read short or changing last time) whose file is the same again:
                    # try again.  The bytes kept from last time stay in the vault.
                    tx.transition(row["clip_id"], S.DISCOVERED, log_body={
                        "reason": f"retried on a later dock (was {state.value})"})
                    state = S.DISCOVERED
                if state == S.DISCOVERED:
                    tx.update_clip(row["clip_id"], dock_id=dock_id, docked_at=report.docked_at)
                    return str(row["clip_id"])
                report.already_ingested += 1
                return None
            clip_id = uuid7()
            flags = list(rec.name_flags)
            if rec.size == 0:
                flags.append("file.empty")
            # The identity is fixed now: a later docking (another officer) never changes it.
            tx.execute(
                """INSERT INTO clips (clip_id, device_serial, path, name, size, mtime_ms, state,
                       flags, recorded_start, important, officer_id, officer_name, unit_code,
                       unit_name, device_vendor, device_model, device_firmware,
                       clock_offset_s, dock_id, docked_at, discovered_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (clip_id, *identity[:2], rec.name, rec.size, identity[3], S.DISCOVERED.value,
                 json.dumps(flags), rec.recorded_start, int(rec.important), info.officer_id,
                 info.officer_name, info.unit_code, info.unit_name, info.vendor, info.model,
                 info.firmware, report.clock_offset_s, dock_id, report.docked_at, now(),
                 now()))
            tx.log("clip.discovered", clip_id, {
                "device_serial": info.serial, "path": rec.path, "size": rec.size,
                "mtime": rfc3339(rec.mtime), "important": rec.important, "flags": flags})
        report.new += 1
        return clip_id

    def _room_for(self, rec: Recording, info: DeviceInfo, report: DockReport) -> bool:
        """Whether the vault has room for ``rec`` above the reserve; purges first if it can.

        When the disk is full of clips the platform has not acknowledged, ingest
        stops: the recordings stay on the camera (nothing is lost) and an alert says so.
        """
        reserve = self.config.ingest.min_free_mb * 1024 * 1024
        if self.vault.free_bytes() - rec.size >= reserve:
            return True
        if self.make_room is not None:
            self.make_room()
            if self.vault.free_bytes() - rec.size >= reserve:
                return True
        message = (f"disk full: {self.vault.free_bytes() // 2**20} MB free in the vault, "
                   f"{rec.size // 2**20} MB needed above the reserve of "
                   f"{self.config.ingest.min_free_mb} MB (ingest.min_free_mb); ingest stopped, "
                   f"the recordings stay on {info.serial}")
        report.errors.append(message)
        self._alert(info.serial, "disk.full", message)
        return False

    # --- one clip ------------------------------------------------------------------------

    def _copy_with_retries(self, device: Device, info: DeviceInfo, clip_id: str,
                           rec: Recording, report: DockReport) -> None:
        retries = self.config.ingest.change_retries
        for attempt in range(retries + 1):
            last = attempt == retries
            outcome = self._copy_once(device, info, clip_id, rec, report, last_attempt=last)
            if outcome == "copied":
                return  # recorded and sealed by _probe_and_record, on the probe worker
            if outcome == "duplicate":
                report.duplicates.append(clip_id)
                return
            if outcome == "quarantined":
                report.quarantined.append(clip_id)
                return
            # "retry": the file changed or a read failed; try again.

    def _copy_once(self, device: Device, info: DeviceInfo, clip_id: str, rec: Recording,
                   report: DockReport, *, last_attempt: bool) -> str:
        ingest = self.config.ingest
        with self.store.transaction() as tx:
            attempts = int(tx.clip(clip_id)["copy_attempts"]) + 1
            tx.transition(clip_id, S.COPYING, copy_attempts=attempts,
                          log_body={"attempt": attempts})
        temp = self.vault.temp_path(clip_id)
        self.vault.discard(temp)  # a leftover from an earlier attempt in this process
        try:
            before = device.stat(rec)
            self._note_change_since_listing(clip_id, rec, before)
            with device.open(rec) as stream:
                result = copy_to_vault(stream, temp, chunk_size=ingest.chunk_kib * 1024,
                                       queue_chunks=ingest.queue_chunks, cancel=self.stopping)
            after = device.stat(rec)
        except DeviceGoneError as exc:
            self.vault.discard(temp)
            self._back_to_discovered(clip_id, f"device removed during copy: {exc}")
            raise
        except Cancelled:
            self.vault.discard(temp)
            self._back_to_discovered(clip_id, "agent stopping; copied again at the next dock")
            raise
        except DeviceError as exc:
            self.vault.discard(temp)
            if last_attempt:
                self._quarantine(clip_id, f"unreadable on the device: {exc}", None)
                return "quarantined"
            self._back_to_discovered(clip_id, f"read failed, retrying: {exc}")
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
                self._back_to_discovered(clip_id, reason + "; retrying")
                return "retry"
            # Keep what was read: it is evidence too.  The clip is quarantined with it.
            self.vault.commit(temp, result.sha256)
            self._quarantine(clip_id, reason, result.sha256)
            return "quarantined"
        return self._store_copy(clip_id, temp, result.sha256, result.size, info, rec, report,
                                last_attempt=last_attempt)

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
                    rec: Recording, report: DockReport, *, last_attempt: bool) -> str:
        existed = self.vault.has(sha256)
        repairs: list[Path] = []

        def repaired(aside: Path) -> None:
            repairs.append(aside)
            self._alert(info.serial, "vault.repaired",
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
                self._alert(info.serial, "vault.verify_failed", str(exc))
                if last_attempt:
                    self._quarantine(clip_id, f"vault copy failed verification: {exc}", None)
                    return "quarantined"
                self._back_to_discovered(clip_id, f"vault copy failed verification: {exc}")
                return "retry"
        dup = self.store.query_one(
            "SELECT clip_id FROM clips WHERE sha256 = ? AND clip_id != ? AND state != ?",
            (sha256, clip_id, S.DUPLICATE.value))
        if dup is not None:
            with self.store.transaction() as tx:
                tx.transition(clip_id, S.DUPLICATE, sha256=sha256, copied_at=now(),
                              verified=int(verified),
                              log_body={"sha256": sha256, "duplicate_of": dup["clip_id"]})
            return "duplicate"
        with self.store.transaction() as tx:
            # Known before the probe ends, so a second copy of the same bytes is a duplicate.
            tx.update_clip(clip_id, sha256=sha256)
        self.probes.submit(lambda: self._probe_and_record(clip_id, final, sha256, size,
                                                          verified, info, rec, report))
        return "copied"

    def _probe_and_record(self, clip_id: str, final: Path, sha256: str, size: int,
                          verified: bool, info: DeviceInfo, rec: Recording,
                          report: DockReport) -> None:
        """Probe the vault copy, record the clip copied with its media facts, then seal it."""
        try:
            self._record_copied(clip_id, final, sha256, size, verified, rec)
        except AgentError as exc:
            report.errors.append(f"{rec.path}: {exc}")
            self._alert(info.serial, "ingest.failed", f"{rec.path}: {exc.diagnostics()}")
            self._reset_if_copying(clip_id, f"ingest failed: {exc}")
            return
        report.copied.append(clip_id)
        if self.after_copy is not None:
            try:
                self.after_copy(clip_id)
            except AgentError as exc:
                # The copy is safe and verified in the vault; only sealing failed
                # (a busy store).  The checkpoint timer seals copied clips again.
                self._alert(info.serial, "seal.failed",
                            f"clip {clip_id} ({rec.path}) is copied and verified but "
                            f"not sealed yet: {exc.diagnostics()}; sealing is tried "
                            "again within custody.checkpoint_interval_s")

    def _record_copied(self, clip_id: str, final: Path, sha256: str, size: int,
                       verified: bool, rec: Recording) -> None:
        media_info, flags = self._probe(final, clip_id, rec.name)
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

    def _probe(self, path: Path, clip_id: str,
               name: str) -> tuple[dict[str, Any] | None, list[str]]:
        cfg = self.config.media
        if not cfg.probe:
            return None, []
        info = media.probe(path, decode_check=cfg.decode_check, clip_id=clip_id, name=name,
                           timeout_per_gib_s=cfg.probe_timeout_s,
                           memory_mib=cfg.probe_memory_mib)
        return info.to_dict(), media.flags_for(info)

    # --- helpers -------------------------------------------------------------------------

    def _back_to_discovered(self, clip_id: str, reason: str) -> None:
        log.warning("clip %s: %s", clip_id, reason)
        with self.store.transaction() as tx:
            tx.transition(clip_id, S.DISCOVERED, log_body={"reason": reason})

    def _reset_if_copying(self, clip_id: str, reason: str) -> None:
        try:
            with self.store.transaction() as tx:
                if tx.clip(clip_id)["state"] == S.COPYING.value:
                    tx.transition(clip_id, S.DISCOVERED, log_body={"reason": reason})
        except StoreError:
            log.exception("clip %s stays copying; start-up recovery resets it", clip_id)

    def _quarantine(self, clip_id: str, reason: str, sha256: str | None) -> None:
        log.error("clip %s quarantined: %s", clip_id, reason)
        with self.store.transaction() as tx:
            fields: dict[str, Any] = {"reason": reason}
            if sha256 is not None:
                fields.update(sha256=sha256, copied_at=now())
            tx.transition(clip_id, S.QUARANTINED, log_body={"reason": reason, "sha256": sha256},
                          **fields)
            tx.event("alert", {"code": "clip.quarantined", "clip_id": clip_id,
                               "message": reason})

    def _alert(self, serial: str | None, code: str, message: str) -> None:
        log.error("%s: %s", code, message)
        try:
            with self.store.transaction() as tx:
                tx.log("alert", None, {"code": code, "serial": serial, "message": message})
                tx.event("alert", {"code": code, "serial": serial, "message": message})
        except StoreError:
            log.exception("could not record alert %s", code)

    def _sync_clock(self, device: Device, info: DeviceInfo, report: DockReport) -> None:
        try:
            offset = device.sync_clock(time.time())
        except AgentError as exc:
            log.warning("%s: clock sync failed: %s", info.serial, exc)
            return
        if offset is None:
            return
        with self.store.transaction() as tx:
            tx.log("device.clock_synced", None, {"serial": info.serial, "offset_s": offset})


def device_body(info: DeviceInfo) -> dict[str, Any]:
    return {"serial": info.serial, "vendor": info.vendor, "model": info.model,
            "firmware": info.firmware, "officer_id": info.officer_id, "driver": info.driver}


def _clock_offset(info: DeviceInfo) -> float | None:
    if not info.clock:
        return None
    try:
        return round(parse_rfc3339(info.clock).timestamp() - time.time(), 3)
    except ValueError:
        return None


def clock_flags(offset: float | None, max_skew_s: float) -> list[str]:
    if offset is not None and abs(offset) > max_skew_s:
        return ["clock.skew"]
    return []
