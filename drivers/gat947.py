"""Body cameras that speak a GA/T 947-style command protocol over a USB serial port.

Chinese body cameras (执法记录仪) come with vendor SDKs (InitDevice, GetIDCode,
GetZFYInfo, WriteZFYInfo, SyncDevTime, ReadDeviceResolution,
ReadDeviceBatteryDumpEnergy, SetMSDC) over a password-protected serial link.
There is no public wire specification; this driver speaks the framing and
command set fixed in docs/GAT947.md, onto which a vendor adapter maps a real
camera's protocol.  Layers:

* drivers/gat947_wire.py, the codec: frames, CRC, the resynchronising
  parser, ZFY_INFO;
* drivers/gat947_client.py, :class:`Gat947Client`: one camera port, one
  owner thread, retries, one login per docking;
* :class:`Gat947Device`: the Device protocol.  identify() speaks the
  protocol (identity, clock, battery); sync_clock() measures, sets and reads
  the clock back; the first use of the recordings switches the camera to mass
  storage (SetMSDC), waits for its volume under ``mount_root`` and delegates
  to a :class:`drivers.mass_storage.MassStorageDevice` that holds the
  identity already known;
* :class:`Gat947Detector`: polls the serial ports (they have no file-system
  event to watch) and docks each port once.

Invariants: the password is never logged and never put in a message, and is
sent at most once per docking after a refusal (the client's); a
device-provided name is never used to build a path (the volume is chosen
among the entries ``mount_root`` already holds); there is one Device object
per port in the process (:func:`_claim`), so no two detectors hand out a port
twice and the port's exclusive lock is taken once.  The dock session sets the
clock before anything switches the camera to storage (agent/offload.py), as
most cameras drop the serial interface with the switch.
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, NamedTuple

from serial.tools import list_ports

from agent.configschema import option
from agent.devicepolicy import Refusal, UsbIdentity
from agent.errors import DeviceError, DeviceGoneError
from agent.mount.notes import expect_msdc
from agent.timeutil import now as time_now
from agent.timeutil import rfc3339
from drivers import catalog as catalog_mod
from drivers.base import (
    Detector,
    Device,
    DeviceContext,
    DeviceHealth,
    DeviceInfo,
    DriverSpec,
    Listing,
    Recording,
)
from drivers.gat947_client import Gat947Client
from drivers.gat947_wire import Charge, Password, read_password
from drivers.mass_storage import (
    MassStorageConfig,
    MassStorageDevice,
    read_mounts,
    station_mount,
    usb_for_source,
)
from drivers.refused import RefusedDevice

log = logging.getLogger(__name__)

KEY = "gat947"

# --- the Device -------------------------------------------------------------------------------

MOUNTS_FILE = Path("/proc/self/mounts")
SYSFS_ROOT = Path("/sys")
_MOUNT_POLL_S = 0.05
# How close the clock read back after SyncDevTime must be: cameras keep whole seconds, and
# the read-back's own exchange takes a few milliseconds.
CLOCK_CONFIRM_S = 2.0
CLOCK_INVALID = "clock.invalid"
_CHARGE_WORDS = {Charge.CHARGING: "charging", Charge.FULL: "full",
                 Charge.NOT_CHARGING: "not_charging"}


# A clock further than this from the station's is not running: a dead clock battery reads
# 1970 or 2000 (well inside), garbage reads year 9000 or int64 extremes.  Inside this range
# every time corrected by the offset is still a date.
CLOCK_PLAUSIBLE_S = 100 * 365.25 * 86400


def clock_text(camera_time: float, now: float) -> str | None:
    """The camera time as RFC 3339; None when it is no date, or not within 100 years of now."""
    if not abs(camera_time - now) <= CLOCK_PLAUSIBLE_S:
        return None
    try:
        return rfc3339(camera_time)
    except (ValueError, OverflowError, OSError):
        return None


class Gat947Device:
    """A camera docked on a serial port; its recordings are read after SetMSDC."""

    driver_key = KEY

    def __init__(self, port: str, config: Gat947Config, *, password: Password,
                 entry: catalog_mod.Entry | None, usb_id: str = "",
                 run_dir: Path | None = None, usb_port: str = "") -> None:
        self.port = port
        self.run_dir = run_dir  # [mount] run_dir when the station mounts volumes itself
        self.usb_port = usb_port
        self.config = config
        self.entry = entry
        self.usb_id = usb_id
        self.client = Gat947Client(port, password=password, baudrate=config.baudrate,
                                   timeout_s=config.command_timeout_s, retries=config.retries)
        self.mount_root = Path(os.path.realpath(config.mount_root))
        self._lock = threading.RLock()
        self._info: DeviceInfo | None = None
        self._storage: MassStorageDevice | None = None
        self._clock_set = False  # in this docking (this object lives as long as it)

    @property
    def handle(self) -> str:
        return self.port

    def identify(self) -> DeviceInfo:
        """Identity, clock and battery (InitDevice once, GetIDCode, GetZFYInfo, GetDevTime, ...)."""
        try:
            info = self._ask_identity()
        except DeviceError as exc:
            with self._lock:
                storage, known = self._storage, self._info
            if storage is not None and known is not None and storage.present():
                # The serial interface left (or went quiet) with the switch to mass storage,
                # as on most cameras: the identity stands, the clock cannot be read now.
                log.debug("camera %s in USB storage mode: identity from before the switch "
                          "(%s)", self.port, exc)
                return replace(known, clock=None)
            raise
        with self._lock:
            self._info = info
        return info

    def _ask_identity(self) -> DeviceInfo:
        client = self.client
        client.login()
        id_code, firmware = client.get_id_code()
        zfy = client.get_zfy_info()
        camera_time = client.get_dev_time()
        serial_no = id_code or zfy.serial
        if not serial_no:
            raise DeviceError(f"camera {self.port} has no ID: its ID code and the serial in its "
                              "officer information are both empty; set them with the vendor's "
                              "tool")
        if zfy.serial and zfy.serial != serial_no:
            log.warning("camera %s: the serial in its officer information (%r) differs from its "
                        "ID code (%r); using the ID code", self.port, zfy.serial, serial_no)
        clock = clock_text(camera_time, time.time())
        flags: tuple[str, ...] = ()
        if clock is None:
            # A dead clock battery or damaged firmware: evidence is never refused, the
            # clock is set at this dock and every recording says its time was not known.
            flags = (CLOCK_INVALID,)
            log.warning("camera %s (%s): its clock reads no plausible date (a dead clock "
                        "battery?); it is set at this dock and its recordings are flagged %s",
                        self.port, serial_no, CLOCK_INVALID)
            log.debug("camera %s: GetDevTime said %r s since 1970", self.port, camera_time)
        entry = self.entry
        health = self._health()
        log.info("camera %s: %s, officer %s (%s)", self.port, serial_no, zfy.officer_id,
                 zfy.unit_code)
        return DeviceInfo(
            serial=serial_no, vendor=entry.vendor if entry else "",
            model=entry.model if entry else "", firmware=firmware,
            officer_id=zfy.officer_id, officer_name=zfy.officer_name,
            unit_code=zfy.unit_code, unit_name=zfy.unit_name, clock=clock,
            driver=KEY, usb_id=self.usb_id, name_pattern=entry.name_pattern if entry else None,
            health=health, flags=flags,
        )

    # --- battery ------------------------------------------------------------------------------

    def read_health(self) -> DeviceHealth | None:
        """Battery, charging and resolution now; None, without I/O, when the camera cannot
        be asked (serial interface gone with the switch to storage, password refused)."""
        if not self.client.alive() or self.client.refused is not None:
            return None
        try:
            return self._health()
        except DeviceError as exc:
            log.debug("camera %s: no battery reading: %s", self.port, exc)
            return None

    def _health(self) -> DeviceHealth:
        """A camera that does not support a reading has None there; a gone one raises."""
        client = self.client
        percent: int | None = None
        charge = Charge.UNKNOWN
        resolution: tuple[int, int, int] | None = None
        try:
            percent, charge = client.read_battery()
        except DeviceGoneError:
            raise
        except DeviceError as exc:
            log.info("camera %s: battery level not available: %s", self.port, exc)
        try:
            resolution = client.read_resolution()
        except DeviceGoneError:
            raise
        except DeviceError as exc:
            log.info("camera %s: video resolution not available: %s", self.port, exc)
        return DeviceHealth(battery_percent=percent, charging=_CHARGE_WORDS.get(charge),
                            resolution=resolution, at=time_now())

    # --- recordings: through the mass-storage volume ----------------------------------------

    def storage(self) -> MassStorageDevice:
        """The camera's volume, switching the camera to mass storage on first use.

        A failed SetMSDC is not the end: the camera may have switched and lost
        its answer with the serial interface; the volume appearing decides.
        """
        with self._lock:
            if self._storage is not None and self._storage.present():
                return self._storage
            info = self._info if self._info is not None else self.identify()
            before = set(self._entries())
            log.info("camera %s (%s): switching to USB storage", self.port, info.serial)
            if self.run_dir is not None:
                # The station's mount helper puts the volume below our mount_root.
                try:
                    expect_msdc(self.run_dir, self.usb_port or None)
                except OSError as exc:
                    raise DeviceError(f"camera {self.port}: cannot tell the mount helper "
                                      f"about SetMSDC in {self.run_dir}: {exc.strerror}"
                                      ) from exc
            failed: DeviceError | None = None
            try:
                self.client.set_msdc()
            except DeviceError as exc:
                log.debug("camera %s: SetMSDC failed (%s); waiting for the volume anyway",
                          self.port, exc)
                failed = exc
            mount_point = self._wait_for_volume(info.serial, before, failed)
            if failed is not None:
                log.info("camera %s (%s): switched to USB storage although its answer was lost",
                         self.port, info.serial)
            source = self._mount_source(mount_point)
            usb = usb_for_source(SYSFS_ROOT, source) if source else None
            extensions = (self.entry.extensions if self.entry is not None
                          else MassStorageConfig(mount_root=self.mount_root).extensions)
            self._storage = MassStorageDevice(
                mount_point, usb=usb, entry=self.entry, extensions=extensions,
                mounts_file=MOUNTS_FILE if self.config.require_mount else None, known=info,
                station_mount=station_mount(self.run_dir, mount_point, source))
            log.info("camera %s (%s): storage mounted at %s", self.port, info.serial,
                     mount_point)
            return self._storage

    def recordings(self) -> Listing:
        return self.storage().recordings()

    def open(self, recording: Recording) -> BinaryIO:
        return self.storage().open(recording)

    def stat(self, recording: Recording) -> tuple[int, float]:
        return self.storage().stat(recording)

    def release(self, recording: Recording, *, sha256: str,
                before_delete: Callable[[], None] | None = None) -> None:
        self.storage().release(recording, sha256=sha256, before_delete=before_delete)

    def station_mounted(self) -> bool:
        with self._lock:
            return self._storage is not None and self._storage.station_mounted()

    def detach(self) -> None:
        """Let the station-mounted volume go (the camera stays docked on its port, if any)."""
        with self._lock:
            storage = self._storage
        if storage is not None:
            storage.detach()

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.mount_root)
        except OSError as exc:
            raise DeviceError(f"cannot list the mount root {self.mount_root}: "
                              f"{exc.strerror}") from exc

    def _mount_source(self, mount_point: Path) -> str | None:
        try:
            return read_mounts(MOUNTS_FILE).get(str(mount_point))
        except DeviceError:
            return None

    def _volume_names(self) -> list[str]:
        """Entries of mount_root that can be a camera volume now (never a symlink)."""
        mounts = read_mounts(MOUNTS_FILE) if self.config.require_mount else {}
        names = []
        for name in self._entries():
            path = self.mount_root / name
            try:
                if not stat.S_ISDIR(os.stat(path, follow_symlinks=False).st_mode):
                    continue
            except OSError:
                continue
            if self.config.require_mount and str(path) not in mounts:
                continue
            names.append(name)
        return names

    def _wait_for_volume(self, serial_no: str, before: set[str],
                         failed: DeviceError | None) -> Path:
        """The entry named after the ID code, else the only entry that appeared since ``before``.

        Names come from listing ``mount_root``; the ID code is only compared
        with them, never joined into a path.
        """
        timeout = self.config.mount_timeout_s
        deadline = time.monotonic() + timeout
        new: list[str] = []
        while True:
            names = self._volume_names()
            for name in names:
                if name == serial_no:
                    return self.mount_root / name
            new = [n for n in names if n not in before]
            if len(new) == 1:
                return self.mount_root / new[0]
            if time.monotonic() >= deadline:
                break
            time.sleep(_MOUNT_POLL_S)
        more = ""
        if new:
            more = (f"; {len(new)} new volumes appeared and none is named {serial_no!r}: "
                    f"{', '.join(sorted(new))}")
        if failed is not None:
            raise DeviceError(f"{failed}; and no storage appeared under {self.mount_root} "
                              f"within {timeout:g} s{more}")
        raise DeviceError(f"camera {self.port} ({serial_no}) was switched to USB storage but "
                          f"its storage did not appear under {self.mount_root} within "
                          f"{timeout:g} s{more}; check the automount rule (docs/OPERATIONS.md, "
                          "serial cameras)")

    # --- clock, presence ----------------------------------------------------------------------

    def sync_clock(self, now: float) -> float | None:
        """Measure (GetDevTime), set (SyncDevTime) and read back the camera clock.

        Returns the offset measured before the set: camera clock minus true time,
        seconds.  (SyncDevTime's own answer cannot measure it: after a lost answer
        the resend finds the clock already set by the lost attempt.)  The set is
        tried twice; DeviceError if the clock read back is still more than
        CLOCK_CONFIRM_S off.  Once the serial interface left with the switch to
        storage: None if the clock was set in this docking before the switch (a
        later session of the same docking has nothing to do), else DeviceError.
        """
        since = time.monotonic()

        def true_now() -> float:
            return now + (time.monotonic() - since)

        with self._lock:
            switched, set_before = self._storage is not None, self._clock_set
        if switched and not self.client.alive():
            if set_before:
                log.debug("camera %s: clock set before the switch to storage", self.port)
                return None
            raise DeviceError(f"camera {self.port}: its clock cannot be set now: its serial "
                              "interface left when it switched to USB storage (the clock is set "
                              "when it docks, before the switch)")
        before = self._clock_offset(true_now)
        after = before
        for attempt in (1, 2):
            old, sent, attempts = self.client.sync_dev_time(now, since)
            log.debug("camera %s: SyncDevTime to %.3f in %d attempt(s); it said %.3f before",
                      self.port, sent, attempts, old)
            after = self._clock_offset(true_now)
            if abs(after) <= CLOCK_CONFIRM_S:
                break
            log.debug("camera %s: clock read back %+.3f s off after set %d", self.port, after,
                      attempt)
        else:
            raise DeviceError(f"camera {self.port}: setting the camera clock failed: it still "
                              f"reads {after:+.1f} s off after being set twice; the camera's "
                              "clock may be faulty")
        with self._lock:
            self._clock_set = True
        log.info("camera %s: clock was off by %+.3f s; set (now off by %+.3f s)", self.port,
                 before, after)
        return round(before, 3)

    def _clock_offset(self, true_now: Callable[[], float]) -> float:
        """Camera clock minus true time, read with GetDevTime (midpoint of the exchange)."""
        sent = true_now()
        camera_time = self.client.get_dev_time()
        return camera_time - (sent + true_now()) / 2

    def present(self) -> bool:
        """The volume is there, or the port is open and the camera answers."""
        with self._lock:
            storage = self._storage
        if storage is not None and storage.present():
            return True
        if not self.client.alive():
            return False
        if self.client.refused is not None:
            return True  # it answered, refusing the password: docked, and not asked again
        try:
            self.client.get_id_code()
        except DeviceError as exc:
            log.info("camera %s does not answer: %s", self.port, exc)
            return False
        return True

    def attached(self) -> bool:
        """Still docked, judged without talking to the camera (used by the detector)."""
        if self.client.alive():
            return True
        with self._lock:
            storage = self._storage
        return storage is not None and storage.present()

    def close(self, *, wait: bool = False) -> None:
        self.client.close(wait=wait)

    def __repr__(self) -> str:
        return f"Gat947Device({self.port!r})"


# One Device per port in the process: a second detector (``run --once`` makes new ones)
# gets the same object, so the Station's per-handle ownership and the port lock hold.
_LIVE: weakref.WeakValueDictionary[str, Gat947Device] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _claim(port: str, config: Gat947Config, make: Callable[[], Gat947Device]) -> Gat947Device:
    with _LIVE_LOCK:
        device = _LIVE.get(port)
        if device is not None and device.config == config and device.attached():
            return device
        if device is not None and not device.attached():
            device.close()
        device = make()
        _LIVE[port] = device
        return device


def _forget(device: Gat947Device) -> None:
    with _LIVE_LOCK:
        if _LIVE.get(device.port) is device:
            del _LIVE[device.port]
    device.close()


# --- configuration and detector ---------------------------------------------------------------

@dataclass(frozen=True)
class Gat947Config:
    mount_root: Path = option(doc="Directory where the automounter mounts a camera's storage "
                                  "after SetMSDC (e.g. /media/bwc-gat947); do not also give "
                                  "it to [devices.mass_storage].")
    ports: list[str] = option(default_factory=list,
                              doc="Serial devices of cameras (e.g. /dev/ttyACM0); empty: "
                                  "every USB serial port whose VID:PID the catalog lists.")
    baudrate: int = option(115200, min=1200, max=4_000_000, doc="Serial line speed.")
    password_file: Path | None = option(None, doc="File holding the camera password, first "
                                                  "line (mode 0600); unset: no password.")
    mount_timeout_s: float = option(20.0, min=0.1, max=600,
                                    doc="Seconds to wait for the volume after SetMSDC.")
    scan_interval_s: float = option(2.0, min=0.05, max=300,
                                    doc="Seconds between looks at the serial ports.")
    catalog: Path | None = option(None, doc="Device catalog (USB ids, name patterns); "
                                            "default: the catalog shipped with bwc-agent.")
    catalog_key: str | None = option(None, doc="Catalog entry for ports whose USB id is "
                                               "unknown (e.g. a port given by path).")
    require_mount: bool = option(True, doc="The volume must be a mount point (tests: false).")
    command_timeout_s: float = option(1.0, min=0.05, max=30,
                                      doc="Seconds to wait for each response.")
    retries: int = option(2, min=0, max=10,
                          doc="Resends, 20 ms apart, after a timeout, a damaged answer or BUSY.")


class PortInfo(NamedTuple):
    path: str
    usb_id: str  # "vvvv:pppp", "" when unknown
    serial: str = ""  # USB serial number, "" when unknown
    usb_port: str = ""  # USB port path ("1-1.2"), "" when unknown

    def identity(self) -> UsbIdentity | None:
        if not self.usb_id:
            return None
        return UsbIdentity(usb_id=self.usb_id, serial=self.serial, port=self.usb_port)


class Gat947Detector:
    """Polls the serial ports every ``scan_interval_s`` and docks each camera port once.

    A docked device stays docked while its port is open and not hung up, or
    (after SetMSDC, when most cameras drop the serial interface) while its
    volume is there.  Callbacks run on the polling thread, one at a time.
    """

    def __init__(self, config: Gat947Config, context: DeviceContext | None = None) -> None:
        self.config = config
        self.context = context or DeviceContext()
        self.catalog = catalog_mod.load(config.catalog)
        self.fallback = self.catalog.get(config.catalog_key) if config.catalog_key else None
        self.password = read_password(config.password_file)
        self._usb_ids = frozenset(u for e in self.catalog.entries for u in e.usb_ids)
        self._lock = threading.RLock()
        self._known: dict[str, Gat947Device] = {}
        self._refused: dict[str, RefusedDevice] = {}
        self._on_dock: Callable[[Device], None] | None = None
        self._on_undock: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def ports(self) -> list[PortInfo]:
        """Candidate ports now: the configured ones that exist, else catalog USB ids."""
        by_path: dict[str, PortInfo] = {}
        try:
            for p in list_ports.comports():
                if p.vid is not None and p.pid is not None:
                    by_path[os.path.realpath(p.device)] = PortInfo(
                        p.device, f"{p.vid:04x}:{p.pid:04x}",
                        str(getattr(p, "serial_number", None) or ""),
                        # location is "<usb port>:<configuration>.<interface>", e.g. 1-1.2:1.0
                        str(getattr(p, "location", None) or "").split(":", 1)[0])
        except (OSError, ValueError) as exc:
            log.warning("cannot list serial ports: %s", exc)
        if self.config.ports:
            return [by_path.get(os.path.realpath(path), PortInfo(path, ""))._replace(path=path)
                    for path in self.config.ports if os.path.exists(path)]
        return sorted(p for p in by_path.values() if p.usb_id in self._usb_ids)

    def _device_for(self, port: PortInfo) -> Gat947Device:
        entry = self.catalog.match_usb(port.usb_id) if port.usb_id else None
        if entry is None:
            entry = self.fallback
        if entry is None:
            log.warning("camera port %s (USB %s) matches no catalog entry: no model, no name "
                        "pattern", port.path, port.usb_id or "unknown")
        return _claim(port.path, self.config, lambda: Gat947Device(
            port.path, self.config, password=self.password, entry=entry, usb_id=port.usb_id,
            run_dir=self.context.run_dir, usb_port=port.usb_port))

    def _refusal(self, port: PortInfo) -> RefusedDevice | None:
        """A RefusedDevice for a port the device policy refuses; judged before any login."""
        entry = self.catalog.match_usb(port.usb_id) if port.usb_id else None
        # A port given by path with catalog_key set: IT staff named its catalog entry.
        catalogued = entry is not None or (self.fallback is not None and not port.usb_id
                                           and port.path in self.config.ports)
        identity = port.identity()
        reason = self.context.policy.refusal(identity, catalogued=catalogued)
        if reason is None:
            return None
        refusal = Refusal(identity=identity or UsbIdentity(usb_id=""), reason=reason,
                          policy=self.context.policy.policy, driver=KEY, handle=port.path,
                          facts={"device": port.path})
        return RefusedDevice(refusal, present=lambda: os.path.exists(port.path))

    def _reconcile(self) -> list[Device]:
        """Update the docked set, report changes if started; the devices docked now."""
        with self._lock:
            for path, device in list(self._known.items()):
                if not device.attached():
                    del self._known[path]
                    _forget(device)
                    log.info("undocked: %s", path)
                    if self._on_undock is not None:
                        self._on_undock(device.handle)
            for path, gone in list(self._refused.items()):
                if not gone.present():
                    del self._refused[path]
                    if self._on_undock is not None:
                        self._on_undock(gone.handle)
            for port in self.ports():
                if port.path in self._known or port.path in self._refused:
                    continue
                refused = self._refusal(port)
                if refused is not None:
                    self._refused[port.path] = refused
                    log.warning("%s", refused.refusal.message())
                    if self._on_dock is not None:
                        self._on_dock(refused)
                    continue
                device = self._device_for(port)
                self._known[port.path] = device
                log.info("docked: %s", port.path)
                if self._on_dock is not None:
                    self._on_dock(device)
            return [*self._known.values(), *self._refused.values()]

    def scan(self) -> list[Device]:
        return list(self._reconcile())

    def start(self, on_dock: Callable[[Device], None], on_undock: Callable[[str], None]) -> None:
        with self._lock:
            self._on_dock, self._on_undock = on_dock, on_undock
            # Devices handed out by an earlier scan() count as reported, like DockWatcher.
            self._reconcile()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="gat947-ports")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.wait(self.config.scan_interval_s):
            try:
                self._reconcile()
            except Exception:  # keep watching whatever one pass met
                log.exception("scanning serial ports for gat947 cameras failed")

    def stop(self) -> None:
        """Stop polling.  Docked devices stay open: a dock session may still be using one."""
        self._stopping.set()
        with self._lock:
            self._on_dock = self._on_undock = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def make_detector(config: object, context: DeviceContext | None = None) -> Detector:
    if not isinstance(config, Gat947Config):
        raise TypeError(f"gat947 driver: expected Gat947Config, got {type(config).__name__}")
    return Gat947Detector(config, context)


SPEC = DriverSpec(KEY, Gat947Config, make_detector)

