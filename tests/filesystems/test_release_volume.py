"""Dock to release on a real FAT32 camera volume, against the development platform.

The reason the station mounts cameras read-write: once the platform has
acknowledged a clip's SHA-256, the station deletes it from the camera.  Here
the camera is a loop-device FAT32 volume mounted by the helper, the daemon
runs as IT staff run it, the platform is real mosquitto (TLS) and HTTPS tus.
The volume stays mounted after the dock session while the clips wait for
their acknowledgements, is let go once they are released, and the camera's
file system no longer holds them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.devplatform.stand import DevStand
from tests.filesystems.rig import CAMERA, Rig, fat32_image, needs_filesystems

pytestmark = [needs_filesystems, pytest.mark.integration]


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def test_acknowledged_clips_are_released_from_the_volume_before_it_is_let_go(
        rig: Rig, stand: DevStand, clips: dict[str, bytes]) -> None:
    rig.config_path = stand.station(rig.base / "st", "ST-0001", extra=rig.station_tables(),
                                    platform_extra="retry_max_s = 1\n")
    rig.data_dir = rig.base / "st" / "data"
    image = rig.base / "images" / "cam.img"
    files = fat32_image(image, [
        ("ZFY000~1.MP4", "ZFY0001_010203_20240105083015_0001.MP4", clips["a.mp4"]),
        ("执法记~1.MP4", "执法记录仪_20240105_090000.MP4", clips["b.mp4"]),
    ])
    volume = rig.add(image, CAMERA, "vfat", files)
    daemon = rig.start_daemon()
    rig.wait_for((rig.data_dir / "state.db").exists, "the daemon to start")
    rig.dock(volume)
    # Let go only after the platform acknowledged every clip and they left the camera.
    assert rig.finish(volume, timeout=90) == "done"
    assert {row["state"] for row in rig.clips()} == {"released"}
    rig.assert_in_vault(volume)
    assert "Traceback" not in rig.stop_daemon(daemon)
    rig.unplug(volume)
    rig.assert_nothing_mounted()
    # The camera's file system: sound, and without the released recordings.
    subprocess.run(["fsck.vfat", "-n", str(image)], check=True, capture_output=True)
    rig.dock(volume)
    assert os.listdir(rig.point(volume) / "DCIM") == []
    assert volume.helper is not None
    volume.helper.send_signal(signal.SIGTERM)
    assert rig.finish(volume) == "stopped"
    rig.unplug(volume)
    rig.assert_nothing_mounted()
