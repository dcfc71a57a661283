"""The device policy: its configuration, its judgement, and the daemon's drivers applying it.

Mass-storage volumes come from a sysfs-shaped tree and a mounts file built
in tmp_path (as in test_mass_storage); serial cameras are Gat947Sim cameras
on real pseudo-terminals whose USB enumeration is stood in for.  A refused
device is never read: no listing, no login.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.cli.main import main
from agent.devicepolicy import DevicePolicy, Rule, UsbIdentity
from agent.errors import ConfigError
from agent.station import Station
from drivers import gat947
from drivers.gat947 import Gat947Config, Gat947Detector
from drivers.gat947_sim import Gat947Sim
from drivers.mass_storage import MassStorageDetector, MassStorageDevice
from drivers.refused import DeviceRefusedError, RefusedDevice
from drivers.simcam import make_camera
from tests.conftest import write_station_config
from tests.unit.test_mass_storage import add_usb_disk, camera_volume, config, mount

CAMERA = UsbIdentity("0603:8612", "ZFY0001CAM", "1-1")  # in the shipped catalog
STICK = UsbIdentity("0781:5567", "4C530001", "1-2")  # not in the catalog
STOLEN = UsbIdentity("0603:8612", "ZFY0666LOST", "1-3")  # a catalogued model, blocked
BLOCK = (Rule(serial="ZFY0666LOST"),)


# --- configuration -------------------------------------------------------------------------------

def test_policy_keys_live_beside_the_drivers(tmp_path: Path) -> None:
    cfg = config_mod.load(write_station_config(tmp_path, """
        [devices]
        policy = "allow-list"
        allow = [{ usb_id = "0603:8612", serial = "ZFY0001CAM" }, { usb_id = "4255:0001" }]
        block = [{ serial = "ZFY0666LOST" }]
        """))
    assert cfg.device_policy == DevicePolicy(
        "allow-list", (Rule("0603:8612", "ZFY0001CAM"), Rule("4255:0001", None)),
        (Rule(None, "ZFY0666LOST"),))
    assert set(cfg.devices) == {"simulated"}  # policy, allow, block are not drivers
    assert config_mod.load(write_station_config(tmp_path)).device_policy.policy == "any"


def test_policy_problems_name_their_key_paths(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, """
        [devices]
        policy = "catalogue"
        allow = [{ vid = "0603" }, { usb_id = "0603-8612" }, {}]
        block = [{ serial = "has space" }, "0603:8612"]
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    problems = info.value.problems
    assert "devices.policy: 'catalogue' is not one of 'any', 'catalog', 'allow-list'" \
        in problems
    assert any(p.startswith("devices.allow[0].vid: unknown key") for p in problems)
    assert "devices.allow[1].usb_id: '0603-8612' is not 'VID:PID' in hex (e.g. '0603:8612')" \
        in problems
    assert "devices.allow[2]: give usb_id, serial or both" in problems
    assert any(p.startswith("devices.block[0].serial: 'has space' is not a USB serial")
               for p in problems)
    assert "devices.block[1]: expected a table, got str" in problems


def test_an_empty_allow_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(write_station_config(tmp_path, '[devices]\npolicy = "allow-list"\n'))
    assert any(p.startswith("devices.allow: policy 'allow-list' needs at least one entry")
               for p in info.value.problems)


def test_mount_section_is_validated(tmp_path: Path) -> None:
    path = write_station_config(tmp_path, """
        [mount]
        user = "Bad User"
        fuse = "sometimes"
        hold_s = -1
        """)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    problems = info.value.problems
    assert any(p.startswith("mount.user: 'Bad User' does not match") for p in problems)
    assert "mount.fuse: 'sometimes' is not one of 'fallback', 'never', 'always'" in problems
    assert "mount.hold_s: -1.0 is below the minimum 0" in problems
    assert config_mod.load(write_station_config(tmp_path)).mount is None


def test_config_check_names_policy_problems(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_station_config(tmp_path, '[devices]\npolicy = "none"\n')
    assert main(["config", "check", "--config", str(path)]) == 2  # a configuration error
    assert "devices.policy: 'none' is not one of" in capsys.readouterr().out


# --- the judgement -------------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "allow", "expected"), [
    # policy        allow-list                       camera  stick   stolen  not USB
    ("any", (), (True, True, False, True)),
    ("catalog", (), (True, False, False, False)),
    ("catalog", (Rule(usb_id="0781:5567"),), (True, True, False, False)),
    ("allow-list", (Rule("0603:8612", "ZFY0001CAM"),), (True, False, False, False)),
    ("allow-list", (Rule(usb_id="0603:8612"),), (True, False, False, False)),  # block wins
])
def test_judgement(policy: str, allow: tuple[Rule, ...],
                   expected: tuple[bool, bool, bool, bool]) -> None:
    judge = DevicePolicy(policy, allow, BLOCK)
    got = (judge.refusal(CAMERA, catalogued=True) is None,
           judge.refusal(STICK, catalogued=False) is None,
           judge.refusal(STOLEN, catalogued=True) is None,
           judge.refusal(None, catalogued=False) is None)
    assert got == expected
    reason = judge.refusal(STOLEN, catalogued=True)
    assert reason == "blocked by devices.block (serial=ZFY0666LOST)"


def test_usb_ids_match_in_any_case() -> None:
    judge = DevicePolicy("allow-list", (Rule(usb_id="0603:86AB"),))
    assert judge.refusal(UsbIdentity("0603:86ab"), catalogued=False) is None


# --- mass storage: the daemon never reads a refused volume ---------------------------------------

@pytest.fixture
def station_dir(tmp_path: Path) -> Path:
    sysfs = tmp_path / "sys"
    add_usb_disk(sysfs, "sdb", vid="0603", pid="8612", serial="ZFY0001CAM", port="1-1")
    add_usb_disk(sysfs, "sdc", vid="0781", pid="5567", serial="4C530001", port="1-2",
                 manufacturer="SanDisk", product="Cruzer Blade")
    add_usb_disk(sysfs, "sdd", vid="0603", pid="8612", serial="ZFY0666LOST", port="1-3")
    (tmp_path / "media").mkdir()
    (tmp_path / "mounts").write_text("/dev/vda1 / ext4 rw 0 0\n")
    for dev, name in (("/dev/sdb1", "CAM"), ("/dev/sdc1", "STICK"), ("/dev/sdd1", "LOST")):
        camera_volume(mount(tmp_path, dev, name))
    return tmp_path


def test_mass_storage_hands_refused_volumes_over_unread(station_dir: Path) -> None:
    from drivers.base import DeviceContext

    detector = MassStorageDetector(config(station_dir), DeviceContext(
        policy=DevicePolicy("catalog", (), BLOCK)))
    by_name = {Path(d.handle).name: d for d in detector.scan()}
    assert isinstance(by_name["CAM"], MassStorageDevice)
    for name in ("STICK", "LOST"):
        refused = by_name[name]
        assert isinstance(refused, RefusedDevice)
        for use in (refused.identify, refused.recordings):
            with pytest.raises(DeviceRefusedError):
                use()
    assert by_name["STICK"].refusal.identity.as_dict() == {  # type: ignore[attr-defined]
        "usb_id": "0781:5567", "serial": "4C530001", "port": "1-2",
        "manufacturer": "SanDisk", "product": "Cruzer Blade"}


def test_refusals_are_logged_alerted_and_shown(station_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write_station_config(station_dir, f"""
        [devices]
        policy = "catalog"
        block = [{{ serial = "ZFY0666LOST" }}]

        [devices.mass_storage]
        mount_root = "{station_dir / 'media'}"
        sysfs_root = "{station_dir / 'sys'}"
        mounts_file = "{station_dir / 'mounts'}"
        """)
    station = Station(config_mod.load(path))
    station.start(watch=False)
    try:
        summary = station.run_once()
        assert station.store is not None
        refused_log = [json.loads(r["body"]) for r in station.store.query(
            "SELECT body FROM custody_log WHERE kind = 'device.refused' ORDER BY seq")]
        alerts = [json.loads(r["payload"])["data"] for r in station.store.query(
            "SELECT payload FROM outbox ORDER BY id")]
        clips = station.store.query("SELECT device_serial FROM clips")
    finally:
        station.stop()
    assert summary.ok, summary  # refusing a device is the policy working, not a failure
    assert sorted(r.refused_device != "" for r in summary.reports) == [False, True, True]
    assert {(e["usb_id"], e["serial"], e["port"]) for e in refused_log} == {
        ("0781:5567", "4C530001", "1-2"), ("0603:8612", "ZFY0666LOST", "1-3")}
    assert {c["device_serial"] for c in clips} == {"ZFY0001CAM"}
    codes = [a for a in alerts if a.get("code") == "device.refused"]
    assert {a["serial"] for a in codes} == {"4C530001", "ZFY0666LOST"}
    assert any("USB 0781:5567 is not in the device catalog" in a["message"] for a in codes)

    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "USB 0781:5567 serial 4C530001 port 1-2: USB 0781:5567 is not in the device " \
           "catalog" in out
    assert main(["status", "--json", "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)["refused"]
    assert [r["serial"] for r in shown] == ["ZFY0666LOST", "4C530001"] or \
        [r["serial"] for r in shown] == ["4C530001", "ZFY0666LOST"]


# --- gat947: judged before any login -------------------------------------------------------------

class FakePort:
    """What serial.tools.list_ports reports for a USB serial port (no USB hardware here)."""

    def __init__(self, device: str, vid: int, pid: int, serial: str, location: str) -> None:
        self.device, self.vid, self.pid = device, vid, pid
        self.serial_number, self.location = serial, location


@pytest.mark.parametrize(("policy", "refused"), [
    (DevicePolicy("any", (), BLOCK), True),  # blocked by serial whatever the policy
    (DevicePolicy("allow-list", (Rule(usb_id="4255:0001"),)), True),  # not on the list
    (DevicePolicy("catalog"), False),
])
def test_a_refused_serial_camera_is_never_logged_into(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      policy: DevicePolicy,
                                                      refused: bool) -> None:
    from drivers.base import DeviceContext

    cam = make_camera(tmp_path / "internal", serial="ZFY0666", clips=1, seconds=0.3,
                      width=160, height=120, fps=10.0)
    (tmp_path / "mnt").mkdir()
    password = tmp_path / "camera.password"
    password.write_text("pw\n")
    password.chmod(0o600)
    with Gat947Sim.from_simcam(cam, tmp_path / "mnt", password="pw").start() as sim:
        monkeypatch.setattr(gat947.list_ports, "comports", lambda: [
            FakePort(sim.port, 0x0603, 0x8612, "ZFY0666LOST", "1-3:1.0")])
        cfg = Gat947Config(mount_root=tmp_path / "mnt", ports=[], require_mount=False,
                           scan_interval_s=0.05, command_timeout_s=0.2,
                           password_file=password)
        (device,) = Gat947Detector(cfg, DeviceContext(policy=policy)).scan()
        if refused:
            assert isinstance(device, RefusedDevice)
            assert device.refusal.identity == UsbIdentity("0603:8612", "ZFY0666LOST", "1-3")
            assert device.present()
            with pytest.raises(DeviceRefusedError):
                device.identify()
            assert sim.requests == []  # not even InitDevice: the password never left
        else:
            assert not isinstance(device, RefusedDevice)
            assert device.identify().serial == "ZFY0666"
            assert sim.requests  # the camera was spoken to


def test_mount_needs_a_mount_root_outside_its_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(write_station_config(tmp_path, "[mount]\n"))
    assert info.value.problems == [
        "mount: the station mounts camera volumes below a driver's mount_root: configure "
        "[devices.mass_storage] or [devices.gat947]"]
    with pytest.raises(ConfigError) as info:
        config_mod.load(write_station_config(tmp_path, """
            [devices.mass_storage]
            mount_root = "media"
            [mount]
            run_dir = "media/notes"
            """))
    assert [p.split(";")[0] for p in info.value.problems] == [
        "mount.run_dir: media/notes is inside devices.mass_storage.mount_root (media)"]
