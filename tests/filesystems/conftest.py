"""Fixtures for the real file-system tests: a station rig per test, real clips once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.simcam import write_clip
from tests.filesystems.rig import Rig, station_rig


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small real recordings (OpenCV encoders): two MP4s and an AVI."""
    base = tmp_path_factory.mktemp("clips")
    made = {}
    for name, label in (("a.mp4", "A"), ("b.mp4", "B"), ("c.avi", "C")):
        write_clip(base / name, frames=6, width=160, height=120, fps=10.0, label=label)
        made[name] = (base / name).read_bytes()
    return made


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with station_rig(tmp_path) as made:
        yield made
