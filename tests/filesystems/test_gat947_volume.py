"""A serial (GA/T 947-style) camera whose storage the station mounts after SetMSDC.

The camera speaks the protocol on a real pseudo-terminal (Gat947Sim); when
it accepts SetMSDC its storage "enumerates": the test plugs the camera's
FAT32 image in as a loop block device and starts the mount helper as udev
would.  With both drivers configured, the helper puts the volume below the
gat947 driver's mount_root because the driver said, just before SetMSDC,
that a camera is switching; the driver offloads it under the identity the
serial protocol gave, and lets it go when done.
"""

from __future__ import annotations

import threading

from agent import config as config_mod
from agent.station import Station
from drivers.gat947_sim import Gat947Sim
from drivers.simcam import make_camera
from tests.filesystems.rig import CAMERA, Rig, Volume, fat32_image, needs_filesystems

pytestmark = needs_filesystems
SERIAL = "ZFY0042"


def test_gat947_storage_is_mounted_below_its_root_and_offloaded(rig: Rig) -> None:
    cam = make_camera(rig.base / "internal", serial=SERIAL, officer_id="012345", clips=2,
                      seconds=0.3, width=160, height=120, fps=10.0)
    recordings = sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file())
    image = rig.base / "images" / "storage.img"
    files = fat32_image(image, [(f"ZFY004~{i}.{p.suffix[1:].upper()}", p.name, p.read_bytes())
                                for i, p in enumerate(recordings, start=1)],
                        dirs=("DCIM", "100MEDIA"))
    gat_root = rig.base / "media-gat947"
    gat_root.mkdir(mode=0o755)
    password = rig.base / "camera.password"
    password.write_text("Zfy#2024\n")
    password.chmod(0o600)
    (rig.base / "empty").mkdir()
    sim = Gat947Sim.from_simcam(cam, rig.base / "empty", password="Zfy#2024",
                                drop_port_on_msdc=True)
    sim.mount_on_msdc = False  # its storage enumerates as a block device instead (below)
    with sim.start():
        rig.write_config('policy = "catalog"\n', f"""
            [devices.gat947]
            mount_root = "{gat_root}"
            ports = ["{sim.port}"]
            password_file = "{password}"
            catalog_key = "simulated"
            scan_interval_s = 0.1
            command_timeout_s = 0.5
            mount_timeout_s = 20
            """)
        volume = rig.add(image, CAMERA, "vfat", files)
        enumerated = _enumerate_on_msdc(rig, volume)
        station = Station(config_mod.load(rig.config_path))
        station.start(watch=True)
        try:
            enumerated.join(30)
            assert volume.helper is not None, "SetMSDC never came"
            assert rig.finish(volume) == "done"
        finally:
            station.stop()
    assert volume.outcome == "done"
    rig.assert_in_vault(volume)
    rows = rig.clips()
    assert {(r["device_serial"], r["officer_id"], r["state"]) for r in rows} == {
        (SERIAL, "012345", "sealed")}
    docked = rig.log_entries("device.docked")
    assert {(d["driver"], d["handle"], d["serial"]) for d in docked} == {
        ("gat947", sim.port, SERIAL)}
    assert not any(rig.mount_root.iterdir())  # nothing went below the mass_storage root
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def _enumerate_on_msdc(rig: Rig, volume: Volume) -> threading.Thread:
    """Plug the storage in once the driver says a camera is switching (as USB would)."""
    note = rig.run_dir / "msdc-any"  # a pty has no USB port path

    def watch() -> None:
        rig.wait_for(note.exists, "the gat947 driver to announce SetMSDC")
        rig.dock(volume)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
