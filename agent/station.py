"""The Station: every service of the daemon, started in order and stopped in reverse.

Threads (DESIGN.md §10): detectors call back into the dock queue; one worker
per docked device (bounded by ``station.max_ingest_workers``, 32 by default:
every port of a 25-port station is read at once) runs the dock session; the
checks after each copy (verify, probe, seal) run on pools shared fairly by the
sessions; the custody checkpointer and, with a platform, the sync services
run beside them.  Each device and each connection has one owner thread.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.blockbudget import BlockBudget
from agent.config import Config
from agent.custody.sealer import Custody
from agent.daemonstate import DaemonState
from agent.devicehealth import HealthMonitor
from agent.devicepolicy import record_refusal
from agent.durable import makedirs_durable
from agent.errors import AgentError, StoreError, StoreFullError
from agent.mount.keeper import Keeper
from agent.offload import DockReport, Offloader
from agent.progress import ProgressRegistry
from agent.store import ClipState, Store
from agent.store.files import warn_if_open_to_others
from agent.sync.retention import releases_due
from agent.timeutil import now
from agent.vault import Vault
from drivers import REGISTRY
from drivers.base import Detector, Device, DeviceContext
from drivers.refused import RefusalNotes, RefusedDevice

log = logging.getLogger(__name__)
S = ClipState


@dataclass
class RunSummary:
    reports: list[DockReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not any(r.failed for r in self.reports)


# How often docked cameras with recordings left to copy are looked at again.
RESUME_INTERVAL_S = 120.0
# Free space (above ingest.min_free_mb) after which a session stopped by a full database
# disk is resumed: room for the dock's records, the first clip's checks its own.
DATABASE_ROOM = 4 * 1024 * 1024


class Station:
    """Owns the store, vault, custody, detectors, dock workers and (optionally) sync."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.vault: Vault | None = None
        self.custody: Custody | None = None
        self.offloader: Offloader | None = None
        self.detectors: list[Detector] = []
        self.sync: Any = None
        self.health: HealthMonitor | None = None
        self.web: Any = None
        self.metrics: Any = None  # agent.metrics.MetricsServer, with [metrics]
        self.progress = ProgressRegistry()  # live figures for the pages and the status
        self.renewer: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._active: dict[str, Future[DockReport]] = {}
        self._active_lock = threading.Lock()
        self._docked: dict[str, Device] = {}  # handle -> device, while docked
        self._device_locks: dict[str, threading.Lock] = {}  # one owner at a time per device
        self._jobs: dict[Future[Any], str] = {}  # release and clock jobs -> device handle
        self._keeper: Keeper | None = None  # station-mounted volumes, with [mount]
        self._redock: set[str] = set()  # handles docked again while their session ran
        # Handles whose last session stopped on a full disk: "vault" or "database".
        self._stopped_full: dict[str, str] = {}
        self._lock_fd: int | None = None
        self.daemon_state: DaemonState | None = None  # the heartbeat, once the data_dir is ours
        self._stopping = threading.Event()
        self._stops: list[Callable[[], None]] = []
        self.reports: list[DockReport] = []

    # --- start / stop --------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Start every service; on a failure, stop what was started and re-raise."""
        try:
            self._open_state()
            self._recover()
            self._start_custody()
            self._start_sync()
            self._start_certificates()
            self._start_workers()
            if watch:
                self._start_web()
                self._start_metrics()
                self._start_detectors()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop in the reverse order of start; the copy in progress is cancelled."""
        self._stopping.set()
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("error while stopping")

    def _open_state(self) -> None:
        data_dir = self.config.data_dir
        self._lock_data_dir(data_dir)
        warn_if_open_to_others(data_dir)
        self.daemon_state = DaemonState(data_dir, broker=self.broker_state)
        self._stops.append(self._record_stopped)
        self.store = Store(data_dir / "state.db", station_id=self.config.station.id)
        self._stops.append(self.store.close)
        if self.config.mount is not None:
            self._keeper = Keeper(self.config, self.store)
            run_dir = self.config.mount.run_dir
            try:  # the helper creates it too; the daemon may need it first (gat947 notes)
                os.makedirs(run_dir, mode=0o750, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"mount.run_dir: cannot create {run_dir}: {exc.strerror}"
                                 ) from exc
        self._stops.append(self._clear_docked)  # after every session ended, before close
        ingest = self.config.ingest
        # One budget for the blocks of every copy and verify (agent/blockbudget.py).
        self.vault = Vault(data_dir / "vault", BlockBudget(
            ingest.buffer_mib * 1024 * 1024, max_block=ingest.chunk_kib * 1024,
            depth=ingest.queue_chunks))

    def broker_state(self) -> dict[str, Any] | None:
        """The broker connection's state (None: no platform, or sync not started)."""
        sync = self.sync
        if sync is None:
            return None
        state: dict[str, Any] = sync.link.connection_state()
        return state

    def daemon_facts(self) -> dict[str, Any] | None:
        """What ``status`` would read about this daemon now (agent.daemonstate)."""
        return self.daemon_state.snapshot() if self.daemon_state is not None else None

    def _record_stopped(self) -> None:
        if self.daemon_state is not None and self.daemon_state.written:
            try:
                self.daemon_state.stopped()
            except OSError as exc:
                log.error("cannot record the clean stop in %s: %s", self.daemon_state.path,
                          exc.strerror)

    def _clear_docked(self) -> None:
        assert self.store is not None
        with self.store.transaction() as tx:
            # Nobody watches the docks once the agent stops.
            tx.execute("UPDATE devices SET docked_handle = NULL")

    def _lock_data_dir(self, data_dir: Path) -> None:
        """One agent per data_dir: a second one would reclaim the first one's copies."""
        try:
            makedirs_durable(data_dir, mode=0o750)
            fd = os.open(data_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {data_dir / 'agent.lock'}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another bwc-agent is running on {data_dir} (it holds "
                             f"{data_dir / 'agent.lock'}); stop it first, or use "
                             "status/clips/export, which can run beside it") from None
        self._lock_fd = fd

        def unlock() -> None:
            os.close(fd)  # closing the descriptor releases the lock

        self._stops.append(unlock)

    def _recover(self) -> None:
        """Reclaim what a crash left in progress: partial copies are discarded and redone."""
        assert self.store is not None and self.vault is not None
        removed = self.vault.reclaim_incoming()
        with self.store.transaction() as tx:
            # Nothing is docked until a detector says so.
            tx.execute("UPDATE devices SET docked_handle = NULL")
        stuck = self.store.clips(S.COPYING.value)
        with self.store.transaction() as tx:
            for row in stuck:
                tx.transition(row["clip_id"], S.DISCOVERED,
                              log_body={"reason": "copy interrupted by a restart; re-copied on "
                                                  "the next dock"})
            if removed or stuck:
                tx.log("station.recovered", None, {"partial_files_removed": len(removed),
                                                   "clips_reset": len(stuck)})
        if removed or stuck:
            log.warning("recovered after an interrupted run: %d partial files removed, "
                        "%d clips reset for re-copy", len(removed), len(stuck))

    def _start_custody(self) -> None:
        assert self.store is not None and self.vault is not None
        self.custody = Custody(self.config, self.store, self.vault)
        self.custody.start()
        self._stops.append(self.custody.stop)
        self.custody.seal_pending()

    def _start_sync(self) -> None:
        if self.config.platform is None:
            return
        from agent.sync.service import SyncService  # only stations with a platform need it

        assert self.store is not None and self.vault is not None and self.custody is not None
        self.sync = SyncService(self.config, self.store, self.vault, self.custody, self)
        self.sync.start()
        self._stops.append(self.sync.stop)

    def _start_certificates(self) -> None:
        """Expiry alerts and renewal (agent/pki/renewal.py); a renewed TLS certificate is
        used from the next broker connection on."""
        from agent.pki.renewal import Renewer

        assert self.store is not None
        sync = self.sync
        self.renewer = Renewer(self.config, self.store,
                               on_renewed=sync.reload_tls if sync is not None else None)
        self.renewer.start()
        self._stops.append(self.renewer.stop)

    def _start_workers(self) -> None:
        assert self.store is not None and self.vault is not None and self.custody is not None
        custody = self.custody
        sync = self.sync
        before_listing = sync.before_listing if sync is not None else None

        def after_copy(clip_id: str) -> None:
            custody.seal(clip_id)
            if sync is not None:
                sync.sealed(clip_id)

        make_room = sync.make_room if sync is not None else None
        self.offloader = Offloader(self.config, self.store, self.vault, after_copy=after_copy,
                                   before_listing=before_listing, make_room=make_room,
                                   stopping=self._stopping, observer=self.progress)
        self._stops.append(self.offloader.close)  # after the sessions (stops run in reverse)
        self._pool = ThreadPoolExecutor(max_workers=self.config.station.max_ingest_workers,
                                        thread_name_prefix="dock")
        pool = self._pool
        self._stops.append(lambda: pool.shutdown(wait=True, cancel_futures=True))

    def _start_web(self) -> None:
        if self.config.web is None or not self.config.web.enabled:
            return
        from agent.web.server import WebServer  # stations without a screen never load it

        assert self.store is not None
        self.web = WebServer(self.config, self.store, self.vault, self.progress,
                             daemon=self.daemon_facts)
        self.web.start()
        self._stops.append(self.web.stop)

    def _start_metrics(self) -> None:
        metrics = self.config.metrics
        if metrics is None or not metrics.enabled:
            return
        from agent.metrics import MetricsServer  # prometheus_client only where it is used
        from agent.overview import station_status

        store, vault, config = self.store, self.vault, self.config
        assert store is not None

        def status() -> dict[str, Any]:
            return station_status(config, store, vault=vault, progress=self.progress,
                                  daemon=self.daemon_facts())

        self.metrics = MetricsServer(metrics.listen, metrics.port, status, store)
        self.metrics.start()
        self._stops.append(self.metrics.stop)

    def _make_detectors(self) -> list[Detector]:
        mount = self.config.mount
        context = DeviceContext(policy=self.config.device_policy,
                                run_dir=mount.run_dir if mount is not None else None)
        detectors: list[Detector] = []
        for key, driver_config in self.config.devices.items():
            try:
                detectors.append(REGISTRY[key].make_detector(driver_config, context))
            except AgentError:
                raise
            except Exception as exc:
                raise AgentError(f"driver {key!r} failed to start: {exc}") from exc
        if mount is not None:
            detectors.append(RefusalNotes(mount.run_dir))  # devices the mount helper refused
        return detectors

    def _start_detectors(self) -> None:
        self.detectors = self._make_detectors()
        for detector in self.detectors:
            # start() reports the devices docked already, once each (the Detector
            # contract): scanning again here would start a second session for each.
            detector.start(self._on_dock, self.undock)
            self._stops.append(detector.stop)
        timer = threading.Thread(target=self._resume_timer, name="resume", daemon=True)
        timer.start()
        self._stops.append(lambda: timer.join(timeout=5))
        assert self.store is not None
        self.health = HealthMonitor(self.store, self.docked_devices)
        self.health.start()
        self._stops.append(self.health.stop)
        if self._keeper is not None:
            keeper = threading.Thread(target=self._keeper_timer, name="let-go", daemon=True)
            keeper.start()
            self._stops.append(lambda: keeper.join(timeout=5))

    def _keeper_timer(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self._let_go()
            except Exception:
                log.exception("letting mounted volumes go failed")  # tried again next time

    def _busy(self) -> set[str]:
        """Handles of devices with a session or a job queued or running."""
        with self._active_lock:
            busy = {h for h, f in self._active.items() if not f.done()}
            busy.update(self._redock)
            busy.update(self._jobs.values())
        return busy

    def _let_go(self, *, now: float | None = None) -> list[str]:
        """Detach station-mounted volumes the station is done with (see agent.mount.keeper)."""
        if self._keeper is None or self._stopping.is_set():
            return []
        return self._keeper.let_go(self._busy(), now=now)

    def _resume_timer(self) -> None:
        while not self._stopping.wait(RESUME_INTERVAL_S):
            try:
                self.resume_unfinished()
                self.retry_releases()
            except Exception:
                log.exception("resuming unfinished docks failed")  # tried again next time

    def retry_releases(self) -> list[str]:
        """Release again from docked cameras whose failed releases waited long enough."""
        if self.store is None or self.sync is None:
            return []
        with self._active_lock:
            docked = set(self._docked)
        serials = []
        for row in self.store.query("SELECT serial, docked_handle FROM devices "
                                    "WHERE docked_handle IS NOT NULL"):
            if row["docked_handle"] in docked and releases_due(self.store, row["serial"]):
                self.request_release(row["serial"])
                serials.append(row["serial"])
        return serials

    def resume_unfinished(self) -> list[str]:
        """Dock again each docked camera whose session left recordings to copy.

        A session stops early when the disk is full (the vault's, or the
        database's); once there is room again (a purge, an operator), nothing
        else would bring back a camera that stays in its dock overnight.  Only
        sessions that stopped on a full disk, and only when the smallest
        recording left fits above ``ingest.min_free_mb`` (for a full database:
        when :data:`DATABASE_ROOM` is free above it), so a full disk does not
        alert every time.  Alerts that the full disk kept from the store are
        recorded first.
        """
        if self.store is None or self.vault is None:
            return []
        if self.offloader is not None:
            self.offloader.alerts.flush()
        room = self.vault.free_bytes() - self.config.ingest.min_free_mb * 1024 * 1024
        with self._active_lock:
            # Only sessions that stopped because the disk was full: any other unfinished
            # session (a file gone from the camera, a failing clip) would loop here.
            idle = [(device, self._stopped_full[handle])
                    for handle, device in self._docked.items()
                    if ((running := self._active.get(handle)) is None or running.done())
                    and handle in self._stopped_full]
        queued = []
        for device, full in idle:
            smallest = self.store.query_one(
                "SELECT MIN(clips.size) AS size FROM clips JOIN devices "
                "ON clips.device_serial = devices.serial "
                "WHERE devices.docked_handle = ? AND clips.state = 'discovered'",
                (device.handle,))
            if full == "database":
                # The session may have stopped before it could list anything.
                needed = DATABASE_ROOM
            elif smallest is None or smallest["size"] is None:
                with self._active_lock:
                    self._stopped_full.pop(device.handle, None)
                continue
            else:
                needed = int(smallest["size"])
            if (needed <= room and device.present()
                    and self.dock(device) is not None):
                log.info("resuming the offload of %s: recordings were left to copy",
                         device.handle)
                queued.append(device.handle)
        return queued

    # --- docking -------------------------------------------------------------------------

    def _on_dock(self, device: Device) -> None:
        self.dock(device)

    def dock(self, device: Device) -> Future[DockReport] | None:
        """Queue a dock session for ``device``.

        If a session for the same handle is still running (the camera was pulled and
        plugged back in), another session follows it, so nothing waits for a restart.
        """
        if self._stopping.is_set() or self._pool is None:
            return None
        self.progress.queued(device.handle)
        with self._active_lock:
            self._docked[device.handle] = device
            running = self._active.get(device.handle)
            if running is not None and not running.done():
                self._redock.add(device.handle)
                return running
            future = self._pool.submit(self._owned, device, self._session)
            self._active[device.handle] = future
        future.add_done_callback(lambda done: self._session_done(device, done))
        return future

    def _session_done(self, device: Device, future: Future[DockReport]) -> None:
        if not future.cancelled() and future.exception() is not None:
            exc = future.exception()
            self.progress.finished(device.handle, [f"dock session failed: {exc}"])
            log.error("dock session of %s failed: %s", device.handle, exc)
            if self.store is not None:
                try:
                    with self.store.transaction() as tx:
                        tx.log("alert", None, {"code": "dock.failed", "handle": device.handle,
                                               "message": str(exc)})
                        tx.event("alert", {"code": "dock.failed", "handle": device.handle,
                                           "message": str(exc)})
                except Exception:  # the failure may be the very thing that cannot be stored
                    log.exception("could not record the failed dock session")
        with self._active_lock:
            again = device.handle in self._redock
            self._redock.discard(device.handle)
            current = self._docked.get(device.handle)
        if again and current is not None and not self._stopping.is_set() and current.present():
            self.dock(current)
        elif self._keeper is not None and not future.cancelled():
            failed = future.exception() is not None
            self._keeper.session_ended(device, None if failed else future.result().serial)
            self._let_go()

    def _owned(self, device: Device, job: Callable[[Device], Any]) -> Any:
        """Run ``job`` as the device's only owner (sessions and releases never overlap)."""
        with self._active_lock:
            lock = self._device_locks.setdefault(device.handle, threading.Lock())
        with lock:
            return job(device)

    def _session(self, device: Device) -> DockReport:
        assert self.offloader is not None
        if isinstance(device, RefusedDevice):
            return self._refused(device)
        log.info("docked: %s", device.handle)
        report = self.offloader.offload(device)
        self.progress.finished(device.handle, report.errors)
        self.reports.append(report)
        with self._active_lock:
            if report.stopped_full is not None:
                self._stopped_full[device.handle] = report.stopped_full
            else:
                self._stopped_full.pop(device.handle, None)
        if self.custody is not None:
            try:
                self.custody.checkpoint()  # a signed checkpoint after each burst of seals
            except StoreFullError as exc:
                # The timer signs one once there is room; the full disk is alerted already.
                log.error("no checkpoint after the dock of %s: %s", device.handle, exc)
        if not report.serial:
            log.info("%s was not identified; nothing was read from it", device.handle)
            return report
        log.info("offload of %s done: %d new, %d copied, %d already ingested, %d quarantined,"
                 " %d skipped", report.serial, report.new, len(report.copied),
                 report.already_ingested, len(report.quarantined), report.skipped_count,
                 extra={"serial": report.serial})
        return report

    def _refused(self, device: RefusedDevice) -> DockReport:
        """Record a device the policy refused; nothing on it is read."""
        assert self.store is not None
        refusal = device.refusal
        log.warning("%s", refusal.message())
        record_refusal(self.store, refusal)
        device.recorded()
        return DockReport(handle=device.handle, serial=refusal.identity.serial,
                          refused_device=refusal.reason)

    def _submit(self, device: Device, job: Callable[[Device], Any]) -> Future[Any] | None:
        if self._stopping.is_set() or self._pool is None:
            return None
        future = self._pool.submit(self._owned, device, job)
        with self._active_lock:
            self._jobs[future] = device.handle
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, future: Future[Any]) -> None:
        with self._active_lock:
            self._jobs.pop(future, None)
        if not future.cancelled() and future.exception() is not None:
            log.error("device job failed: %s", future.exception())
        self._let_go()

    def releasing(self) -> bool:
        """Whether release jobs are queued or running (``run --once`` waits for them)."""
        with self._active_lock:
            return bool(self._jobs)

    def docked_devices(self) -> dict[str, Device]:
        """The devices docked now, by handle."""
        with self._active_lock:
            return dict(self._docked)

    def docked_device(self, serial: str) -> Device | None:
        if self.store is None:
            return None
        row = self.store.query_one("SELECT docked_handle FROM devices WHERE serial = ?",
                                   (serial,))
        if row is None or row["docked_handle"] is None:
            return None
        with self._active_lock:
            return self._docked.get(row["docked_handle"])

    def request_release(self, serial: str) -> None:
        """An ack arrived: release the clip from its camera now if the camera is docked."""
        device = self.docked_device(serial)
        if device is None or self.sync is None:
            return
        sync = self.sync

        def release(dev: Device) -> None:
            if dev.present():
                sync.release_due(dev, dev.identify())

        self._submit(device, release)

    def rescan(self) -> list[str]:
        """Offload every docked device again (the platform's ``rescan`` command)."""
        queued = []
        for detector in self.detectors or self._make_detectors():
            for device in detector.scan():
                if self.dock(device) is not None:
                    queued.append(device.handle)
        return queued

    def sync_clocks(self, timeout_s: float = 60.0) -> dict[str, float | str | None]:
        """Set the clocks of docked devices (the platform's ``sync-clock`` command).

        Each device is handled by a job that owns it (never beside its dock session);
        a device that fails gets its error text instead of an offset.
        """
        def sync(device: Device) -> tuple[str, float | None]:
            info = device.identify()
            return info.serial, device.sync_clock(time.time())

        with self._active_lock:
            devices = list(self._docked.values())
        jobs = [(d, self._submit(d, sync)) for d in devices if d.present()]
        results: dict[str, float | str | None] = {}
        for device, job in jobs:
            if job is None:
                continue
            try:
                serial, offset = job.result(timeout=timeout_s)
                results[serial] = offset
            except Exception as exc:
                results[device.handle] = f"error: {exc}"
        return results

    def undock(self, handle: str) -> None:
        log.info("undocked: %s", handle)
        self.progress.undocked(handle)
        with self._active_lock:
            self._docked.pop(handle, None)
        if self._keeper is not None:
            self._keeper.forget(handle)
        if self.store is None:
            return
        with self.store.transaction() as tx:
            row = tx.one("SELECT serial FROM devices WHERE docked_handle = ?", (handle,))
            if row is None:
                return
            tx.execute("UPDATE devices SET docked_handle = NULL WHERE serial = ?",
                       (row["serial"],))
            tx.execute("UPDATE docks SET undocked_at = ? WHERE handle = ? AND "
                       "undocked_at IS NULL", (now(), handle))
            tx.log("device.undocked", None, {"serial": row["serial"], "handle": handle})
            tx.event("device.undocked", {"serial": row["serial"], "handle": handle})

    # --- batch mode ----------------------------------------------------------------------

    def run_once(self, *, platform_timeout_s: float = 600.0) -> RunSummary:
        """Offload the devices docked now, seal everything, and (with a platform) sync it."""
        summary = RunSummary()
        assert self.store is not None
        quarantined_before = {r["clip_id"] for r in self.store.clips(S.QUARANTINED.value)}
        log_start = self.store.log_size()
        detectors = self._make_detectors()
        futures = []
        for detector in detectors:
            for device in detector.scan():
                future = self.dock(device)
                if future is not None:
                    futures.append((device, future))
        for device, future in futures:
            try:
                report = future.result()
                summary.reports.append(report)
                if self._keeper is not None:
                    self._keeper.session_ended(device, report.serial)
            except AgentError as exc:
                summary.failures.append(exc.diagnostics())
        assert self.custody is not None
        self.custody.seal_pending()
        self.custody.checkpoint()
        if self.sync is not None:
            summary.failures.extend(self.sync.drain(timeout_s=platform_timeout_s))
            # Releases and acks since the first checkpoint: sign them too, and send it.
            if self.custody.checkpoint() is not None and not summary.failures:
                summary.failures.extend(self.sync.drain(timeout_s=min(30.0,
                                                                      platform_timeout_s)))
        # Done: every station-mounted volume of this run is let go (the helper unmounts it).
        self._let_go(now=math.inf)
        reported = {c for r in summary.reports for c in r.quarantined}
        for row in self.store.clips(S.QUARANTINED.value):
            if row["clip_id"] not in quarantined_before and row["clip_id"] not in reported:
                summary.failures.append(f"clip {row['clip_id']} ({row['name']}) quarantined: "
                                        f"{row['reason']}")
        summary.failures.extend(self._releases_failed_since(log_start))
        return summary

    def _releases_failed_since(self, seq: int) -> list[str]:
        """Acknowledged clips whose release from the camera failed in this run and that stay."""
        assert self.store is not None
        rows = self.store.query(
            "SELECT DISTINCT clips.clip_id, clips.name, clips.device_serial, "
            "clips.release_error FROM custody_log JOIN clips USING (clip_id) "
            "WHERE custody_log.kind = 'release.failed' AND custody_log.seq > ? "
            "AND clips.released_at IS NULL ORDER BY clips.clip_id", (seq,))
        return [f"clip {r['clip_id']} ({r['name']}) not released from {r['device_serial']}: "
                f"{r['release_error']}" for r in rows]

    @property
    def stopping(self) -> threading.Event:
        """Set once the station is asked to stop (SIGTERM)."""
        return self._stopping

    def wait(self) -> None:
        """Block until stop() (SIGTERM) is requested."""
        while not self._stopping.wait(1.0):
            pass

    def request_stop(self) -> None:
        self._stopping.set()
