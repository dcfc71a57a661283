"""The sync service: everything a station does with its platform, started and stopped as one.

Start order: outbox → inbound worker → MQTT link → uploader → housekeeping
timer; stop is the reverse.  The station keeps ingesting and sealing when the
platform is unreachable: events wait in the durable outbox, uploads back off.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config
from agent.custody.keys import keyid_of, load_public_key
from agent.custody.sealer import Custody
from agent.errors import ConfigError
from agent.officers.inbound import OfficerMessages
from agent.overview import platform_status, station_status
from agent.pki.identity import identity_certificates
from agent.store import ClipState, Store
from agent.store.db import EVENT_TOPIC
from agent.sync import care
from agent.sync.inbound import Inbound, tag_command
from agent.sync.mqtt import MqttLink
from agent.sync.retention import cameras_holding, purge, release_acknowledged, sweep_purged
from agent.sync.storeoutbox import StoreOutbox
from agent.sync.uploader import Uploader
from agent.timeutil import now
from agent.vault import Vault
from drivers.base import Device, DeviceInfo

if TYPE_CHECKING:
    from agent.station import Station

log = logging.getLogger(__name__)
S = ClipState
IN_FLIGHT = ("sealed", "uploading", "uploaded")
HOUSEKEEPING_S = 60.0


def check_private(path: os.PathLike[str] | str, key_path: str) -> None:
    """Refuse a secret file (password, TLS key) that group or others can read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{key_path}: cannot read {path}: {exc.strerror}") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{key_path}: {path} is readable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}")


def read_secret(path: os.PathLike[str] | str, key_path: str) -> str:
    """Read a secret file, refusing one that group or others can read."""
    check_private(path, key_path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{key_path}: cannot read {path}: {exc.strerror}") from exc


class SyncService:
    def __init__(self, config: Config, store: Store, vault: Vault, custody: Custody,
                 station: Station) -> None:
        assert config.platform is not None
        self.config = config
        self.platform = config.platform
        self.store = store
        self.vault = vault
        self.custody = custody
        self.station = station
        self.outbox = StoreOutbox(store)
        if self.platform.key_file is not None:
            check_private(self.platform.key_file, "platform.key_file")
        public = load_public_key(self.platform.platform_key_file)
        self.trusted: dict[str, Any] = {keyid_of(public): public}
        officers = OfficerMessages(config, store, self.trusted)
        self.inbound = Inbound(config, store, self.trusted, self._respond, {
            "status": lambda _args: self.status(),
            "rescan": lambda _args: {"devices": self.station.rescan()},
            "tag": tag_command(config, store),
            "sync-clock": lambda _args: {"devices": self.station.sync_clocks()},
            **care.handlers(config, store, lambda: self.inbound.running_command),
            "resend-events": lambda args: {"resent": self.outbox.resend_events(
                EVENT_TOPIC.format(station_id=config.station.id), args["from_seq"],
                args["to_seq"])},
        }, on_acknowledged=self._acknowledged, settle=self._settle,
            messages=officers.handlers())
        officers.refused = self._refuse_officer_message
        password = (read_secret(self.platform.password_file, "platform.password_file")
                    if self.platform.password_file else None)
        self.link = MqttLink(
            station_id=config.station.id, url=self.platform.mqtt_url,
            ca_file=self.platform.ca_file, cert_file=self.platform.cert_file,
            key_file=self.platform.key_file, username=self.platform.username,
            password=password, protocol=self.platform.mqtt_protocol,
            keepalive=self.platform.keepalive_s, outbox=self.outbox,
            status_provider=self.status, on_message=self.inbound.deliver,
            insecure=self.platform.insecure)
        self.uploader = Uploader(config, store, vault)
        progress = getattr(station, "progress", None)
        if progress is not None:
            self.uploader.meter = progress.uploaded  # bytes the upload server confirmed
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._last_sync: str | None = None
        self._last_disk_alert = float("-inf")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        swept = sweep_purged(self.store, self.vault)
        if swept:
            log.warning("removed %d vault objects of purged clips left by a crash", swept)
        self._publish_identity()
        self.inbound.start()
        self.link.start()
        self.uploader.start()
        self._timer = threading.Thread(target=self._housekeeping, name="housekeeping",
                                       daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=10)
        self.uploader.stop()
        self.link.stop()
        self.inbound.stop()

    def reload_tls(self) -> None:
        """The TLS certificate was renewed: present the new one from the next connection
        to the broker and the next upload on."""
        self.link.reload_client_certificate()
        self.uploader.reload_client_certificate()
        self._publish_identity()  # the renewed signing certificate, for the platform

    def _publish_identity(self) -> None:
        identity = {"station_id": self.config.station.id, "key_id": self.custody.key_id,
                    **identity_certificates(self.config), "version": __version__, "at": now()}
        topic = f"bwc/v1/stations/{self.config.station.id}/identity"
        self.outbox.add(topic, json.dumps(identity).encode(), qos=1, retain=True)

    def _housekeeping(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(min(HOUSEKEEPING_S, self.platform.status_interval_s)):
            try:
                if time.monotonic() - last_status >= self.platform.status_interval_s:
                    self.link.publish_status()
                    last_status = time.monotonic()
                self._purge_and_watch_disk()
                self.uploader.poke()
            except Exception:
                log.exception("housekeeping failed")  # and again at the next round

    # --- hooks used by the station --------------------------------------------------------

    def before_listing(self, device: Device, info: DeviceInfo) -> None:
        """At every dock, first release what the platform has acknowledged.

        Failed releases too, whatever their back-off: a new dock may have fixed them.
        """
        release_acknowledged(self.config, self.store, device, info, retry_failed=True)

    def release_due(self, device: Device, info: DeviceInfo) -> None:
        """Release what was acknowledged since, and failed releases whose wait is over."""
        release_acknowledged(self.config, self.store, device, info)

    def _purge_and_watch_disk(self) -> None:
        purge(self.config, self.store, self.vault)
        low_water = self.config.retention.low_water_mb * 1024 * 1024
        free = self.vault.free_bytes()
        if free < low_water and time.monotonic() - self._last_disk_alert > 3600:
            # Nothing more may be purged: what is left is not acknowledged yet.
            self._last_disk_alert = time.monotonic()
            message = (f"vault disk low: {free // 2**20} MB free, under retention.low_water_mb "
                       f"({self.config.retention.low_water_mb} MB), nothing more purgeable")
            log.warning("%s", message)
            with self.store.transaction() as tx:
                tx.log("alert", None, {"code": "disk.low", "message": message})
                tx.event("alert", {"code": "disk.low", "message": message,
                                   "free_bytes": free})

    def make_room(self) -> list[str]:
        """Purge acknowledged clips past retention or under the low-water mark."""
        return purge(self.config, self.store, self.vault)

    def sealed(self, _clip_id: str) -> None:
        self.uploader.poke()

    def _acknowledged(self, clip_id: str) -> None:
        self._last_sync = now()
        for serial in cameras_holding(self.store, clip_id):  # duplicates' cameras too
            self.station.request_release(serial)

    def _settle(self, message: Any) -> None:
        self.link.ack(message)

    def _refuse_officer_message(self, kind: str, code: str, reason: str, raw: bytes,
                                fields: dict[str, Any]) -> None:
        """A refused roster or case window, recorded like refused acks (on the same thread)."""
        self.inbound.refusals.refuse(kind, code, reason, payload=raw, fields=fields)

    def _respond(self, topic: str, correlation: bytes | None, payload: bytes) -> None:
        self.link.respond(topic, correlation, payload)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The retained MQTT status: the figures the CLI and the pages show (agent.overview)."""
        progress = getattr(self.station, "progress", None)
        facts = getattr(self.station, "daemon_facts", None)
        # Read before the outbox: "outbox": 0 then means every event up to it was delivered.
        event_seq = self.outbox.event_seq()
        status = station_status(self.config, self.store, vault=self.vault, progress=progress,
                                daemon=facts() if facts is not None else None)
        return {**platform_status(status, last_sync=self._last_sync), "event_seq": event_seq}

    # --- batch mode ----------------------------------------------------------------------

    def drain(self, *, timeout_s: float) -> list[str]:
        """Wait until every sealed clip is acknowledged (or failed) and every event sent."""
        deadline = time.monotonic() + timeout_s
        self.uploader.poke()
        while time.monotonic() < deadline:
            counts = self.store.counts_by_state()
            busy = sum(counts.get(s, 0) for s in IN_FLIGHT)
            if (busy == 0 and self.outbox.backlog() == 0 and self.inbound.idle()
                    and not self.station.releasing()):
                return []
            time.sleep(0.1)
        counts = self.store.counts_by_state()
        failures = [f"{counts[s]} clips still {s} after {timeout_s:g} s"
                    for s in IN_FLIGHT if counts.get(s)]
        backlog = self.outbox.backlog()
        if backlog:
            error = self.link.last_error
            failures.append(f"{backlog} events not delivered to the platform"
                            + (f" ({error})" if error else ""))
        return failures
