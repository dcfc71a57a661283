"""Make simulated cameras: real video files (OpenCV) in a directory that docks atomically.

A camera is built in a staging directory beside ``root`` (same file system,
outside the watched tree) and renamed into ``root`` in one step, so the
simulated driver never sees half a camera.  Clips are real videos with
moving content and a visible frame counter: mp4v in ``.MP4``, MJPG in
``.AVI``.  Names follow the catalog's ``simulated`` entry, written in the
camera's local time (the entry's UTC offset) as the camera's clock says it,
so a wrong clock (``clock_offset_s``) shows in the names as it would on a
real camera.  Every file is re-opened with OpenCV and its frames counted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from agent import packaged
from agent.durable import fsync_dir, makedirs_durable, write_atomic
from drivers import catalog as catalog_mod
from drivers.simulated import IDENTITY_FILE

log = logging.getLogger(__name__)

DEFAULT_CATALOG = packaged.path(packaged.CATALOG)  # the catalog shipped with bwc-agent
FIRMWARE = "simcam-1.0"
GAP_S = 5.0  # seconds between the end of one clip and the start of the next
_FOURCC = {"mp4": "mp4v", "avi": "MJPG"}


class SimcamError(RuntimeError):
    """OpenCV could not write or read back a clip."""


def _frame(i: int, total: int, width: int, height: int, label: str) -> np.ndarray:
    """One frame: a gradient background, a moving block and the frame counter."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, :, 0] = np.linspace(40, 200, width, dtype=np.uint8)[None, :]
    img[:, :, 1] = (i * 7) % 256
    img[:, :, 2] = np.linspace(200, 40, height, dtype=np.uint8)[:, None]
    size = max(8, min(width, height) // 5)
    x = int((width - size) * (i / max(total - 1, 1)))
    y = (height - size) // 2
    cv2.rectangle(img, (x, y), (x + size, y + size), (255, 255, 255), -1)
    scale = max(0.3, height / 480)
    cv2.putText(img, f"{label} #{i + 1:05d}", (8, max(16, int(30 * scale))),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, int(2 * scale)), cv2.LINE_AA)
    return img


def write_clip(path: Path, *, frames: int, width: int, height: int, fps: float,
               label: str) -> None:
    """Write ``frames`` frames to ``path`` (codec by extension) and check they read back."""
    ext = path.suffix.lower().lstrip(".")
    fourcc = _FOURCC.get(ext)
    if fourcc is None:
        raise ValueError(f"{path.name}: unsupported format {ext!r} (use one of "
                         f"{', '.join(sorted(_FOURCC))})")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise SimcamError(f"OpenCV cannot write {fourcc} video to {path}")
    try:
        for i in range(frames):
            writer.write(_frame(i, frames, width, height, label))
    finally:
        writer.release()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    cap = cv2.VideoCapture(str(path))
    try:
        ok, _ = cap.read() if cap.isOpened() else (False, None)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
    finally:
        cap.release()
    if not ok or count != frames:
        raise SimcamError(f"{path}: OpenCV reads back {count} frames, wrote {frames}")


def make_camera(
    root: Path,
    *,
    name: str | None = None,
    serial: str = "SIM0001",
    officer_id: str = "000001",
    officer_name: str = "张警官",
    unit_code: str = "110000000000",
    unit_name: str = "示范执法大队",
    clips: int = 3,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: float = 15.0,
    start: datetime | None = None,
    important_every: int = 3,
    formats: Sequence[str] = ("mp4", "avi"),
    clock_offset_s: float = 0.0,
    catalog: Path = DEFAULT_CATALOG,
    catalog_key: str = "simulated",
) -> Path:
    """Build a simulated camera and dock it as ``root/<name or serial>``; returns its path.

    ``start`` (true time; naive means UTC) is when the first clip starts;
    clips follow each other ``GAP_S`` seconds apart, clip ``k`` (1-based) is
    important when ``important_every`` divides ``k``, formats alternate.
    """
    if clips < 0 or seconds <= 0 or fps <= 0 or width < 16 or height < 16:
        raise ValueError("clips must be >= 0, seconds and fps > 0, width and height >= 16")
    if not formats:
        raise ValueError("formats: give at least one of mp4, avi")
    entry = catalog_mod.load(catalog).get(catalog_key)
    dir_name = name or serial
    if "/" in dir_name or dir_name in ("", ".", "..") or dir_name.startswith("."):
        raise ValueError(f"camera directory name {dir_name!r} is not a plain name")
    first = start or datetime.now(UTC).replace(microsecond=0)
    if first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    frames = max(1, round(seconds * fps))

    makedirs_durable(root)
    target = root / dir_name
    if os.path.lexists(target):
        raise FileExistsError(f"{target} already exists (undock it first)")
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.simcam-", dir=root.parent))
    try:
        camera = staging / dir_name
        camera.mkdir()
        identity = {
            "serial": serial, "vendor": entry.vendor, "model": entry.model,
            "firmware": FIRMWARE, "officer_id": officer_id, "officer_name": officer_name,
            "unit_code": unit_code, "unit_name": unit_name, "clock_offset_s": clock_offset_s,
        }
        text = json.dumps(identity, ensure_ascii=False, indent=2) + "\n"
        write_atomic(camera / IDENTITY_FILE, text.encode("utf-8"))
        for k in range(1, clips + 1):
            true_start = first + timedelta(seconds=(k - 1) * (seconds + GAP_S))
            shown_start = true_start + timedelta(seconds=clock_offset_s)  # camera's clock
            ext = formats[(k - 1) % len(formats)].lower()
            important = important_every > 0 and k % important_every == 0
            file_name = catalog_mod.format_name(
                entry, serial=serial, officer=officer_id, start=shown_start, seq=k,
                important=important, ext=ext)
            local_day = shown_start.astimezone(timezone(entry.utc_offset))
            day_dir = camera / "DCIM" / f"{local_day:%Y%m%d}"
            day_dir.mkdir(parents=True, exist_ok=True)
            clip = day_dir / file_name
            write_clip(clip, frames=frames, width=width, height=height, fps=fps,
                       label=f"{serial} {k:04d}")
            end = (shown_start + timedelta(seconds=seconds)).timestamp()
            os.utime(clip, (end, end))  # the camera stamps files with its own clock
        for directory in sorted({p.parent for p in camera.rglob("*")} | {camera}):
            fsync_dir(directory)
        os.rename(camera, target)  # the dock: one atomic step
        fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("simulated camera %s docked at %s", serial, target)
    return target
