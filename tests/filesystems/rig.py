"""A station on real file systems: loop devices, the mount helper as udev starts it, the daemon.

What is real here: the FAT32 and exFAT images (mkfs.vfat/mkfs.exfat, names
written as camera firmware writes them), the loop block devices, the mount
helper (``bwc-agent mount``, the installed console script, run as the
``bwc-mount@.service`` unit runs it), the kernel or FUSE mounts it makes,
the daemon (``bwc-agent run``), the store and the vault.

What stands in for what cannot run here: USB hardware and udev events.  A
loop device is given a USB identity by a sysfs-shaped tree (``class/block/
loopN`` links into a USB device directory holding idVendor, idProduct,
serial; the mass_storage driver and the helper walk it with the same code
as /sys), and the udev event is the helper started with the environment
udev gives (DEVNAME, ID_BUS, ID_VENDOR_ID, ...).  Pulling a camera out is:
its sysfs entry goes (as the kernel removes it), the loop device is
detached, and the unit gets SIGTERM (systemd's ``BindsTo=``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.mount import fs
from agent.vault import Vault
from tests.filesystems.fatimage import Fat32Image

BWC_AGENT = str(Path(sys.executable).with_name("bwc-agent"))
TOOLS = ("losetup", "mkfs.vfat", "mkfs.exfat", "fusefat", "mount.exfat-fuse", "blkid",
         "mount", "umount", "fsck.vfat")
WAIT_S = 30.0
USB_BASE = "devices/pci0000:00/0000:00:14.0/usb1"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts); CI runs these as root"
    for dev in ("/dev/loop-control", "/dev/fuse"):
        if not os.path.exists(dev):
            return f"needs {dev}"
    for tool in TOOLS:
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"needs {tool} (scripts/setup installs it)"
    return None


MISSING = _missing()
needs_filesystems = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@dataclass(frozen=True)
class Usb:
    """The USB identity a loop device is given (as a camera's descriptors would say)."""

    vid: str
    pid: str
    serial: str
    port: str
    manufacturer: str = "Generic"
    product: str = "DSJ"

    @property
    def usb_id(self) -> str:
        return f"{self.vid}:{self.pid}"


CAMERA = Usb("0603", "8612", "ZFY0001CAM", "1-1", product="DSJ-Z1")  # catalogued (Novatek)
STICK = Usb("0781", "5567", "4C530001", "1-2", "SanDisk", "Cruzer Blade")  # a private stick
STOLEN = Usb("0603", "8612", "ZFY0666LOST", "1-3")  # catalogued model, a blocked serial
OTHER_CAMERA = Usb("4255", "0001", "AMBA0002", "1-4")  # catalogued, not on an allow-list


@dataclass
class Volume:
    image: Path
    usb: Usb
    fstype: str
    files: dict[str, bytes]  # path as the station should name it -> bytes
    loop: str = ""  # kernel name, e.g. loop3
    helper: subprocess.Popen[bytes] | None = None
    outcome: str = ""

    @property
    def node(self) -> str:
        return f"/dev/{self.loop}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=True, timeout=120, **kw)  # type: ignore[call-overload, no-any-return]


# --- images -------------------------------------------------------------------------------------

def fat32_image(path: Path, entries: list[tuple[str, str | None, bytes]],
                dirs: tuple[str, ...] = ("DCIM",)) -> dict[str, bytes]:
    """A FAT32 image; ``entries`` are (GBK 8.3 short name, long name or None, data) in DCIM.

    Returns station name (long name, else the short name decoded) -> bytes.
    """
    with open(path, "wb") as f:
        f.truncate(40 * 1024 * 1024)  # sparse; FAT32 needs 65525 clusters of 512 bytes
    run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "CAMERA", "-i", "1234ABCD",
         str(path)])
    files: dict[str, bytes] = {}
    with Fat32Image(path) as img:
        parent = ""
        for name in dirs:
            parent = img.mkdir(parent, name)
        for short, long_name, data in entries:
            files[img.add_file(parent, short, data, long_name=long_name)] = data
    run(["fsck.vfat", "-n", str(path)])  # the reference tool agrees the image is sound
    return files


def exfat_image(path: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """An exFAT image holding ``files`` (written through exfat-fuse, names as UTF-16)."""
    with open(path, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    run(["mkfs.exfat", "-L", "CAMERA", str(path)])
    loop = run(["losetup", "-f", "--show", str(path)]).stdout.decode().strip()
    point = path.with_suffix(".fill")
    point.mkdir()
    try:
        run(["mount.exfat-fuse", loop, str(point)])
        try:
            for rel, data in files.items():
                target = point / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        finally:
            run(["umount", str(point)])
    finally:
        run(["losetup", "-d", loop])
        point.rmdir()
    run(["fsck.exfat", "-n", str(path)])
    return dict(files)


# --- the station --------------------------------------------------------------------------------

@dataclass
class Rig:
    base: Path
    volumes: list[Volume] = field(default_factory=list)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("sys/class/block", "images", "data"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        self.mount_root.mkdir(mode=0o755)  # as OPERATIONS.md has IT staff create it
        self.config_path = self.base / "station.toml"
        self.data_dir = self.base / "data"
        self.write_config()

    @property
    def mount_root(self) -> Path:
        return self.base / "media"

    @property
    def run_dir(self) -> Path:
        return self.base / "run" / "volumes"

    def station_tables(self, *, hold_s: float = 600) -> str:
        """The tables for station-mounted cameras (for a configuration written elsewhere)."""
        return textwrap.dedent(f"""
            [devices.mass_storage]
            mount_root = "{self.mount_root}"
            sysfs_root = "{self.base / 'sys'}"
            rescan_interval_s = 0.2

            [mount]
            user = "nobody"
            run_dir = "{self.run_dir}"
            hold_s = {hold_s}

            [ingest]
            chunk_kib = 64
            min_free_mb = 0
            """)

    def write_config(self, devices: str = "", extra: str = "", *, hold_s: float = 600) -> None:
        self.config_path.write_text(textwrap.dedent(f"""\
            [station]
            id = "ST-FS01"
            data_dir = "{self.data_dir}"

            [devices]
            """) + textwrap.dedent(devices) + self.station_tables(hold_s=hold_s)
            + textwrap.dedent(extra), encoding="utf-8")

    # --- devices -----------------------------------------------------------------------------

    def add(self, image: Path, usb: Usb, fstype: str, files: dict[str, bytes]) -> Volume:
        volume = Volume(image, usb, fstype, files)
        self.volumes.append(volume)
        return volume

    def plug(self, volume: Volume) -> Volume:
        """Attach the image as a block device with the volume's USB identity in sysfs."""
        volume.loop = Path(run(["losetup", "-f", "--show", str(volume.image)]
                               ).stdout.decode().strip()).name
        real = Path("/sys/class/block") / volume.loop
        usb = volume.usb
        device = self.base / "sys" / USB_BASE / usb.port
        if not device.exists():
            device.mkdir(parents=True)
            for attr, value in (("idVendor", usb.vid), ("idProduct", usb.pid),
                                ("serial", usb.serial), ("manufacturer", usb.manufacturer),
                                ("product", usb.product)):
                (device / attr).write_text(value + "\n")
        block = device / f"{usb.port}:1.0/host6/target6:0:0/6:0:0:0/block" / volume.loop
        block.mkdir(parents=True, exist_ok=True)
        for attr in ("dev", "size"):
            (block / attr).write_text((real / attr).read_text())
        link = self.base / "sys/class/block" / volume.loop
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.path.relpath(block, link.parent))
        return volume

    def udev_env(self, volume: Volume) -> dict[str, str]:
        """The environment udev gives a program for this device's ``add`` event."""
        usb = volume.usb
        return {"ACTION": "add", "SUBSYSTEM": "block", "DEVNAME": volume.node,
                "DEVTYPE": "disk", "ID_BUS": "usb", "ID_USB_DRIVER": "usb-storage",
                "ID_VENDOR_ID": usb.vid, "ID_MODEL_ID": usb.pid,
                "ID_SERIAL_SHORT": usb.serial, "ID_FS_USAGE": "filesystem",
                "ID_FS_TYPE": volume.fstype}

    def start_helper(self, volume: Volume) -> subprocess.Popen[bytes]:
        """``bwc-agent mount --config F <kernel name>``, as bwc-mount@<name>.service runs it."""
        env = {**os.environ, **self.udev_env(volume)}
        volume.helper = subprocess.Popen(
            [BWC_AGENT, "mount", "--config", str(self.config_path), volume.loop],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return volume.helper

    def dock(self, volume: Volume) -> Volume:
        """Plug the camera in and run the helper; returns once it is mounted (or refused)."""
        self.plug(volume)
        self.start_helper(volume)
        deadline = time.monotonic() + WAIT_S
        assert volume.helper is not None
        while not self._secured(volume):
            if volume.helper.poll() is not None:
                self.finish(volume)  # refused, or failed: its output says which
                return volume
            assert time.monotonic() < deadline, "the helper did not mount the volume"
            time.sleep(0.05)
        return volume

    def _secured(self, volume: Volume) -> bool:
        entry = fs.entry_at(self.point(volume))
        return (self.run_dir / f"{volume.loop}.json").exists() and entry is not None and \
            entry.options >= {"rw", "nosuid", "nodev", "noexec"}

    def finish(self, volume: Volume, timeout: float = WAIT_S) -> str:
        """Wait for the helper to end; its last word ("done", "refused", ...)."""
        assert volume.helper is not None
        out, err = volume.helper.communicate(timeout=timeout)
        text = out.decode().strip()
        assert volume.helper.returncode == 0, (volume.helper.returncode, text, err.decode())
        volume.outcome = text.rsplit(": ", 1)[-1]
        return volume.outcome

    def unplug(self, volume: Volume) -> None:
        """The camera leaves the dock: the kernel drops its block device."""
        (self.base / "sys/class/block" / volume.loop).unlink()
        run(["losetup", "-d", volume.node])

    def yank(self, volume: Volume) -> None:
        """The camera is pulled out while mounted: systemd stops the unit (BindsTo=)."""
        self.unplug(volume)
        assert volume.helper is not None
        volume.helper.send_signal(signal.SIGTERM)
        self.finish(volume)

    def point(self, volume: Volume) -> Path:
        return self.mount_root / volume.loop

    # --- the daemon --------------------------------------------------------------------------

    def run_once(self) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([BWC_AGENT, "run", "--once", "--config", str(self.config_path)],
                              capture_output=True, timeout=180, check=False)

    def start_daemon(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([BWC_AGENT, "run", "--config", str(self.config_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.daemons.append(proc)
        return proc

    def stop_daemon(self, proc: subprocess.Popen[bytes]) -> str:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        return err.decode()

    def db(self) -> sqlite3.Connection:
        con = sqlite3.connect(f"file:{self.data_dir / 'state.db'}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        return con

    def clips(self) -> list[sqlite3.Row]:
        with contextlib.closing(self.db()) as con:
            return con.execute("SELECT * FROM clips ORDER BY path").fetchall()

    def log_entries(self, kind: str) -> list[dict[str, object]]:
        import json

        with contextlib.closing(self.db()) as con:
            rows = con.execute("SELECT body FROM custody_log WHERE kind = ? ORDER BY seq",
                               (kind,)).fetchall()
        return [json.loads(r["body"]) for r in rows]

    def wait_for(self, predicate: object, what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    # --- what every test asserts -------------------------------------------------------------

    def assert_in_vault(self, volume: Volume) -> None:
        """Every recording of ``volume`` is in the vault, byte for byte (SHA-256)."""
        by_path = {row["path"]: row for row in self.clips()}
        for path, data in volume.files.items():
            assert path in by_path, (path, sorted(by_path))
            row = by_path[path]
            assert row["sha256"] == sha(data), path
            stored = Vault(self.data_dir / "vault").path_for(row["sha256"])
            assert sha(stored.read_bytes()) == sha(data), path

    def assert_nothing_mounted(self) -> None:
        mounts = Path("/proc/self/mounts").read_text()
        assert str(self.base) not in mounts, mounts
        for volume in self.volumes:
            attached = run(["losetup", "-j", str(volume.image)]).stdout.decode()
            assert attached == "", attached
        assert not any(self.mount_root.iterdir()) if self.mount_root.exists() else True

    def cleanup(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for volume in self.volumes:
            if volume.helper is not None and volume.helper.poll() is None:
                volume.helper.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    volume.helper.communicate(timeout=20)
                if volume.helper.poll() is None:
                    volume.helper.kill()
                    volume.helper.communicate()
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(self.base)):
                subprocess.run(["umount", "-l", point], check=False)
        for volume in self.volumes:
            found = subprocess.run(["losetup", "-j", str(volume.image)], capture_output=True,
                                   check=False).stdout.decode()
            for line in found.splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


@contextlib.contextmanager
def station_rig(base: Path) -> Iterator[Rig]:
    rig = Rig(base)
    try:
        yield rig
    finally:
        rig.cleanup()
