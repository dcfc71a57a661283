"""Camera volumes on real FAT32 and exFAT file systems, mounted by the station's helper.

Each test docks loop-device cameras through the helper as udev starts it,
offloads them with the daemon as IT staff run it, and asserts every
recording's SHA-256 in the vault equals the source's and that nothing is
left mounted or attached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from agent.mount import fs
from tests.filesystems.rig import (
    BWC_AGENT,
    CAMERA,
    Rig,
    exfat_image,
    fat32_image,
    needs_filesystems,
)

pytestmark = needs_filesystems
NOBODY = 65534


def test_fat32_camera_with_gbk_names_is_mounted_offloaded_and_let_go(
        rig: Rig, clips: dict[str, bytes]) -> None:
    # FatFs with code page 936 and long names: UTF-16 long names, GBK short aliases.
    files = fat32_image(rig.base / "images" / "cam.img", [
        ("执法记~1.MP4", "执法记录仪_20240105_083015.MP4", clips["a.mp4"]),
        ("现场录~1.MP4", "现场录像_重要.MP4", clips["c.avi"]),
        ("ZFY000~1.MP4", "ZFY0001_010203_20240105090000_0002.MP4", clips["b.mp4"]),
    ], dirs=("DCIM",))
    volume = rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat",
                     {f"DCIM/{name.split('/')[-1]}": data for name, data in files.items()})
    rig.dock(volume)
    point = rig.point(volume)
    entry = fs.entry_at(point)
    assert entry is not None and entry.source == volume.node
    assert {"rw", "nosuid", "nodev", "noexec"} <= entry.options
    assert "sync" not in entry.options
    # Owned by the agent's user, nobody else may look.
    st = os.stat(point / "DCIM" / "执法记录仪_20240105_083015.MP4")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o007) == (NOBODY, NOBODY, 0)
    note = json.loads((rig.run_dir / f"{volume.loop}.json").read_text())
    assert note["identity"]["usb_id"] == "0603:8612" and note["driver"] == "mass_storage"

    done = rig.run_once()
    assert done.returncode == 0, done.stderr.decode()
    assert rig.finish(volume) == "done"
    rig.assert_in_vault(volume)
    names = {row["name"] for row in rig.clips()}
    assert "执法记录仪_20240105_083015.MP4" in names and "现场录像_重要.MP4" in names
    (docked,) = rig.log_entries("device.docked")
    assert docked["serial"] == "ZFY0001CAM"
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def test_exfat_camera_with_chinese_names(rig: Rig, clips: dict[str, bytes]) -> None:
    # exFAT keeps only UTF-16 names: a camera converts its GBK names when it writes them.
    image = rig.base / "images" / "cam.img"
    files = exfat_image(image, {
        "DCIM/100MEDIA/执法记录仪_20240105_083015.MP4": clips["a.mp4"],
        "DCIM/100MEDIA/现场录像.MP4": clips["c.avi"],
        "DCIM/重要视频/ZFY0001_010203_20240105090000_0002_IMP.MP4": clips["b.mp4"],
    })
    for name in files:  # every name is one a GBK camera can write
        name.encode("gbk")
    volume = rig.add(image, CAMERA, "exfat", files)
    rig.dock(volume)
    entry = fs.entry_at(rig.point(volume))
    assert entry is not None and {"rw", "nosuid", "nodev", "noexec"} <= entry.options

    done = rig.run_once()
    assert done.returncode == 0, done.stderr.decode()
    assert rig.finish(volume) == "done"
    rig.assert_in_vault(volume)
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def test_umount_command_lets_a_volume_go(rig: Rig, clips: dict[str, bytes]) -> None:
    files = fat32_image(rig.base / "images" / "cam.img",
                        [("ZFY000~1.MP4", "ZFY0001_010203_20240105090000_0002.MP4",
                          clips["b.mp4"])])
    volume = rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat", files)
    rig.dock(volume)
    assert fs.entry_at(rig.point(volume)) is not None
    # What the unit's ExecStopPost runs after the helper died (SIGKILL: no clean-up of its own).
    assert volume.helper is not None
    volume.helper.kill()
    volume.helper.wait()
    done = subprocess.run([BWC_AGENT, "umount", "--config", str(rig.config_path), volume.loop],
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert f"unmounted {rig.point(volume)}" in done.stdout.decode()
    assert fs.entry_at(rig.point(volume)) is None
    assert not rig.point(volume).exists()
    assert not (rig.run_dir / f"{volume.loop}.json").exists()
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def test_a_mount_appearing_after_the_daemon_started_is_offloaded(
        rig: Rig, clips: dict[str, bytes]) -> None:
    files = fat32_image(rig.base / "images" / "cam.img", [
        ("ZFY000~1.MP4", "ZFY0001_010203_20240105083015_0001.MP4", clips["a.mp4"]),
        ("ZFY000~2.MP4", "ZFY0001_010203_20240105090000_0002_IMP.MP4", clips["b.mp4"]),
    ])
    volume = rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat", files)
    daemon = rig.start_daemon()
    rig.wait_for((rig.base / "data" / "state.db").exists, "the daemon to start")
    rig.dock(volume)
    # The daemon sees the mount, offloads, and is done with it: the helper unmounts.
    assert rig.finish(volume) == "done"
    rig.assert_in_vault(volume)
    assert {row["state"] for row in rig.clips()} == {"sealed"}
    # The daemon sees the volume go as it saw it come: from the mount table.
    rig.wait_for(lambda: rig.log_entries("device.undocked"), "the undock")
    log = rig.stop_daemon(daemon)
    assert "Traceback" not in log
    assert [e["handle"] for e in rig.log_entries("device.undocked")] == [str(rig.point(volume))]
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def test_short_names_only_in_gbk(rig: Rig, clips: dict[str, bytes]) -> None:
    """Firmware without long names writes GBK bytes in 8.3 entries only.

    The kernel's vfat (codepage=936) reads them; fusefat lists them but cannot
    open them: then the station says so by name (device.unreadable), the run
    fails, and nothing is dropped silently.
    """
    files = fat32_image(rig.base / "images" / "cam.img", [
        ("执法01.MP4", None, clips["a.mp4"]),
        ("现场录音.MP4", None, clips["b.mp4"]),
    ])
    volume = rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat", files)
    rig.dock(volume)
    method = json.loads((rig.run_dir / f"{volume.loop}.json").read_text())["method"]
    done = rig.run_once()
    assert rig.finish(volume) == "done"
    if method == "kernel":
        assert done.returncode == 0, done.stderr.decode()
        rig.assert_in_vault(volume)
    else:
        assert done.returncode == 1
        (skipped,) = rig.log_entries("device.skipped")
        assert {e["path"] for e in skipped["first"]} >= {"DCIM/执法01.MP4", "DCIM/现场录音.MP4"}
        alerts = [e for e in rig.log_entries("alert") if e["code"] == "device.unreadable"]
        assert alerts and "执法01.MP4" in str(alerts[0]["message"])
        assert rig.clips() == []
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def _as_user(uid: int, dir_fd: int, action: str, name: str) -> int:
    """In a child process with ``uid`` (and gid): read or delete ``name`` in ``dir_fd``."""
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 1
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if action == "read":
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                os.read(fd, 16)
                os.close(fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_only_the_agents_user_may_read_and_delete(rig: Rig, clips: dict[str, bytes]) -> None:
    """The daemon runs as [mount] user: it reads and releases; other users get nothing."""
    files = fat32_image(rig.base / "images" / "cam.img", [
        ("ZFY000~1.MP4", "ZFY0001_010203_20240105083015_0001.MP4", clips["a.mp4"]),
        ("ZFY000~2.MP4", "ZFY0001_010203_20240105090000_0002.MP4", clips["b.mp4"]),
    ])
    volume = rig.dock(rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat", files))
    dcim = os.open(rig.point(volume) / "DCIM", os.O_RDONLY | os.O_DIRECTORY)
    try:
        first, second = sorted(name.split("/")[-1] for name in files)
        assert _as_user(4321, dcim, "read", first) == 13
        assert _as_user(4321, dcim, "delete", first) == 13
        assert _as_user(NOBODY, dcim, "read", first) == 0
        assert _as_user(NOBODY, dcim, "delete", second) == 0  # a release, as the agent does it
        assert sorted(os.listdir(dcim)) == [first]
    finally:
        os.close(dcim)
    assert volume.helper is not None
    volume.helper.send_signal(signal.SIGTERM)
    assert rig.finish(volume) == "stopped"
    rig.unplug(volume)
    # The deletion reached the camera's file system, and left it sound.
    subprocess.run(["fsck.vfat", "-n", str(volume.image)], check=True, capture_output=True)
    rig.dock(volume)
    assert sorted(os.listdir(rig.point(volume) / "DCIM")) == [first]
    assert volume.helper is not None
    volume.helper.send_signal(signal.SIGTERM)
    assert rig.finish(volume) == "stopped"
    rig.unplug(volume)
    rig.assert_nothing_mounted()
