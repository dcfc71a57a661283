"""``bwc-agent mount`` / ``umount``: the root side of station-mounted camera volumes.

:func:`hold` is what ``bwc-mount@<name>.service`` runs for a new USB block
device: validate, identify, judge by the device policy, mount, then keep the
mount until the daemon is done with it, the device leaves, or the unit is
stopped; it always ends with the volume unmounted (lazily if something still
holds it) and its notes removed.  :func:`let_go` (the unit's ExecStopPost,
and IT staff by hand) makes sure of that after any end, even a crash.

The helper reads the station configuration the daemon reads: the same
device policy, the same catalog, the same sysfs identification
(drivers/mass_storage.py), so the two never disagree about a device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import signal
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent.config import Config, MountSection
from agent.devicepolicy import Refusal, UsbIdentity
from agent.errors import ConfigError, DeviceError
from agent.mount import fs, notes
from agent.mount.blockdev import BlockDevice, kernel_name, open_device, probe
from drivers import catalog as catalog_mod
from drivers.mass_storage import usb_for_source, usb_identity

log = logging.getLogger(__name__)

POLL_S = 0.2
RUN_DIR_MODE = 0o750  # the agent's user writes "done"; its group may read (monitoring)


@dataclass(frozen=True)
class Target:
    """Where a volume goes: the driver that reads it, its mount root and its catalog."""

    driver: str
    mount_root: Path
    catalog: catalog_mod.Catalog


def mount_section(config: Config) -> MountSection:
    if config.mount is None:
        raise ConfigError("the configuration has no [mount] section: this station does not "
                          "mount camera volumes itself (see docs/OPERATIONS.md, 'Camera "
                          "volumes')")
    return config.mount


def owner_of(section: MountSection) -> fs.Owner:
    try:
        user = pwd.getpwnam(section.user)
    except KeyError:
        raise ConfigError(f"mount.user: no user {section.user!r} on this system (create it, "
                          "or name the agent's user)") from None
    return fs.Owner(user.pw_uid, user.pw_gid)


def sysfs_root(config: Config) -> Path:
    ms = config.devices.get("mass_storage")
    return Path(ms.sysfs_root) if ms is not None else Path("/sys")


def choose_target(config: Config, run_dir: Path, identity: UsbIdentity | None) -> Target:
    """The mass_storage driver's mount root, or the gat947 driver's for a camera it switched.

    With both drivers configured, a volume goes to gat947 only when the daemon
    said a camera on the same USB port (or on an unknown port) is switching
    to mass storage (SetMSDC).
    """
    ms = config.devices.get("mass_storage")
    g = config.devices.get("gat947")
    if g is not None and (ms is None or notes.take_msdc(
            run_dir, identity.port if identity is not None else None,
            max_age_s=g.mount_timeout_s + 5)):
        return Target("gat947", Path(g.mount_root), catalog_mod.load(g.catalog))
    if ms is not None:
        return Target("mass_storage", Path(ms.mount_root), catalog_mod.load(ms.catalog))
    raise ConfigError("mount: neither [devices.mass_storage] nor [devices.gat947] is "
                      "configured, so there is no mount_root for camera volumes")


def prepare_run_dir(run_dir: Path, owner: fs.Owner) -> None:
    """``run_dir`` exists, is a real directory and belongs to the agent's user (mode 0750).

    Changed through a descriptor opened with O_NOFOLLOW: a symlink planted in
    its place is refused, never followed by root.
    """
    os.makedirs(run_dir.parent, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(run_dir, 0o700)
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"{run_dir}: not a directory ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, owner.uid):
            raise DeviceError(f"{run_dir} belongs to uid {st.st_uid}, not to the agent's user "
                              f"(uid {owner.uid})")
        if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
            os.fchown(fd, owner.uid, owner.gid)
        if stat.S_IMODE(st.st_mode) != RUN_DIR_MODE:
            os.fchmod(fd, RUN_DIR_MODE)
    finally:
        os.close(fd)


class _Stop:
    """SIGTERM/SIGINT (systemd stopping the unit: the device left, or an operator)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            self.event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def hold(config: Config, device_arg: str, env: Mapping[str, str],
         *, stop: threading.Event | None = None) -> str:
    """Mount the volume on ``device_arg`` and hold it until released; returns what happened.

    Returns "refused" (the policy refused the device; a note tells the daemon),
    "done" (the daemon was done with it), "gone" (the device left) or "stopped"
    (SIGTERM).  Raises DeviceError when it cannot be mounted and ConfigError
    for configuration problems.
    """
    kernel_name(device_arg)  # hostile input is refused before anything else
    section = mount_section(config)
    owner = owner_of(section)
    device = open_device(device_arg, sysfs_root=sysfs_root(config), env=env)
    run_dir = Path(section.run_dir)
    prepare_run_dir(run_dir, owner)
    identity = usb_identity(usb_for_source(sysfs_root(config), str(device.node)))
    target = choose_target(config, run_dir, identity)
    catalogued = identity is not None and target.catalog.match_usb(identity.usb_id) is not None
    reason = config.device_policy.refusal(identity, catalogued=catalogued)
    if reason is not None:
        refusal = Refusal(identity=identity or UsbIdentity(usb_id=""), reason=reason,
                          policy=config.device_policy.policy, driver=target.driver,
                          handle=str(device.node), facts={"device": str(device.node)})
        if not notes.write_refusal(run_dir, device.name, secrets.token_hex(16), refusal):
            log.warning("too many refusals waiting for the daemon; this one is not recorded")
        log.warning("%s", refusal.message())
        return "refused"
    found = probe(device, env)
    if found.fstype not in fs.SUPPORTED:
        raise DeviceError(f"{device.node}: file system {found.fstype!r} is not a camera file "
                          f"system ({', '.join(fs.SUPPORTED)}); not mounted")
    if stop is None:
        handler = _Stop()
        handler.install()
        stop = handler.event
    point = fs.prepare_point(target.mount_root, device.name)
    method = _method(found.fstype, section)
    note = notes.MountNote(name=device.name, token=secrets.token_hex(16), device=str(device.node),
                           mount_point=str(point), driver=target.driver, fstype=found.fstype,
                           method=method, identity=identity, uuid=found.uuid)
    # The note is there before the mount appears: the daemon, woken by the mount
    # table, always finds it (and with it the token to say "done" with).
    notes.write_mounted(run_dir, note)
    try:
        mounted = _mount(device, point, found.fstype, method, owner, section)
    except BaseException:
        fs.remove_point(point)
        notes.clear(run_dir, device.name)
        raise
    return _hold_mounted(mounted, device, run_dir, stop, note)


def _method(fstype: str, section: MountSection) -> str:
    if section.fuse == "never" or (section.fuse == "fallback" and fs.kernel_supports(fstype)):
        return "kernel"
    return "fuse"


def _mount(device: BlockDevice, point: Path, fstype: str, method: str, owner: fs.Owner,
           section: MountSection) -> fs.Mounted:
    if method == "kernel":
        mounted = fs.mount_kernel(device.node, point, fstype, owner, section.codepage)
    else:
        mounted = fs.mount_fuse(device.node, point, fstype, owner)
    fs.secure(mounted)
    log.info("mounted %s (%s, %s) at %s", device.node, fstype, mounted.method, point)
    return mounted


def _hold_mounted(mounted: fs.Mounted, device: BlockDevice, run_dir: Path,
                  stop: threading.Event, note: notes.MountNote) -> str:
    outcome = "gone"
    try:
        while True:
            if stop.is_set():
                outcome = "stopped"
                break
            if notes.done_for(run_dir, note.name, note.token):
                outcome = "done"
                break
            if not device.present():
                outcome = "gone"
                break
            if not mounted.alive():
                outcome = "gone"
                log.warning("%s: the mount at %s ended by itself", device.node, mounted.point)
                break
            stop.wait(POLL_S)
    finally:
        # Only "done" is an orderly end; otherwise the device went (or is going) away.
        lazy = outcome != "done"
        try:
            mounted.unmount(lazy=lazy)
        finally:
            fs.remove_point(mounted.point)
            notes.clear(run_dir, note.name)
    log.info("released %s from %s (%s)", device.node, mounted.point, outcome)
    return outcome


def let_go(config: Config, device_arg: str) -> list[str]:
    """Lazily unmount whatever the helper mounted for ``device_arg``; what it unmounted.

    Safe at any time (the unit's ExecStopPost runs it after every end): only a
    mount at ``<mount_root>/<name>`` whose source is /dev/<name> is touched.
    """
    name = kernel_name(device_arg)
    section = mount_section(config)
    done = []
    for key in ("mass_storage", "gat947"):
        driver = config.devices.get(key)
        if driver is None:
            continue
        point = Path(driver.mount_root) / name
        entry = fs.entry_at(point)
        if entry is not None and entry.source == f"/dev/{name}":
            fs.Mounted(point, "stale").unmount(lazy=True)
            done.append(str(point))
        elif entry is not None:
            log.warning("%s is mounted from %s, not /dev/%s: left alone", point, entry.source,
                        name)
            continue
        fs.remove_point(point)
    notes.clear(Path(section.run_dir), name)
    return done
