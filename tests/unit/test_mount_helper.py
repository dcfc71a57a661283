"""The mount helper's parts that need no mount: hostile device names, the notes in run_dir,
where a volume goes, the options it gets, and when the daemon lets a volume go.

The real mounts are in tests/filesystems.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.config import Config, MountSection, PlatformSection
from agent.devicepolicy import Refusal, UsbIdentity
from agent.errors import DeviceError
from agent.mount import fs, helper, notes
from agent.mount.blockdev import BadDeviceError, kernel_name, open_device
from agent.mount.keeper import Keeper
from drivers.base import Detachable
from drivers.refused import RefusalNotes, RefusedDevice
from tests.support.detectors import DockEvents
from tests.support.stations import camera, running_station, sim_devices

TOKEN = "0123456789abcdef0123456789abcdef"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown)")


def note(name: str = "sdb1", token: str = TOKEN) -> notes.MountNote:
    return notes.MountNote(name=name, token=token, device=f"/dev/{name}",
                           mount_point=f"/media/bwc/{name}", driver="mass_storage",
                           fstype="vfat", method="fuse",
                           identity=UsbIdentity("0603:8612", "ZFY0001CAM", "1-1"),
                           uuid="1234-ABCD")


# --- what udev hands over --------------------------------------------------------------------

@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/dev/../etc/shadow", "sdb1;rm",
                                     "SDB1", "sd b1", "", "/dev/", "sdb1/", "/dev/disk/by-id/x",
                                     "a" * 40, "sdb1\n"])
def test_only_plain_kernel_names_are_accepted(hostile: str) -> None:
    with pytest.raises(BadDeviceError):
        kernel_name(hostile)


def test_kernel_names_and_nodes_are_accepted() -> None:
    assert kernel_name("sdb1") == kernel_name("/dev/sdb1") == "sdb1"
    assert kernel_name("mmcblk0p1") == "mmcblk0p1"


def test_udev_environment_must_agree(tmp_path: Path) -> None:
    for env, said in (({"DEVNAME": "/dev/sdc1"}, "DEVNAME='/dev/sdc1'"),
                      ({"ACTION": "remove"}, "ACTION='remove'"),
                      ({"SUBSYSTEM": "net"}, "SUBSYSTEM='net'")):
        with pytest.raises(BadDeviceError, match=said):
            open_device("sdb1", sysfs_root=tmp_path, env=env, dev_root=tmp_path)


def test_the_node_must_be_the_block_device_sysfs_names(tmp_path: Path) -> None:
    (tmp_path / "sdb1").write_bytes(b"")  # a regular file where the node should be
    with pytest.raises(BadDeviceError, match="not a block device"):
        open_device("sdb1", sysfs_root=tmp_path, env={}, dev_root=tmp_path)
    (tmp_path / "sdb1").unlink()
    (tmp_path / "sdb1").symlink_to("/dev/null")
    with pytest.raises(BadDeviceError, match="not a block device"):
        open_device("sdb1", sysfs_root=tmp_path, env={}, dev_root=tmp_path)


@as_root
def test_a_node_with_other_numbers_than_sysfs_is_refused(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "sdb1", 0o600 | stat.S_IFBLK, os.makedev(8, 17))
    block = tmp_path / "sys" / "class" / "block" / "sdb1"
    block.mkdir(parents=True)
    (block / "dev").write_text("8:33\n")
    with pytest.raises(BadDeviceError, match="sysfs says '8:33'"):
        open_device("sdb1", sysfs_root=tmp_path / "sys", env={}, dev_root=dev)
    (block / "dev").write_text("8:17\n")
    (block / "size").write_text("2048\n")
    device = open_device("/dev/sdb1", sysfs_root=tmp_path / "sys",
                         env={"DEVNAME": str(dev / "sdb1")}, dev_root=dev)
    assert device.present()
    (block / "size").write_text("0\n")  # a card reader without its card
    assert not device.present()


def test_mount_command_refuses_a_hostile_device_name(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path)
    assert main(["mount", "--config", str(path), "../../etc"]) == 2
    assert "refusing device '../../etc'" in capsys.readouterr().err
    assert main(["umount", "--config", str(path), "sdb1;reboot"]) == 2


def _config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "station.toml"
    path.write_text(f"""
[station]
id = "ST-0001"
data_dir = "{tmp_path / 'data'}"
[devices.mass_storage]
mount_root = "{tmp_path / 'media'}"
[mount]
run_dir = "{tmp_path / 'run'}"
""" + extra, encoding="utf-8")
    return path


# --- notes ----------------------------------------------------------------------------------

def test_mount_notes_round_trip_and_refuse_what_was_planted(tmp_path: Path) -> None:
    notes.write_mounted(tmp_path, note())
    assert notes.read_mounted(tmp_path, "sdb1") == note()
    assert notes.read_mounted(tmp_path, "../sdb1") is None
    # A symlink planted in place of a note is not followed.
    (tmp_path / "sdc1.json").symlink_to(tmp_path / "sdb1.json")
    assert notes.read_mounted(tmp_path, "sdc1") is None
    # A note that names another device, or a bad token, is no note.
    (tmp_path / "sdd1.json").write_text(json.dumps({**json.loads(note("sdb1").to_json())}))
    assert notes.read_mounted(tmp_path, "sdd1") is None
    (tmp_path / "sde1.json").write_bytes(note("sde1", "not-a-token").to_json())
    assert notes.read_mounted(tmp_path, "sde1") is None
    (tmp_path / "sdf1.json").write_bytes(b"{" * 100000)
    assert notes.read_mounted(tmp_path, "sdf1") is None


def test_done_is_for_one_mount_only(tmp_path: Path) -> None:
    notes.write_done(tmp_path, "sdb1", TOKEN)
    assert notes.done_for(tmp_path, "sdb1", TOKEN)
    assert not notes.done_for(tmp_path, "sdb1", "f" * 32)  # a later mount of sdb1
    # A new mount of the name clears a "done" left from an earlier one.
    notes.write_mounted(tmp_path, note(token="f" * 32))
    assert not (tmp_path / "sdb1.done").exists()
    with pytest.raises(ValueError):
        notes.write_done(tmp_path, "../x", TOKEN)


def test_notes_are_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sdb1.done").symlink_to(victim)
    assert not notes.done_for(run_dir, "sdb1", TOKEN)
    (run_dir / "sdb1.json").symlink_to(victim)
    notes.write_mounted(run_dir, note())
    assert victim.read_text() == "precious"
    assert not (run_dir / "sdb1.json").is_symlink()


def _refusal(serial: str) -> Refusal:
    return Refusal(identity=UsbIdentity("0781:5567", serial, "1-2"), reason="not allowed",
                   policy="catalog", driver="mass_storage", handle="/dev/sdc1",
                   facts={"device": "/dev/sdc1"})


def test_refusal_notes_dock_once_and_go_when_recorded(tmp_path: Path) -> None:
    assert notes.write_refusal(tmp_path, "sdc1", TOKEN, _refusal("4C530001"))
    (tmp_path / f"refused-sdd1-{'e' * 32}.json").write_text("not json")
    detector = RefusalNotes(tmp_path, poll_s=0.05)
    events = DockEvents(10)
    detector.start(events.on_dock, events.on_undock)
    try:
        events.wait(lambda log: len(log) == 1)
        (device,) = events.devices.values()
        assert isinstance(device, RefusedDevice)
        assert device.refusal == _refusal("4C530001")
        assert not (tmp_path / f"refused-sdd1-{'e' * 32}.json").exists()  # malformed: dropped
        device.recorded()
        events.wait(lambda log: log[-1] == ("undock", device.handle))
        assert list(tmp_path.iterdir()) == []
    finally:
        detector.stop()


def test_a_flood_of_refusals_is_bounded(tmp_path: Path) -> None:
    for i in range(notes.MAX_REFUSALS):
        assert notes.write_refusal(tmp_path, "sdc1", f"{i:032x}", _refusal(str(i)))
    assert not notes.write_refusal(tmp_path, "sdc1", "f" * 32, _refusal("one more"))
    assert len(list(tmp_path.iterdir())) == notes.MAX_REFUSALS


def test_a_gat947_switch_is_expected_once_and_not_for_long(tmp_path: Path) -> None:
    notes.expect_msdc(tmp_path, "1-3")
    assert not notes.take_msdc(tmp_path, "1-4", max_age_s=20)  # another port
    assert notes.take_msdc(tmp_path, "1-3", max_age_s=20)
    assert not notes.take_msdc(tmp_path, "1-3", max_age_s=20)  # consumed
    notes.expect_msdc(tmp_path, None)  # a port without a USB location (given by path)
    old = time.time() - 60
    os.utime(tmp_path / "msdc-any", (old, old))
    assert not notes.take_msdc(tmp_path, "1-3", max_age_s=20)  # stale


def test_volumes_go_to_gat947_only_for_a_camera_it_switched(tmp_path: Path) -> None:
    path = _config_file(tmp_path, f"""
[devices.gat947]
mount_root = "{tmp_path / 'media-gat947'}"
""")
    cfg = config_mod.load(path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stick = UsbIdentity("0781:5567", "4C530001", "1-2")
    assert helper.choose_target(cfg, run_dir, stick).driver == "mass_storage"
    notes.expect_msdc(run_dir, "1-3")
    assert helper.choose_target(cfg, run_dir, stick).driver == "mass_storage"
    camera_port = UsbIdentity("0603:8612", "ZFY0001", "1-3")
    target = helper.choose_target(cfg, run_dir, camera_port)
    assert (target.driver, target.mount_root) == ("gat947", tmp_path / "media-gat947")


# --- mount options --------------------------------------------------------------------------

def test_kernel_options_are_safe_and_carry_the_code_page() -> None:
    owner = fs.Owner(998, 997)
    assert fs.kernel_options("vfat", owner, 936) == (
        "rw,nosuid,nodev,noexec,noatime,uid=998,gid=997,fmask=0137,dmask=0027,utf8,"
        "codepage=936,errors=remount-ro")
    assert fs.kernel_options("exfat", owner, 936) == (
        "rw,nosuid,nodev,noexec,noatime,uid=998,gid=997,fmask=0137,dmask=0027,"
        "iocharset=utf8,errors=remount-ro")


def test_fuse_programs_run_in_the_foreground_with_the_owner_and_checks() -> None:
    if fs.shutil.which("fusefat") is None or fs.shutil.which(
            "mount.exfat-fuse", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip("needs fusefat and exfat-fuse")
    owner = fs.Owner(998, 997)
    fat = fs.fuse_command("vfat", Path("/dev/sdb1"), Path("/media/bwc/sdb1"), owner)
    assert fat[1:3] == ["-f", "-o"]
    options = set(fat[3].split(","))
    assert {"rw+", "allow_other", "default_permissions", "uid=998", "gid=997", "nosuid",
            "nodev", "noexec", "fsname=/dev/sdb1"} <= options
    exfat = fs.fuse_command("exfat", Path("/dev/sdb1"), Path("/media/bwc/sdb1"), owner)
    assert {"fmask=0137", "dmask=0027", "default_permissions"} <= set(exfat[3].split(","))


@as_root
def test_the_mount_root_must_be_roots_alone(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir(mode=0o755)
    os.chown(root, 65534, 65534)
    with pytest.raises(DeviceError, match="must belong to root"):
        fs.prepare_point(root, "sdb1")
    os.chown(root, 0, 0)
    root.chmod(0o775)
    with pytest.raises(DeviceError, match="writable by root only"):
        fs.prepare_point(root, "sdb1")
    root.chmod(0o755)
    (root / "sdb1").mkdir()
    (root / "sdb1" / "planted").write_text("x")
    with pytest.raises(DeviceError, match="not empty"):
        fs.prepare_point(root, "sdb1")
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(DeviceError, match="symlink"):
        fs.prepare_point(tmp_path / "link", "sdc1")
    assert fs.prepare_point(root, "sdc1") == root / "sdc1"


@as_root
def test_the_run_dir_is_the_agents_and_never_a_symlink(tmp_path: Path) -> None:
    owner = fs.Owner(65534, 65534)
    run_dir = tmp_path / "run" / "volumes"
    helper.prepare_run_dir(run_dir, owner)
    st = os.stat(run_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o750)
    planted = tmp_path / "planted"
    planted.symlink_to("/etc")
    with pytest.raises(DeviceError, match="not a directory"):
        helper.prepare_run_dir(planted, owner)
    assert os.stat("/etc").st_uid == 0
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 1234, 1234)
    with pytest.raises(DeviceError, match="belongs to uid 1234"):
        helper.prepare_run_dir(other, owner)


# --- the daemon lets go ---------------------------------------------------------------------

class MountedSim:
    """A simulated camera standing in for a station-mounted volume (Detachable)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.detached = 0
        self.plugged = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def station_mounted(self) -> bool:
        return True

    def detach(self) -> None:
        self.detached += 1

    def present(self) -> bool:
        return self.plugged


def _with_mount(station_config: Callable[..., Config], tmp_path: Path, hold_s: float
                ) -> Config:
    (tmp_path / "media").mkdir()
    return station_config(f"""
        [devices.mass_storage]
        mount_root = "{tmp_path / 'media'}"
        [mount]
        run_dir = "{tmp_path / 'run'}"
        hold_s = {hold_s}
        """)


def test_a_volume_is_let_go_once_its_session_is_over(station_config: Callable[..., Config],
                                                     tmp_path: Path) -> None:
    config = _with_mount(station_config, tmp_path, 600)
    camera(config, clips=2)
    with running_station(config) as station:
        (sim,) = [d for d in sim_devices(station) if d.driver_key == "simulated"]
        device = MountedSim(sim)
        assert isinstance(device, Detachable)
        summary = station.run_once()
        assert summary.ok
        future = station.dock(device)  # type: ignore[arg-type]
        assert future is not None
        future.result()
        deadline = time.monotonic() + 10
        while device.detached == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert device.detached == 1  # no platform: nothing to wait for after the copy


def test_the_keeper_holds_a_volume_for_acks_but_not_longer_than_hold_s(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    config = _with_mount(station_config, tmp_path, 600)
    camera(config, clips=2, serial="SIM0009")
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        platform = PlatformSection(mqtt_url="mqtts://x", upload_url="https://x/",
                                   ca_file=tmp_path / "ca", platform_key_file=tmp_path / "k")
        keeper = Keeper(dataclasses.replace(config, platform=platform), store)
        (sim,) = [d for d in sim_devices(station) if d.driver_key == "simulated"]
        device = MountedSim(sim)
        keeper.session_ended(device, "SIM0009")  # type: ignore[arg-type]
        start = time.monotonic()
        # Sealed clips wait for the platform's acknowledgement (release after-ack).
        assert keeper.let_go(set(), now=start + 1) == []
        assert keeper.let_go({device.handle}, now=start + 601) == []  # a release job runs
        assert keeper.let_go(set(), now=start + 601) == [device.handle]
        assert device.detached == 1 and keeper.held() == []
        # A camera pulled out meanwhile is forgotten, not detached.
        keeper.session_ended(device, "SIM0009")  # type: ignore[arg-type]
        device.plugged = False
        assert keeper.let_go(set(), now=start + 601) == [] and keeper.held() == []
        # With release = "never" nothing is waited for once copied.
        never = dataclasses.replace(config, platform=platform, retention=dataclasses.replace(
            config.retention, release="never"))
        device.plugged = True
        keeper = Keeper(never, store)
        keeper.session_ended(device, "SIM0009")  # type: ignore[arg-type]
        assert keeper.let_go(set(), now=start + 1) == [device.handle]


def test_mount_section_defaults() -> None:
    section = MountSection()
    assert (section.user, section.codepage, section.fuse, section.hold_s) == (
        "bwc-agent", 936, "fallback", 600.0)
    assert section.run_dir == Path("/run/bwc-agent/volumes")


def test_the_shipped_rule_and_unit_are_what_install_udev_writes() -> None:
    from agent.mount import units

    config_dir = Path(__file__).resolve().parents[2] / "config"
    assert (config_dir / units.RULE_NAME).read_text() == units.render_rule()
    assert (config_dir / units.UNIT_NAME).read_text() == units.render_unit(
        Path("/usr/local/bin/bwc-agent"), Path("/etc/bwc-agent/station.toml"))
    service = (config_dir / "bwc-agent.service").read_text()
    assert "RuntimeDirectory=bwc-agent" in service  # where [mount] run_dir lives by default
