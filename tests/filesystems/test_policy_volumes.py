"""The device policy on real volumes: under each policy an allowed, an unknown and a blocked device.

Every device comes in as udev brings it (the mount helper with udev's
environment).  A refused device is never mounted (no mount, no mount point),
and the daemon records it: a ``device.refused`` custody log entry and an
alert naming its USB ids, serial and port, and ``status`` shows it.  What
the policy allows is offloaded, every recording's SHA-256 in the vault
equal to the source's.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.filesystems.rig import (
    BWC_AGENT,
    CAMERA,
    OTHER_CAMERA,
    STICK,
    STOLEN,
    Rig,
    Usb,
    fat32_image,
    needs_filesystems,
    sha,
)

pytestmark = needs_filesystems

ALLOW = '''allow = [{ usb_id = "0603:8612", serial = "ZFY0001CAM" }]\n'''
BLOCK = '''block = [{ serial = "ZFY0666LOST" }]\n'''


@pytest.mark.parametrize(("policy", "unknown", "unknown_read"), [
    ("any", STICK, True),
    ("catalog", STICK, False),
    ("allow-list", OTHER_CAMERA, False),  # a catalogued model the allow-list does not name
])
def test_allowed_unknown_and_blocked_devices(rig: Rig, clips: dict[str, bytes], policy: str,
                                             unknown: Usb, unknown_read: bool) -> None:
    rig.write_config(f'policy = "{policy}"\n' + (ALLOW if policy == "allow-list" else "")
                     + BLOCK)
    volumes = {}
    for role, usb, data in (("allowed", CAMERA, clips["a.mp4"]),
                            ("unknown", unknown, clips["b.mp4"]),
                            ("blocked", STOLEN, clips["a.mp4"][::-1])):
        image = rig.base / "images" / f"{role}.img"
        files = fat32_image(image, [("ZFY000~1.MP4", f"ZFY0001_010203_20240105083015_"
                                     f"000{len(volumes) + 1}.MP4", data)])
        volumes[role] = rig.dock(rig.add(image, usb, "vfat", files))

    refused = {role for role, v in volumes.items() if v.outcome == "refused"}
    assert refused == ({"blocked"} if unknown_read else {"unknown", "blocked"})
    for role in refused:
        # Never mounted: no mount, not even a mount point.
        assert not rig.point(volumes[role]).exists()

    done = rig.run_once()
    assert done.returncode == 0, done.stderr.decode()
    read = set(volumes) - refused
    for role in read:
        assert rig.finish(volumes[role]) == "done"
        rig.assert_in_vault(volumes[role])
    in_vault = {row["sha256"] for row in rig.clips()}
    for role in refused:
        assert not {sha(d) for d in volumes[role].files.values()} & in_vault

    entries = rig.log_entries("device.refused")
    assert sorted((e["usb_id"], e["serial"], e["port"]) for e in entries) == sorted(
        (volumes[r].usb.usb_id, volumes[r].usb.serial, volumes[r].usb.port) for r in refused)
    by_serial = {e["serial"]: e for e in entries}
    blocked = by_serial[STOLEN.serial]
    assert "blocked by devices.block" in str(blocked["reason"])
    assert (blocked["policy"], blocked["device"]) == (policy, volumes["blocked"].node)
    with rig.db() as con:
        alerts = [json.loads(r["payload"])["data"] for r in con.execute(
            "SELECT payload FROM outbox ORDER BY id")]
    refusal_alerts = [a for a in alerts if a.get("code") == "device.refused"]
    assert {a["serial"] for a in refusal_alerts} == {volumes[r].usb.serial for r in refused}
    assert all(STOLEN.usb_id in a["message"] or a["serial"] != STOLEN.serial
               for a in refusal_alerts)

    status = subprocess.run([BWC_AGENT, "status", "--json", "--config", str(rig.config_path)],
                            capture_output=True, check=True)
    shown = json.loads(status.stdout)["refused"]
    assert {(r["usb_id"], r["serial"], r["port"]) for r in shown} == {
        (volumes[r].usb.usb_id, volumes[r].usb.serial, volumes[r].usb.port) for r in refused}
    text = subprocess.run([BWC_AGENT, "status", "--config", str(rig.config_path)],
                          capture_output=True, check=True).stdout.decode()
    assert f"USB {STOLEN.usb_id} serial {STOLEN.serial} port {STOLEN.port}" in text
    assert not list(rig.run_dir.glob("refused-*"))  # recorded once, notes consumed

    for volume in volumes.values():
        rig.unplug(volume)
    rig.assert_nothing_mounted()
