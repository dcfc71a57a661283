"""A dock session: identify a docked device, register its recordings, copy each into the vault.

One worker thread owns a device for the whole session, which is these steps:

    identify ─▶ record the dock ─▶ release what the platform acknowledged
      ─▶ list and screen (agent/listing.py) ─▶ register each recording
      ─▶ copy each into the vault (agent/clipcopy.py; verified, probed and sealed
         beside the next copy, agent/clipcheck.py) ─▶ save the report

Every docked camera has its own session (``station.max_ingest_workers`` at
once); the checks after each copy run on pools shared fairly by all of them.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent import devicehealth, media
from agent.alerts import Alerts
from agent.clipcheck import ClipChecker
from agent.clipcopy import ClipCopier, SessionWork, database_full, mtime_ms, reset_if_copying
from agent.config import Config
from agent.dockreport import DockReport
from agent.errors import AgentError, Cancelled, DeviceError, DeviceGoneError, StoreFullError
from agent.listing import SHOWN, report_skipped, screen
from agent.logsetup import log_fields
from agent.media.queue import ProbeQueue, default_workers
from agent.progress import DockObserver, NullObserver
from agent.store import ClipState, Store
from agent.thumbnails import Thumbnails, wanted
from agent.timeutil import now, parse_rfc3339, rfc3339, uuid7
from agent.vault import Vault
from agent.workpool import FairPool
from drivers.base import Device, DeviceInfo, Recording

__all__ = ["DockReport", "Offloader", "device_body", "mtime_ms"]

log = logging.getLogger(__name__)
S = ClipState


class Offloader:
    """Runs dock sessions.  Thread-safe: each call works on its own device."""

    def __init__(self, config: Config, store: Store, vault: Vault,
                 after_copy: Callable[[str], None] | None = None,
                 before_listing: Callable[[Device, DeviceInfo], None] | None = None,
                 make_room: Callable[[], object] | None = None,
                 stopping: threading.Event | None = None,
                 observer: DockObserver | None = None) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.before_listing = before_listing
        self.make_room = make_room
        self.stopping = stopping or threading.Event()
        self.alerts = Alerts(store)
        self.observer: DockObserver = observer or NullObserver()  # the station's screen
        self.thumbnails = Thumbnails(config.data_dir) if wanted(config) else None
        # Copied clips are verified and probed here while the session copies the next one.
        self.verifies = FairPool("verify", config.ingest.verify_workers)
        self.probes = ProbeQueue(config.media.probe_workers or default_workers())
        # Thumbnails made by a probe wait here until their clip is recorded copied (kept) or
        # ends otherwise (dropped): a duplicate or a failed copy never keeps a picture.
        self._thumbnails_waiting: dict[str, bytes] = {}
        self._thumbnails_lock = threading.Lock()
        checker = ClipChecker(config, store, vault, self.alerts, self._probe, self.probes,
                              self.verifies, after_copy=after_copy, observer=self.observer,
                              thumbnail=self._settle_thumbnail)
        self.copier = ClipCopier(config, store, vault, self.alerts, checker,
                                 stopping=self.stopping, observer=self.observer)
        self._serial_locks: dict[str, threading.Lock] = {}
        self._serial_locks_guard = threading.Lock()

    def close(self) -> None:
        """Stop the verify and probe workers once no session runs (what is queued runs first)."""
        self.probes.shutdown()
        self.verifies.shutdown()

    # --- the session ---------------------------------------------------------------------

    def offload(self, device: Device) -> DockReport:
        report = DockReport(handle=device.handle)
        self.alerts.flush()  # what a full disk kept from being recorded before
        info = self._identify(device, report)
        if info is None:
            return report
        with self._one_session_per_camera(info.serial), log_fields(serial=info.serial):
            try:
                self._session(device, info, report)
            except StoreFullError as exc:
                database_full(self.alerts, info, report, exc)
        return report

    def _session(self, device: Device, info: DeviceInfo, report: DockReport) -> None:
        dock_id = self._record_dock(device, info, report)
        with log_fields(dock_id=dock_id):
            self._session_steps(device, info, report, dock_id)

    def _session_steps(self, device: Device, info: DeviceInfo, report: DockReport,
                       dock_id: int) -> None:
        # Before anything switches the camera to storage: most serial cameras drop their
        # serial interface with the switch, and the clock could not be set after it.
        self._sync_clock(device, info, report)
        try:
            self._release_acknowledged(device, info)
            todo = self._list_and_register(device, info, dock_id, report)
            log.info("%s: %d recordings listed, %d to copy", info.serial, report.recordings,
                     len(todo))
            attempts: dict[str, int] = {}  # kept across rounds: retries end in quarantine
            while todo:
                # The session ends once its clips are verified, probed and sealed.
                with self.probes.batch() as batch:
                    work = SessionWork(batch, attempts=attempts)
                    self._copy_all(device, info, todo, report, work)
                todo, work.again = work.again, []  # vault copies that failed their verify
        except DeviceGoneError as exc:
            report.errors.append(f"device removed: {exc}")
            log.warning("%s removed during offload: %s", info.serial, exc)
        except Cancelled as exc:
            report.errors.append(str(exc))
        except DeviceError as exc:
            report.errors.append(str(exc))
            self.alerts.send(info.serial, "device.error", str(exc))
        self._save_report(dock_id, report)

    def _identify(self, device: Device, report: DockReport) -> DeviceInfo | None:
        try:
            info = device.identify()
        except AgentError as exc:
            report.errors.append(f"identify failed: {exc}")
            self.alerts.send(None, "device.unidentified", f"{device.handle}: {exc}")
            return None
        report.serial, report.model, report.officer_id = info.serial, info.model, info.officer_id
        report.clock_offset_s = _clock_offset(info)
        self.observer.identified(device.handle, info)
        return info

    @contextmanager
    def _one_session_per_camera(self, serial: str) -> Iterator[None]:
        # One session per camera, whatever handle it came under: a camera re-plugged while
        # its old mount lingers shows up twice, and two sessions would copy the same clips.
        with self._serial_locks_guard:
            serial_lock = self._serial_locks.setdefault(serial, threading.Lock())
        with serial_lock:
            yield

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
            devicehealth.record(tx, info.serial, info.health, new_docking=True)
            body = device_body(info)
            body.update({"handle": device.handle, "dock_id": dock_id,
                         "clock_offset_s": report.clock_offset_s,
                         "health": info.health.as_dict() if info.health else None})
            tx.log("device.docked", None, body)
            tx.event("device.docked", body)
        return dock_id

    def _release_acknowledged(self, device: Device, info: DeviceInfo) -> None:
        if self.before_listing is not None:
            self.before_listing(device, info)

    def _list_and_register(self, device: Device, info: DeviceInfo, dock_id: int,
                           report: DockReport) -> list[tuple[str, Recording]]:
        """List the device, report what is skipped; the clips to copy, in copy order."""
        screened = screen(device.recordings())
        report.recordings = len(screened.recordings)
        report.skipped_count = len(screened.skipped)
        report.skipped = screened.skipped[:SHOWN]
        report.unreadable, report.refused = screened.unreadable[:SHOWN], screened.refused[:SHOWN]
        report_skipped(self.store, self.alerts, info, screened)
        todo: list[tuple[str, Recording]] = []
        # Important clips first: if the officer undocks early, those are already safe.
        for rec in sorted(screened.recordings, key=lambda r: (not r.important, r.path)):
            clip_id = self._register(info, rec, dock_id, report)
            if clip_id is not None:
                todo.append((clip_id, rec))
        self.observer.listed(device.handle, screened.recordings, len(screened.unreadable), todo)
        return todo

    def _copy_all(self, device: Device, info: DeviceInfo, todo: list[tuple[str, Recording]],
                  report: DockReport, work: SessionWork) -> None:
        for index, (clip_id, rec) in enumerate(todo):
            if self.stopping.is_set():
                report.errors.append(f"agent stopping: {len(todo) - index} recordings left "
                                     "for the next dock")
                return
            if not self._room_for(rec, info, report):
                return
            try:
                self.copier.copy(device, info, clip_id, rec, report, work)
            except (DeviceError, Cancelled, StoreFullError):
                raise
            except AgentError as exc:
                # The station's side failed (vault disk, database): say so, keep the clip
                # discoverable, and go on with the next one.
                report.errors.append(f"{rec.path}: {exc}")
                self.alerts.send(info.serial, "ingest.failed",
                                 f"{rec.path}: {exc.diagnostics()}")
                reset_if_copying(self.store, clip_id, f"ingest failed: {exc}")

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
            flags = list(rec.name_flags) + list(info.flags)
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
        # Beside the recordings the other docked cameras are copying now.
        if self.copier.free_for(rec.size) >= reserve:
            return True
        if self.make_room is not None:
            self.make_room()
            if self.copier.free_for(rec.size) >= reserve:
                return True
        message = (f"disk full: {self.vault.free_bytes() // 2**20} MB free in the vault, "
                   f"{rec.size // 2**20} MB needed above the reserve of "
                   f"{self.config.ingest.min_free_mb} MB (ingest.min_free_mb); ingest stopped, "
                   f"the recordings stay on {info.serial}")
        report.errors.append(message)
        report.stopped_full = "vault"
        self.alerts.send(info.serial, "disk.full", message)
        return False

    def _probe(self, path: Path, clip_id: str,
               name: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The one place the media module is called: the manifest's ``media`` and flags.

        The clip's thumbnail, made by the same probe, waits for
        :meth:`_settle_thumbnail` (the screen lists sealed clips only).
        """
        cfg = self.config.media
        if not cfg.probe:
            return None, []
        info = media.probe(path, decode_check=cfg.decode_check, clip_id=clip_id, name=name,
                           timeout_per_gib_s=cfg.probe_timeout_s,
                           memory_mib=cfg.probe_memory_mib,
                           thumbnail=self.thumbnails is not None)
        if self.thumbnails is not None and info.thumbnail is not None:
            with self._thumbnails_lock:
                self._thumbnails_waiting[clip_id] = info.thumbnail.jpeg
        return info.to_dict(), media.flags_for(info)

    def _settle_thumbnail(self, clip_id: str, keep: bool) -> None:
        """Keep the clip's waiting thumbnail (it is recorded copied), or drop it."""
        with self._thumbnails_lock:
            jpeg = self._thumbnails_waiting.pop(clip_id, None)
        if keep and jpeg is not None and self.thumbnails is not None:
            self.thumbnails.save(clip_id, jpeg)

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

    def _save_report(self, dock_id: int, report: DockReport) -> None:
        with self.store.transaction() as tx:
            tx.execute("UPDATE docks SET report = ? WHERE id = ?",
                       (json.dumps(report.as_dict(), ensure_ascii=False), dock_id))


def device_body(info: DeviceInfo) -> dict[str, Any]:
    return {"serial": info.serial, "vendor": info.vendor, "model": info.model,
            "firmware": info.firmware, "officer_id": info.officer_id, "driver": info.driver,
            "name_pattern": info.name_pattern}


def _clock_offset(info: DeviceInfo) -> float | None:
    if not info.clock:
        return None
    try:
        return round(parse_rfc3339(info.clock).timestamp() - time.time(), 3)
    except ValueError:
        return None
