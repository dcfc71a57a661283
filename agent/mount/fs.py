"""Mounting a camera's FAT or exFAT volume: the kernel driver, or FUSE where the kernel has none.

Options, whichever way it is mounted (and checked in the mount table after):

* ``rw``: release deletes acknowledged clips from the camera;
* ``nosuid,nodev,noexec``: nothing on a camera runs or opens a device node;
* ``noatime``: reading a clip must not write to the camera (FAT keeps access dates);
* owner = the agent's user, files 0640, directories 0750 (``fmask``/``dmask``);
  other users get nothing;
* names: FAT long names are UTF-16 and short names are in the camera's code page
  (936, GBK, on Chinese cameras): kernel vfat gets ``utf8,codepage=936``; exFAT
  names are always UTF-16, so the kernel only needs ``iocharset=utf8``;
* no ``sync``: the agent fsyncs what matters, and sync mounts wear cards out.

FUSE is a product feature, not a test crutch: minimal and embedded kernels
often ship without vfat/exfat modules, and Debian's ``fusefat`` and
``exfat-fuse`` then read the same volumes.  The FUSE program runs in the
foreground as the helper's child, so the helper sees it die.  fusefat
returns short names as their raw bytes (GBK on Chinese cameras); the agent
decodes those itself (UTF-8, else GBK, flagged ``name.gbk``).  FUSE cannot
apply nosuid/nodev/noexec/noatime itself everywhere, so the helper sets
them with a bind remount and checks the mount table either way.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import DeviceError
from drivers.mass_storage import MountEntry, read_mount_table

MOUNTS = Path("/proc/self/mounts")
SUPPORTED = ("vfat", "exfat")
FUSE_PROGRAMS = {"vfat": ("fusefat", "fusefat"), "exfat": ("mount.exfat-fuse", "exfat-fuse")}
SAFE_FLAGS = frozenset({"nosuid", "nodev", "noexec"})
FMASK, DMASK = "0137", "0027"
MOUNT_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def kernel_options(fstype: str, owner: Owner, codepage: int) -> str:
    options = ["rw", "nosuid", "nodev", "noexec", "noatime", f"uid={owner.uid}",
               f"gid={owner.gid}", f"fmask={FMASK}", f"dmask={DMASK}"]
    if fstype == "vfat":
        options += ["utf8", f"codepage={codepage}", "errors=remount-ro"]
    else:
        options += ["iocharset=utf8", "errors=remount-ro"]
    return ",".join(options)


def fuse_command(fstype: str, device: Path, point: Path, owner: Owner) -> list[str]:
    """The FUSE program, in the foreground, with the owner and safe options."""
    program = _program(FUSE_PROGRAMS[fstype][0])
    common = ["allow_other", "default_permissions", f"uid={owner.uid}", f"gid={owner.gid}",
              "nosuid", "nodev", "noexec", f"fsname={device}"]
    if fstype == "vfat":
        # rw+ is fusefat's (experimental) write mode: needed to delete released clips.
        return [program, "-f", "-o", ",".join(["rw+", *common, "umask=0027"]),
                str(device), str(point)]
    return [program, "-d", "-o", ",".join(["rw", *common, "noatime", f"fmask={FMASK}",
                                           f"dmask={DMASK}"]), str(device), str(point)]


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise DeviceError(f"{name} is not installed")
    return found


def kernel_supports(fstype: str) -> bool:
    """Whether the running kernel mounts ``fstype`` (loading its module if it can)."""
    if fstype in _kernel_filesystems():
        return True
    modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if modprobe is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([modprobe, "-q", fstype], capture_output=True, timeout=30,
                           check=False)
    return fstype in _kernel_filesystems()


def _kernel_filesystems() -> set[str]:
    try:
        text = Path("/proc/filesystems").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.split()}


def entry_at(point: Path) -> MountEntry | None:
    """The mount at ``point`` now (the last one, if stacked), or None."""
    found = None
    for entry in read_mount_table(MOUNTS):
        if entry.point == str(point):
            found = entry
    return found


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        text = done.stderr.decode("utf-8", errors="replace").strip()[-500:]
        raise DeviceError(f"{what} failed (exit {done.returncode}): {text}")


class Mounted:
    """A volume mounted by the helper; ``fuse`` holds the FUSE program while it runs."""

    def __init__(self, point: Path, method: str, fuse: subprocess.Popen[bytes] | None = None,
                 tail: collections.deque[str] | None = None) -> None:
        self.point = point
        self.method = method
        self.fuse = fuse
        self.tail = tail or collections.deque(maxlen=20)

    def alive(self) -> bool:
        """The mount is in the table and (FUSE) its program still runs."""
        if self.fuse is not None and self.fuse.poll() is not None:
            return False
        return entry_at(self.point) is not None

    def unmount(self, *, lazy: bool) -> None:
        """Unmount; lazily when asked or when something still holds the volume.

        A lazy unmount detaches the mount at once (no stale entry, nothing new
        can open it); files still open fail when the device is gone.  For
        FUSE, the program is then stopped, so such files fail at once too.
        """
        umount = _program("umount")
        if entry_at(self.point) is not None:
            if not lazy:
                try:
                    _run([umount, str(self.point)], f"unmounting {self.point}")
                except DeviceError:
                    lazy = True  # busy: detach it anyway, the device is let go
            if lazy and entry_at(self.point) is not None:
                _run([umount, "-l", str(self.point)], f"lazy unmount of {self.point}")
        if self.fuse is not None:
            self._stop_fuse(grace_s=0.0 if lazy else 10.0)

    def _stop_fuse(self, grace_s: float) -> None:
        proc = self.fuse
        assert proc is not None
        # After a normal unmount the program flushes (a release changed the FAT) and exits.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def mount_kernel(device: Path, point: Path, fstype: str, owner: Owner, codepage: int) -> Mounted:
    _run([_program("mount"), "-t", fstype, "-o", kernel_options(fstype, owner, codepage),
          "--", str(device), str(point)], f"mounting {device} ({fstype}) at {point}")
    return Mounted(point, "kernel")


def mount_fuse(device: Path, point: Path, fstype: str, owner: Owner) -> Mounted:
    argv = fuse_command(fstype, device, point, owner)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    assert proc.stdout is not None
    stdout = proc.stdout

    def drain() -> None:  # FUSE programs log to stdout; keep the last lines for errors
        for line in stdout:
            tail.append(line.decode("utf-8", errors="replace").rstrip())

    threading.Thread(target=drain, daemon=True, name="fuse-output").start()
    mounted = Mounted(point, "fuse", proc, tail)
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while entry_at(point) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            mounted.unmount(lazy=True)
            raise DeviceError(f"{argv[0]} did not mount {device} at {point} "
                              f"(exit {proc.poll()}): {' / '.join(list(tail)[-3:])}")
        time.sleep(0.02)
    return mounted


def secure(mounted: Mounted) -> MountEntry:
    """Apply nosuid,nodev,noexec,noatime to the mount point and check the mount table says so."""
    _run([_program("mount"), "-o", "remount,bind,nosuid,nodev,noexec,noatime",
          str(mounted.point)], f"setting nosuid,nodev,noexec on {mounted.point}")
    entry = entry_at(mounted.point)
    if entry is None or not entry.options.issuperset(SAFE_FLAGS | {"rw"}):
        mounted.unmount(lazy=True)
        shown = ",".join(sorted(entry.options)) if entry else "gone"
        raise DeviceError(f"{mounted.point}: mounted with {shown}, not rw,nosuid,nodev,noexec; "
                          "unmounted again")
    return entry


def prepare_point(mount_root: Path, name: str) -> Path:
    """The directory ``<mount_root>/<name>``, created fresh; a stale mount there is detached.

    ``mount_root`` must belong to root and be writable by nobody else:
    otherwise the agent's user could swap the mount point for a symlink and
    have root mount a camera over any directory.
    """
    if os.path.realpath(mount_root) != os.path.abspath(mount_root):
        raise DeviceError(f"{mount_root}: its path goes through a symlink; name the real "
                          "directory in the configuration")
    try:
        root = os.stat(mount_root, follow_symlinks=False)
    except FileNotFoundError:
        os.makedirs(mount_root, mode=0o755, exist_ok=True)
        root = os.stat(mount_root, follow_symlinks=False)
    if not stat.S_ISDIR(root.st_mode):
        raise DeviceError(f"{mount_root}: not a directory")
    if root.st_uid != 0 or root.st_mode & 0o022:
        raise DeviceError(f"{mount_root} must belong to root and be writable by root only "
                          f"(owner uid {root.st_uid}, mode {root.st_mode & 0o777:o}); fix: "
                          f"chown root: {mount_root} && chmod 755 {mount_root}")
    point = mount_root / name
    if entry_at(point) is not None:
        # A mount left by a device of the same kernel name that vanished: that device
        # is gone (the kernel gave its name to this one), so its mount is stale.
        Mounted(point, "stale").unmount(lazy=True)
    try:
        os.mkdir(point, 0o755)
    except FileExistsError:
        st = os.stat(point, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise DeviceError(f"{point} exists and is not a directory of root's") from None
        if os.listdir(point):
            raise DeviceError(f"{point} is not empty; not mounting over files") from None
    return point


def remove_point(point: Path) -> None:
    """Remove the empty mount point directory (never a directory that still holds a mount)."""
    if entry_at(point) is None:
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(point)
