"""Cameras that show up as USB mass-storage volumes.

A camera is docked when a directory directly below ``mount_root`` is a
mount point (per ``mounts_file``, normally /proc/self/mounts).  Watchdog
reports directories appearing and vanishing under ``mount_root``; mounting
and unmounting change no directory entry there, so the mount table is
also watched (poll() on /proc/self/mounts wakes on every change, and a
rescan runs every ``rescan_interval_s`` regardless).

Identification goes from the mount source to the USB device in sysfs:
``/dev/sdb1`` -> ``<sysfs_root>/class/block/sdb1`` (a symlink into
``devices/.../usb1/1-1/1-1:1.0/host0/.../block/sdb/sdb1``) -> up the parents
to the first directory with ``idVendor`` and ``idProduct`` (the USB device)
-> VID:PID, serial, manufacturer, product.  The VID:PID selects the catalog
entry (model, name pattern, extensions); the officer comes from the names.

A camera the catalog does not know (or a volume without USB ids) is still
ingested: vendor and model from sysfs, the default extensions, and the
catalog's name pattern that matches most of its file names, if any (the
clips whose names it matched carry the flag ``name.pattern:<catalog key>``).
Without a USB serial the serial is taken from the file names, else
``volume:<directory name>`` (the ``volume:`` prefix marks a serial that is
not the device's own).
"""

# option() returns a dataclasses.field; ruff's RUF009 cannot tell it from a call.

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import select
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

from agent.configschema import option
from agent.devicepolicy import Refusal, UsbIdentity
from agent.errors import DeviceError, DeviceGoneError
from agent.mount import notes
from drivers import catalog as catalog_mod
from drivers.base import (
    Detector,
    Device,
    DeviceContext,
    DeviceInfo,
    DriverSpec,
    Listing,
    Recording,
)
from drivers.paths import os_error, printable_name
from drivers.refused import RefusedDevice
from drivers.volume import DockWatcher, VolumeDevice

log = logging.getLogger(__name__)

KEY = "mass_storage"
VOLUME_SERIAL_PREFIX = "volume:"
_DEFAULT_EXTENSIONS = ["mp4", "mov", "avi", "mkv", "ts", "3gp", "jpg", "wav", "mp3", "amr"]
_ATTR_MAX = 4096


@dataclass(frozen=True)
class MassStorageConfig:
    mount_root: Path = option(doc="Directory under which camera volumes are mounted "
                                  "(e.g. /media/bwc).")
    sysfs_root: Path = option(Path("/sys"), doc="sysfs, where USB devices are identified.")
    mounts_file: Path = option(Path("/proc/self/mounts"), doc="The mount table.")
    catalog: Path | None = option(None, doc="Device catalog (USB ids, name patterns); "
                                            "default: the catalog shipped with bwc-agent.")
    require_mount: bool = option(True, doc="Only directories that are mount points are cameras.")
    extensions: list[str] = option(
        default_factory=lambda: list(_DEFAULT_EXTENSIONS),
        doc="Recording extensions of cameras the catalog does not know.")
    rescan_interval_s: float = option(2.0, min=0.05, max=300,
                                      doc="Seconds between re-reads of the mount table.")


@dataclass(frozen=True)
class UsbInfo:
    """A USB device as sysfs describes it."""

    vendor_id: str  # 4 lower-case hex digits
    product_id: str
    serial: str
    manufacturer: str
    product: str
    sysfs_path: Path

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id}:{self.product_id}"

    @property
    def port(self) -> str:
        """The USB port path (sysfs name of the USB device, e.g. ``1-1.2``)."""
        return self.sysfs_path.name


def _unescape(field: bytes) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo.
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


@dataclass(frozen=True)
class MountEntry:
    """One line of a mounts file, unescaped."""

    source: str
    point: str
    fstype: str
    options: frozenset[str]


def read_mount_table(mounts_file: Path) -> list[MountEntry]:
    """Every mount in a mounts file (normally /proc/self/mounts), in order."""
    try:
        data = mounts_file.read_bytes()
    except OSError as exc:
        raise DeviceError(f"cannot read the mount table {mounts_file}: {exc.strerror}") from exc
    entries = []
    for line in data.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            entries.append(MountEntry(
                source=_unescape(fields[0]), point=_unescape(fields[1]),
                fstype=_unescape(fields[2]) if len(fields) > 2 else "",
                options=frozenset(_unescape(fields[3]).split(",")) if len(fields) > 3
                else frozenset()))
    return entries


def read_mounts(mounts_file: Path) -> dict[str, str]:
    """Mount point -> source, from a mounts file (the last mount on a point wins)."""
    return {entry.point: entry.source for entry in read_mount_table(mounts_file)}


def block_name(source: str) -> str | None:
    """Kernel block device name of a mount source (``/dev/sdb1`` -> ``sdb1``), or None."""
    if not source.startswith("/dev/"):
        return None
    name = os.path.basename(os.path.realpath(source))  # /dev/disk/by-uuid/... are links
    return name or None


def usb_device_dir(sysfs_root: Path, block: str) -> Path | None:
    """The sysfs directory of the USB device behind block device ``block``, or None."""
    link = sysfs_root / "class" / "block" / block
    if "/" in block or block in (".", "..") or not os.path.lexists(link):
        return None
    top = Path(os.path.realpath(sysfs_root))
    current = Path(os.path.realpath(link))
    while current != top and top in current.parents:
        if (current / "idVendor").is_file() and (current / "idProduct").is_file():
            return current
        current = current.parent
    return None


def _attr(directory: Path, name: str) -> str:
    try:
        with open(directory / name, "rb") as f:
            return f.read(_ATTR_MAX).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def read_usb_info(usb_dir: Path) -> UsbInfo:
    return UsbInfo(
        vendor_id=_attr(usb_dir, "idVendor").lower(),
        product_id=_attr(usb_dir, "idProduct").lower(),
        serial=_attr(usb_dir, "serial"),
        manufacturer=_attr(usb_dir, "manufacturer"),
        product=_attr(usb_dir, "product"),
        sysfs_path=usb_dir,
    )


def usb_for_source(sysfs_root: Path, source: str) -> UsbInfo | None:
    """The USB device a mount source lives on, or None (not USB, or not found)."""
    block = block_name(source)
    if block is None:
        return None
    usb_dir = usb_device_dir(sysfs_root, block)
    return read_usb_info(usb_dir) if usb_dir is not None else None


@dataclass(frozen=True)
class StationMount:
    """A volume the station's mount helper mounted: its note, and where to say "done"."""

    run_dir: Path
    note: notes.MountNote

    def done(self) -> None:
        notes.write_done(self.run_dir, self.note.name, self.note.token)
        log.info("done with %s: the mount helper unmounts it", self.note.mount_point)


def station_mount(run_dir: Path | None, mount_point: Path, source: str | None
                  ) -> StationMount | None:
    """The helper's note for the volume at ``mount_point``, if the station mounted it."""
    if run_dir is None or source is None:
        return None
    note = notes.read_mounted(run_dir, mount_point.name)
    if note is None or note.mount_point != str(mount_point) or note.device != source:
        return None
    return StationMount(run_dir, note)


class _GoneAware(io.RawIOBase):
    """A recording's stream whose read errors say "gone" once the volume is unmounted."""

    def __init__(self, inner: BinaryIO, device: MassStorageDevice) -> None:
        super().__init__()
        self.inner, self.device = inner, device

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except OSError as exc:
            raise self.device._gone_or(os_error(exc, f"reading {self.device.root}")) from exc

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.inner.close()
        except OSError as exc:  # FUSE reports a dead connection on close too
            raise self.device._gone_or(os_error(exc, f"closing a file on {self.device.root}")
                                       ) from exc
        finally:
            super().close()


class MassStorageDevice(VolumeDevice):
    """A mounted camera volume.

    ``known`` is an identity established otherwise (e.g. by the gat947
    serial protocol before it switched the camera to mass storage); when
    given, ``identify()`` returns it unchanged.
    """

    driver_key = KEY

    def __init__(self, mount_point: Path, *, usb: UsbInfo | None,
                 entry: catalog_mod.Entry | None, extensions: Iterable[str],
                 mounts_file: Path | None = None, known: DeviceInfo | None = None,
                 catalog: catalog_mod.Catalog | None = None,
                 station_mount: StationMount | None = None) -> None:
        super().__init__(mount_point, entry.extensions if entry is not None else extensions)
        self.usb = usb
        self.entry = entry
        self.mounts_file = mounts_file
        self.known = known
        self.catalog = catalog  # whose patterns are tried when ``entry`` is None
        self.guessed: catalog_mod.Entry | None = None  # the pattern the names matched
        self.station_mount = station_mount

    @property
    def names_entry(self) -> catalog_mod.Entry | None:
        """The catalog entry whose pattern this camera's names are read with."""
        return self.entry or self.guessed

    def recordings(self) -> Listing:
        listing = super().recordings()
        if self.entry is None and self.catalog is not None:
            self.guessed = self.catalog.guess([r.name for r in listing.recordings])
            listing.recordings = [self.annotate(r) for r in listing.recordings]
        return listing

    # --- a volume that goes away is "gone", not "unreadable" ---------------------------------

    def _gone_or(self, exc: DeviceError) -> DeviceError:
        """``exc``, or DeviceGoneError when the volume is no longer mounted (yanked)."""
        if isinstance(exc, DeviceGoneError) or self.present():
            return exc
        return DeviceGoneError(f"{self.root} is no longer mounted (device removed): {exc}")

    def open(self, recording: Recording) -> BinaryIO:
        try:
            return cast(BinaryIO, _GoneAware(super().open(recording), self))
        except DeviceError as exc:
            raise self._gone_or(exc) from exc

    def stat(self, recording: Recording) -> tuple[int, float]:
        try:
            return super().stat(recording)
        except DeviceError as exc:
            raise self._gone_or(exc) from exc

    # --- station-mounted volumes ---------------------------------------------------------------

    def station_mounted(self) -> bool:
        return self.station_mount is not None

    def detach(self) -> None:
        """Tell the mount helper the station is done with this volume (it unmounts it)."""
        if self.station_mount is not None:
            self.station_mount.done()

    def annotate(self, recording: Recording) -> Recording:
        entry = self.names_entry
        if entry is None:
            return recording
        info = catalog_mod.parse_name(entry, recording.name)
        flags = recording.name_flags
        guessed = f"name.pattern:{entry.key}"
        if self.entry is None and guessed not in flags and entry.pattern.fullmatch(
                recording.name):
            flags = (*flags, guessed)
        return replace(recording, recorded_start=info.recorded_start, important=info.important,
                       name_flags=flags)

    def _from_names(self) -> tuple[str, str]:
        """Most common (officer, serial) in the recording names; '' where unknown."""
        recordings = self.recordings().recordings
        entry = self.names_entry
        if entry is None:
            return "", ""
        officers: Counter[str] = Counter()
        serials: Counter[str] = Counter()
        for rec in recordings:
            fields = catalog_mod.name_fields(entry, rec.name)
            if "officer" in fields:
                officers[fields["officer"]] += 1
            if "serial" in fields:
                serials[fields["serial"]] += 1

        def top(c: Counter[str]) -> str:
            # Most common; ties broken by the smaller value, so the result is stable.
            return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else ""

        return top(officers), top(serials)

    def identify(self) -> DeviceInfo:
        if self.known is not None:
            return self.known
        officer, name_serial = self._from_names()
        usb, entry = self.usb, self.entry
        pattern = self.names_entry
        serial = (usb.serial if usb is not None and usb.serial else "") or name_serial
        if not serial and self.station_mount is not None and self.station_mount.note.uuid:
            # The station names mount points by kernel name (sdb1): the file system's
            # volume id is the stabler fallback.
            serial = VOLUME_SERIAL_PREFIX + self.station_mount.note.uuid
        if not serial:
            serial = VOLUME_SERIAL_PREFIX + printable_name(os.fsencode(self.root.name))
        return DeviceInfo(
            serial=serial,
            vendor=entry.vendor if entry else (usb.manufacturer if usb else ""),
            model=entry.model if entry else (usb.product if usb else ""),
            officer_id=officer,
            clock=None,
            driver=KEY,
            usb_id=usb.usb_id if usb is not None else "",
            name_pattern=pattern.name_pattern if pattern else None,
        )

    def present(self) -> bool:
        if not super().present():
            return False
        if self.mounts_file is None:
            return True
        try:
            return str(self.root) in read_mounts(self.mounts_file)
        except DeviceError:
            return False


class MassStorageDetector(DockWatcher):
    """Watches ``mount_root`` and the mount table for camera volumes."""

    def __init__(self, config: MassStorageConfig, context: DeviceContext | None = None) -> None:
        # Mount tables hold resolved paths; compare like with like.
        super().__init__(Path(os.path.realpath(config.mount_root)))
        self.config = config
        self.context = context or DeviceContext()
        self.catalog = catalog_mod.load(config.catalog)
        self.rescan_interval_s = config.rescan_interval_s
        self._mounts_fd: int | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.config.require_mount:
            read_mounts(self.config.mounts_file)  # fail at start, naming the file
            if str(self.config.mounts_file).startswith("/proc/"):
                with contextlib.suppress(OSError):
                    self._mounts_fd = os.open(self.config.mounts_file, os.O_RDONLY | os.O_CLOEXEC)

    def wait_for_change(self, timeout: float) -> None:
        fd = self._mounts_fd
        if fd is None:
            super().wait_for_change(timeout)
            return
        # The kernel flags POLLPRI|POLLERR on a mounts file when the table changes.
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        poller.poll(int(timeout * 1000))

    def stop(self) -> None:
        super().stop()
        if self._mounts_fd is not None:
            os.close(self._mounts_fd)
            self._mounts_fd = None

    def probe(self, name: str) -> Device | None:
        mount_point = self.root / name
        try:
            if not stat.S_ISDIR(os.stat(mount_point, follow_symlinks=False).st_mode):
                return None
        except OSError:
            return None
        entry: MountEntry | None = None
        if self.config.require_mount:
            entry = _mount_at(self.config.mounts_file, mount_point)
            if entry is None:
                return None
        else:
            with contextlib.suppress(DeviceError):  # not required, but identifies the device
                entry = _mount_at(self.config.mounts_file, mount_point)
        source = entry.source if entry is not None else None
        if entry is not None and not _ready(entry, self.context.run_dir, mount_point):
            return None  # the helper is still securing it; its remount wakes us again
        usb = usb_for_source(self.config.sysfs_root, source) if source else None
        refused = self._refused(mount_point, source, usb)
        return refused if refused is not None else self.device_at(mount_point, source, usb=usb)

    def _refused(self, mount_point: Path, source: str | None,
                 usb: UsbInfo | None) -> RefusedDevice | None:
        """A RefusedDevice when the policy refuses the volume's USB device, else None."""
        identity = usb_identity(usb)
        catalogued = usb is not None and self.catalog.match_usb(usb.usb_id) is not None
        reason = self.context.policy.refusal(identity, catalogued=catalogued)
        if reason is None:
            return None
        handle = printable_name(os.fsencode(mount_point))
        refusal = Refusal(identity=identity or UsbIdentity(usb_id=""), reason=reason,
                          policy=self.context.policy.policy, driver=KEY, handle=handle,
                          facts={"device": source or ""})
        mounted = station_mount(self.context.run_dir, mount_point, source)
        mounts_file = self.config.mounts_file

        def still_mounted() -> bool:
            try:
                return str(mount_point) in read_mounts(mounts_file)
            except DeviceError:
                return False

        return RefusedDevice(refusal, handle=handle, present=still_mounted,
                             on_recorded=mounted.done if mounted is not None else None)

    def device_at(self, mount_point: Path, source: str | None,
                  known: DeviceInfo | None = None, *,
                  usb: UsbInfo | None = None) -> MassStorageDevice:
        """A device for a volume mounted at ``mount_point`` from ``source`` (e.g. /dev/sdb1)."""
        if usb is None and source:
            usb = usb_for_source(self.config.sysfs_root, source)
        entry = self.catalog.match_usb(usb.usb_id) if usb is not None else None
        if usb is not None and entry is None:
            log.warning("camera %s (USB %s, %s %s) is not in the device catalog",
                        mount_point, usb.usb_id, usb.manufacturer, usb.product)
        return MassStorageDevice(
            mount_point, usb=usb, entry=entry, extensions=self.config.extensions,
            mounts_file=self.config.mounts_file if self.config.require_mount else None,
            known=known, catalog=self.catalog,
            station_mount=station_mount(self.context.run_dir, mount_point, source),
        )


def _mount_at(mounts_file: Path, mount_point: Path) -> MountEntry | None:
    found = None
    for entry in read_mount_table(mounts_file):
        if entry.point == str(mount_point):
            found = entry  # the last mount on a point is the visible one
    return found


STATION_MOUNT_FLAGS = frozenset({"nosuid", "nodev", "noexec"})


def _ready(entry: MountEntry, run_dir: Path | None, mount_point: Path) -> bool:
    """A volume the station's helper is mounting is read only once it has its safe flags."""
    if run_dir is None or notes.read_mounted(run_dir, mount_point.name) is None:
        return True
    return entry.options >= STATION_MOUNT_FLAGS


def usb_identity(usb: UsbInfo | None) -> UsbIdentity | None:
    """What the device policy judges: the USB ids, serial and port from sysfs."""
    if usb is None:
        return None
    return UsbIdentity(usb_id=usb.usb_id, serial=usb.serial, port=usb.port,
                       manufacturer=usb.manufacturer, product=usb.product)


def make_detector(config: object, context: DeviceContext | None = None) -> Detector:
    if not isinstance(config, MassStorageConfig):
        raise TypeError(f"mass_storage driver: expected MassStorageConfig, "
                        f"got {type(config).__name__}")
    return MassStorageDetector(config, context)


SPEC = DriverSpec(KEY, MassStorageConfig, make_detector)
