"""A camera pulled out in the middle of a copy, then docked again.

The copy of the large recording is held after its first block (a paused
reader, not a large file), the camera is pulled out (its block device goes,
systemd stops the mount unit), and the reader goes on: the copy fails as a
removed device, nothing of it is kept, the mount is gone at once (lazy
unmount) and no loop device stays behind.  Docked again, everything is
copied, the large recording included, each with the source's SHA-256.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from agent import config as config_mod
from agent.station import Station
from drivers.base import Recording
from drivers.mass_storage import MassStorageDevice
from tests.filesystems.rig import CAMERA, Rig, fat32_image, needs_filesystems, sha
from tests.support.stations import _Hooked

pytestmark = needs_filesystems
LARGE = 3 * 1024 * 1024


class Gate:
    """Holds the first copy of the large recording after its first block until released."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go_on = threading.Event()
        self.used = False

    def hook(self, done: int) -> None:
        if done > 0 and not self.used:
            self.used = True
            self.reached.set()
            assert self.go_on.wait(30), "the test never let the copy go on"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    made = Gate()
    original = MassStorageDevice.open

    def gated_open(self: MassStorageDevice, recording: Recording) -> BinaryIO:
        stream = original(self, recording)
        if recording.size < LARGE:
            return stream
        return _Hooked(stream, made.hook)  # type: ignore[return-value]

    monkeypatch.setattr(MassStorageDevice, "open", gated_open)
    yield made
    made.go_on.set()


def test_yanked_mid_copy_leaves_no_mount_and_is_redone_at_the_next_dock(
        rig: Rig, clips: dict[str, bytes], gate: Gate) -> None:
    large = os.urandom(LARGE)
    files = fat32_image(rig.base / "images" / "cam.img", [
        ("ZFY000~1.MP4", "ZFY0001_010203_20240105083015_0001_IMP.MP4", clips["a.mp4"]),
        ("ZFY000~2.MP4", "ZFY0001_010203_20240105090000_0002.MP4", large),
        ("ZFY000~3.MP4", "ZFY0001_010203_20240105100000_0003.MP4", clips["b.mp4"]),
    ])
    volume = rig.add(rig.base / "images" / "cam.img", CAMERA, "vfat", files)
    large_path = next(p for p, data in files.items() if data == large)
    station = Station(config_mod.load(rig.config_path))
    station.start(watch=True)
    try:
        rig.dock(volume)
        assert gate.reached.wait(30), "the copy of the large recording never started"
        rig.yank(volume)
        # Whichever the helper saw first, the device leaving or systemd stopping the unit.
        assert volume.outcome in ("gone", "stopped")
        assert not rig.point(volume).exists()
        gate.go_on.set()
        rig.wait_for(lambda: any(r["path"] == large_path and r["state"] == "discovered"
                                 and r["copy_attempts"] == 1 for r in rig.clips())
                     and not station.releasing() and not _copying(rig),
                     "the interrupted copy to be put back")
        rig.wait_for(lambda: not list((rig.base / "data/vault/incoming").iterdir()),
                     "the partial copy to be discarded")
        assert sha(large) not in {r["sha256"] for r in rig.clips()}
        assert not Path(station.vault.path_for(sha(large))).exists()  # type: ignore[union-attr]
        rig.assert_nothing_mounted()  # lazy unmount, the loop device released

        rig.dock(volume)  # docked again: a new block device, a new mount
        assert rig.finish(volume) == "done"
        rig.assert_in_vault(volume)
        (row,) = [r for r in rig.clips() if r["path"] == large_path]
        assert (row["state"], row["copy_attempts"]) == ("sealed", 2)
        removed = [e for e in rig.log_entries("clip.discovered") if "reason" in e]
        assert any("device removed" in str(e["reason"]) for e in removed), removed
    finally:
        station.stop()
    rig.unplug(volume)
    rig.assert_nothing_mounted()


def _copying(rig: Rig) -> bool:
    return any(r["state"] == "copying" for r in rig.clips())
