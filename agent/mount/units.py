"""The udev rule and the systemd template unit that run the mount helper, and installing them.

The rule only asks systemd for ``bwc-mount@<kernel name>.service``; it runs
nothing itself (udev kills long-running RUN programs, and mounts made from
udev's own mount namespace are invisible to the rest of the system).  The
kernel name (``%k``: ``sdb1``) is the only thing passed on: the helper
re-derives everything else from the kernel and checks it.

The unit binds to the device (``BindsTo=dev-%i.device``): when the camera is
pulled out systemd stops the unit, the helper unmounts lazily, and
``ExecStopPost`` makes sure nothing is left mounted after any end (even a
crash of the helper).  It must not use options that give it a mount
namespace of its own (ProtectSystem=, PrivateTmp=, PrivateNetwork=, ...):
its mount would then be invisible to the daemon.

Both files are rendered with the absolute path of this installation's
``bwc-agent`` and of the station configuration, so a virtualenv install
works without a symlink in /usr/local/bin.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from agent.durable import makedirs_durable, write_atomic
from agent.errors import AgentError

RULE_NAME = "90-bwc-agent.rules"
UNIT_NAME = "bwc-mount@.service"
RULES_DIR = Path("etc/udev/rules.d")
UNITS_DIR = Path("etc/systemd/system")

UDEV_RULE = """\
# bwc-agent: camera volumes are mounted by the station (installed by `bwc-agent install-udev`).
# A USB block device holding a file system starts bwc-mount@<kernel name>.service, which
# applies the device policy ([devices] policy) and mounts it below the driver's mount_root.
# UDISKS_IGNORE keeps a desktop automounter away from these devices.
ACTION=="add", SUBSYSTEM=="block", ENV{{ID_BUS}}=="usb", ENV{{ID_FS_USAGE}}=="filesystem", \
ENV{{UDISKS_IGNORE}}="1", TAG+="systemd", ENV{{SYSTEMD_WANTS}}+="bwc-mount@%k.service"
"""

MOUNT_UNIT = """\
# bwc-agent: one camera volume, /dev/%I.  Started by {rule_name} when the device appears;
# stopped when it goes away (BindsTo=).  Installed by `bwc-agent install-udev`.
[Unit]
Description=bwc-agent camera volume /dev/%I
Documentation=file:///usr/share/doc/bwc-agent/OPERATIONS.md
BindsTo=dev-%i.device
After=dev-%i.device

[Service]
Type=exec
# Mounts /dev/%I below mount_root (or refuses it by policy) and holds it until the
# daemon is done with it; then unmounts.  Runs as root: mounting needs it, the daemon not.
ExecStart={bin} mount --config {config} %I
# After any end (the device pulled out, a crash): nothing is left mounted.
ExecStopPost={bin} umount --config {config} %I
# SIGTERM to the helper only: it unmounts first, then stops its FUSE process itself.
KillMode=mixed
TimeoutStopSec=30
# No mount namespace options here (ProtectSystem=, PrivateTmp=, PrivateNetwork=...):
# the mount must be visible to the whole system.
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE
CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_MODULE
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
"""


def render_rule() -> str:
    return UDEV_RULE.format()


def render_unit(bin_path: Path, config_path: Path) -> str:
    for what, path in (("bwc-agent", bin_path), ("configuration", config_path)):
        text = str(path)
        if not path.is_absolute() or any(c.isspace() or c in "\"'\\%$;" for c in text):
            raise AgentError(f"the {what} path {text!r} must be absolute, without spaces, "
                             "quotes, '%' or '$' (it goes into a systemd unit)")
    return MOUNT_UNIT.format(bin=bin_path, config=config_path, rule_name=RULE_NAME)


def install(root: Path, bin_path: Path, config_path: Path, *, reload: bool) -> list[Path]:
    """Write the rule and the unit below ``root`` (normally /); reload udev and systemd."""
    unit = render_unit(bin_path, config_path)
    written = []
    for directory, name, text in ((RULES_DIR, RULE_NAME, render_rule()),
                                  (UNITS_DIR, UNIT_NAME, unit)):
        target = root / directory / name
        try:
            makedirs_durable(target.parent, mode=0o755)
            write_atomic(target, text.encode("utf-8"), mode=0o644)
        except OSError as exc:
            raise AgentError(f"cannot write {target}: {exc.strerror} (run as root?)") from exc
        written.append(target)
    if reload:
        for argv in (["udevadm", "control", "--reload"], ["systemctl", "daemon-reload"]):
            program = shutil.which(argv[0])
            if program is None:
                raise AgentError(f"{argv[0]} not found: run `{' '.join(argv)}` by hand")
            done = subprocess.run([program, *argv[1:]], capture_output=True, check=False)
            if done.returncode != 0:
                raise AgentError(f"`{' '.join(argv)}` failed: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
    return written
