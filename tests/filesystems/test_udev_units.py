"""The udev rule and the bwc-mount@.service unit, as `bwc-agent install-udev` installs them.

The rule is run by udev itself (``udevadm test``) in a private mount
namespace whose rules directories hold only a stand-in for udev's
persistent-storage rules (which set ID_BUS and ID_FS_* from the hardware,
absent here) and our rule: a USB file system gets ``bwc-mount@<kernel
name>.service``; anything else gets nothing.  The unit is checked by
``systemd-analyze verify``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mount import units
from tests.filesystems.rig import BWC_AGENT, Rig, needs_filesystems, run

pytestmark = [
    needs_filesystems,
    pytest.mark.skipif(shutil.which("udevadm") is None or shutil.which("unshare") is None,
                       reason="needs udevadm and unshare (scripts/setup installs udev)"),
]

NAMESPACE = """
set -e
mount --make-rprivate /
for d in /etc/udev/rules.d /run/udev /dev/block; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
for d in /usr/lib/udev/rules.d /lib/udev/rules.d; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind "$RULES" "$d"; fi
done
exec udevadm test --action=add "/sys/class/block/$DEV"
"""


@pytest.fixture
def installed(rig: Rig) -> Path:
    root = rig.base / "root"
    done = subprocess.run([BWC_AGENT, "install-udev", "--config", str(rig.config_path),
                           "--root", str(root), "--no-reload"], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return root


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[str]:
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(1024 * 1024))
    node = run(["losetup", "-f", "--show", str(image)]).stdout.decode().strip()
    try:
        yield Path(node).name
    finally:
        run(["losetup", "-d", node])


def udev_properties(rules: Path, dev: str, given: dict[str, str]) -> dict[str, str]:
    (rules / "10-hardware.rules").write_text(
        f'SUBSYSTEM=="block", KERNEL=="{dev}", '
        + ", ".join(f'ENV{{{k}}}="{v}"' for k, v in given.items()) + "\n")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", NAMESPACE],
                          env={**os.environ, "RULES": str(rules), "DEV": dev},
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    props = {}
    for line in done.stdout.decode().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            props[key] = value
    return props


def test_install_writes_the_rule_and_a_unit_systemd_accepts(rig: Rig, installed: Path) -> None:
    rule = installed / "etc/udev/rules.d/90-bwc-agent.rules"
    unit = installed / "etc/systemd/system/bwc-mount@.service"
    assert rule.read_text() == units.render_rule()
    text = unit.read_text()
    assert f"ExecStart={Path(BWC_AGENT).resolve()} mount --config {rig.config_path} %I" in text
    assert f"ExecStopPost={Path(BWC_AGENT).resolve()} umount --config {rig.config_path} %I" \
        in text
    assert "BindsTo=dev-%i.device" in text
    settings = {line.split("=", 1)[0] for line in text.splitlines()
                if "=" in line and not line.startswith("#")}
    # Any of these would give the helper a mount namespace: its mounts would be invisible.
    assert not settings & {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateMounts",
                           "PrivateNetwork", "PrivateDevices", "ReadOnlyPaths", "TemporaryFileSystem"}
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        instance = rig.base / "bwc-mount@sdb1.service"
        instance.write_text(text)
        done = subprocess.run([analyze, "verify", str(instance)], capture_output=True,
                              check=False)
        assert (done.returncode, done.stderr.decode().strip()) == (0, "")


def test_install_refuses_a_configuration_without_mount(rig: Rig) -> None:
    rig.config_path.write_text(rig.config_path.read_text().replace("[mount]", "[unused]"))
    root = rig.base / "root"
    done = subprocess.run([BWC_AGENT, "install-udev", "--config", str(rig.config_path),
                           "--root", str(root), "--no-reload"], capture_output=True, check=False)
    assert done.returncode == 2
    assert not root.exists()  # nothing written before the configuration checks out


def test_the_rule_asks_for_the_mount_unit_for_usb_file_systems_only(
        rig: Rig, installed: Path, loop: str) -> None:
    rules = rig.base / "rules"
    rules.mkdir()
    shutil.copy(installed / "etc/udev/rules.d/90-bwc-agent.rules", rules)
    usb_fat = {"ID_BUS": "usb", "ID_FS_USAGE": "filesystem", "ID_FS_TYPE": "vfat"}
    props = udev_properties(rules, loop, usb_fat)
    assert props["SYSTEMD_WANTS"] == f"bwc-mount@{loop}.service"
    assert ":systemd:" in props["TAGS"] and props["UDISKS_IGNORE"] == "1"
    for other in ({**usb_fat, "ID_BUS": "ata"},  # the station's own disk
                  {**usb_fat, "ID_FS_USAGE": "raid"},  # not a file system
                  {"ID_BUS": "usb"}):  # a partition table, no file system
        assert "SYSTEMD_WANTS" not in udev_properties(rules, loop, other), other
