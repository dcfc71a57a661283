"""simcam: simulated cameras with real OpenCV videos, docked atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers import catalog, simcam
from drivers.simulated import IDENTITY_FILE, SimulatedDevice

REPO = Path(__file__).resolve().parents[2]
REPO_CATALOG = REPO / "config" / "devices.toml"
START = datetime(2024, 3, 1, 15, 30, 0, tzinfo=UTC)  # 23:30 in the camera's +08:00


def frames_of(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames


def test_make_camera_writes_real_clips_with_parsable_names(tmp_path: Path) -> None:
    root = tmp_path / "sim"
    cam = simcam.make_camera(root, serial="SIM0042", officer_id="010203", officer_name="王五",
                             clips=4, seconds=1.0, width=64, height=48, fps=12, start=START,
                             important_every=2, catalog=REPO_CATALOG)
    assert cam == root / "SIM0042"
    # Staging happened beside the root and left nothing behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]
    identity = json.loads((cam / IDENTITY_FILE).read_text(encoding="utf-8"))
    assert (identity["serial"], identity["officer_name"], identity["clock_offset_s"]) == (
        "SIM0042", "王五", 0.0)

    entry = catalog.load(REPO_CATALOG).get("simulated")
    recs = SimulatedDevice(cam, entry).recordings().recordings
    assert [r.path for r in recs] == [
        "DCIM/20240301/SIM0042_010203_20240301233000_0001.MP4",
        "DCIM/20240301/SIM0042_010203_20240301233006_0002_IMP.AVI",
        "DCIM/20240301/SIM0042_010203_20240301233012_0003.MP4",
        "DCIM/20240301/SIM0042_010203_20240301233018_0004_IMP.AVI",
    ]
    assert [r.recorded_start for r in recs] == [
        "2024-03-01T15:30:00.000Z", "2024-03-01T15:30:06.000Z",
        "2024-03-01T15:30:12.000Z", "2024-03-01T15:30:18.000Z"]
    assert [r.important for r in recs] == [False, True, False, True]
    for rec in recs:
        frames = frames_of(cam / rec.path)
        assert len(frames) == 12, rec.path
        assert frames[0].shape == (48, 64, 3)
        # Moving content: the first and last frames differ clearly.
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5
    fourccs = {Path(r.path).suffix: int(cv2.VideoCapture(str(cam / r.path)).get(
        cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") for r in recs}
    # MPEG-4 part 2 (FFmpeg reports the mp4v stream as FMP4) and Motion JPEG.
    assert fourccs[".MP4"] in (b"mp4v", b"FMP4") and fourccs[".AVI"] == b"MJPG"
    # File times are the camera's clip end times.
    assert recs[0].mtime == START.timestamp() + 1.0


def test_wrong_clock_shows_in_names_and_identity(tmp_path: Path) -> None:
    cam = simcam.make_camera(tmp_path / "sim", serial="SIM0001", clips=1, seconds=0.5,
                             width=32, height=32, fps=10, start=START, clock_offset_s=-86400,
                             formats=("avi",), catalog=REPO_CATALOG)
    (clip,) = (cam / "DCIM").rglob("*.AVI")
    assert clip.name == "SIM0001_000001_20240229233000_0001.AVI"
    assert json.loads((cam / IDENTITY_FILE).read_text())["clock_offset_s"] == -86400


def test_refuses_existing_camera_and_bad_arguments(tmp_path: Path) -> None:
    root = tmp_path / "sim"
    simcam.make_camera(root, clips=0, catalog=REPO_CATALOG)
    with pytest.raises(FileExistsError, match="SIM0001 already exists"):
        simcam.make_camera(root, clips=0, catalog=REPO_CATALOG)
    with pytest.raises(ValueError, match="does not match catalog entry 'simulated'"):
        simcam.make_camera(root, serial="bad serial", clips=1, width=32, height=32,
                           catalog=REPO_CATALOG)
    with pytest.raises(ValueError, match="not a plain name"):
        simcam.make_camera(root, name="../escape", clips=0, catalog=REPO_CATALOG)
    with pytest.raises(ValueError, match="unsupported format 'mkv'"):
        simcam.write_clip(tmp_path / "x.mkv", frames=1, width=32, height=32, fps=1, label="x")
    # Failed attempts leave no staging directories and no half camera.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]
    assert sorted(p.name for p in root.iterdir()) == ["SIM0001"]


def test_cli_prints_the_camera_and_its_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "simcam"), str(tmp_path / "sim"),
         "--serial", "CLI0001", "--officer", "123456", "--clips", "2", "--seconds", "0.5",
         "--size", "32x32", "--fps", "8", "--start", "2024-01-01T00:00:00Z"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(tmp_path / "sim" / "CLI0001")
    assert any("CLI0001_123456_20240101080000_0001.MP4" in ln for ln in lines)
    assert any("CLI0001_123456_20240101080005_0002.AVI" in ln for ln in lines)
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "simcam"),
                          str(tmp_path / "sim"), "--size", "big"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "not WIDTHxHEIGHT" in bad.stderr
