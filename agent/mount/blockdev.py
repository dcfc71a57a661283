"""The block device udev named, checked before anything trusts it.

udev hands the helper a kernel name (``%k``: ``sdb1``) and, where it runs a
program directly, an environment (DEVNAME, ID_BUS, ID_FS_TYPE...).  All of it
is treated as hostile input:

* the name must be a plain kernel name (``[a-z][a-z0-9]*``, no ``/``, no ``..``);
* ``/dev/<name>`` must be a block device node (not a symlink) whose major:minor
  is the one sysfs gives for ``class/block/<name>``;
* a DEVNAME, ACTION or SUBSYSTEM in the environment must agree with that;
* the file system type comes from probing the device itself (``blkid -p``);
  a different ID_FS_TYPE in the environment means the medium changed since
  the event, and the device is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import DeviceError
from agent.mount.notes import KERNEL_NAME

_FSTYPE = re.compile(r"[a-z0-9_]{1,16}")
_UUID = re.compile(r"[0-9A-Fa-f-]{1,36}")
BLKID_TIMEOUT_S = 20.0


class BadDeviceError(DeviceError):
    """The device udev named is not a usable block device (a usage error of the helper)."""


@dataclass(frozen=True)
class BlockDevice:
    name: str  # kernel name, e.g. "sdb1"
    node: Path  # /dev/<name>
    sysfs: Path  # <sysfs_root>/class/block/<name>
    rdev: int

    def present(self) -> bool:
        """Whether the same device is still there with a medium (size > 0)."""
        try:
            st = os.stat(self.node, follow_symlinks=False)
            if not stat.S_ISBLK(st.st_mode) or st.st_rdev != self.rdev:
                return False
            with open(self.sysfs / "size", "rb") as f:
                return int(f.read(32).strip() or b"0") > 0
        except (OSError, ValueError):
            return False


def kernel_name(arg: str) -> str:
    """``sdb1`` from ``sdb1`` or ``/dev/sdb1``; BadDeviceError for anything else."""
    name = arg.removeprefix("/dev/")
    if not KERNEL_NAME.fullmatch(name):
        raise BadDeviceError(f"{arg!r} is not a kernel block device name (like sdb1)")
    return name


def open_device(arg: str, *, sysfs_root: Path, env: Mapping[str, str],
                dev_root: Path = Path("/dev")) -> BlockDevice:
    name = kernel_name(arg)
    node = dev_root / name
    for key, want in (("DEVNAME", str(node)), ("SUBSYSTEM", "block"), ("ACTION", "add")):
        given = env.get(key)
        if given is not None and given != want:
            raise BadDeviceError(f"{name}: udev says {key}={given!r}, expected {want!r}")
    try:
        st = os.stat(node, follow_symlinks=False)
    except OSError as exc:
        raise BadDeviceError(f"{node}: {exc.strerror} (the device is gone?)") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise BadDeviceError(f"{node} is not a block device")
    sysfs = sysfs_root / "class" / "block" / name
    try:
        with open(sysfs / "dev", "rb") as f:
            numbers = f.read(32).decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadDeviceError(f"{name}: not in sysfs ({sysfs}/dev unreadable)") from exc
    if numbers != f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}":
        raise BadDeviceError(f"{node} is {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} but "
                             f"sysfs says {numbers!r} for {name}")
    return BlockDevice(name=name, node=node, sysfs=sysfs, rdev=st.st_rdev)


@dataclass(frozen=True)
class Probe:
    fstype: str
    uuid: str


def probe(device: BlockDevice, env: Mapping[str, str]) -> Probe:
    """The file system on ``device``, from the device itself (``blkid -p``, no cache)."""
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    try:
        done = subprocess.run([blkid, "-p", "-o", "export", "--", str(device.node)],
                              capture_output=True, timeout=BLKID_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{device.node}: cannot probe the file system with blkid: {exc}"
                          ) from exc
    fields: dict[str, str] = {}
    for line in done.stdout[:65536].splitlines():
        key, sep, value = line.partition(b"=")
        if sep and key in (b"TYPE", b"UUID"):
            fields[key.decode()] = value.decode("utf-8", errors="replace")
    fstype = fields.get("TYPE", "")
    if not _FSTYPE.fullmatch(fstype):
        raise DeviceError(f"{device.node}: no file system found (blkid exit {done.returncode})")
    given = env.get("ID_FS_TYPE")
    if given is not None and given != fstype:
        raise DeviceError(f"{device.node}: udev saw file system {given!r}, the device now holds "
                          f"{fstype!r} (medium changed); not mounted")
    uuid = fields.get("UUID", "")
    return Probe(fstype=fstype, uuid=uuid if _UUID.fullmatch(uuid) else "")
