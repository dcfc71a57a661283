"""A recording's first picture, small: made in the probe's child, checked in the parent.

The officer at the station screen recognises a recording by its first
picture.  The probe's child process (agent/media/child.py) already decodes
the start of every recording with FFmpeg inside its limits, so the picture
is taken there, from the frames the probe decodes anyway: the first video
frame that decodes without an error (for a photo, the photo itself) is
converted to BGR (PyAV), made at most ``MAX_WIDTH`` x ``MAX_HEIGHT`` keeping
its displayed aspect ratio (OpenCV, INTER_AREA) and encoded as a baseline
JPEG of at most ``MAX_BYTES`` (OpenCV).  Audio has no picture; neither has
a file nothing of which decodes.

A thumbnail is not evidence: it is not in the manifest, not signed, not
uploaded, not exported, and whether one is made changes nothing in the
``media`` object.  The parent believes the child's bytes only after
:func:`accept` found them to be one small JPEG of the allowed size, read by
the parent's own header parser (agent/media/photo.py), never decoded in the
agent's process.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from agent.media.photo import read_jpeg

MAX_WIDTH, MAX_HEIGHT = 320, 180
QUALITIES = (70, 45)  # the second only when the first is over MAX_BYTES (noise, fine detail)
MAX_BYTES = 48 * 1024
# Frames larger than this are not converted: 40 Mpx is 120 MB of BGR, within the probe's
# memory limit beside FFmpeg's own buffers; cameras record at most 8K (33 Mpx).
MAX_SOURCE_PIXELS = 40_000_000
MAX_NOTE = 200


class MalformedThumbnail(ValueError):
    """What the child sent as a thumbnail is not one small JPEG; the text says how."""


@dataclass(frozen=True)
class Thumbnail:
    """A checked thumbnail: JPEG bytes and the dimensions its header declares."""

    jpeg: bytes
    width: int
    height: int


# --- in the probe's child ----------------------------------------------------------------

def fit(width: int, height: int, sample_aspect: float = 1.0) -> tuple[int, int]:
    """The thumbnail's size for a frame of ``width`` x ``height`` pixels of ``sample_aspect``."""
    shown = width * sample_aspect  # the width a player shows (anamorphic pixels)
    scale = min(MAX_WIDTH / shown, MAX_HEIGHT / height, 1.0)
    return (max(1, min(MAX_WIDTH, round(shown * scale))),
            max(1, min(MAX_HEIGHT, round(height * scale))))


class FirstPicture:
    """Takes the first good frame offered; ``result()`` is its thumbnail as the child sends it.

    Never raises: a frame that cannot be converted leaves a note and the next
    frame is tried (at most ``MAX_TRIES``), so a thumbnail can never cost the
    probe its verdict.
    """

    MAX_TRIES = 3

    def __init__(self) -> None:
        self.small: Any = None  # the resized BGR array, once taken
        self.note = "no video frame decoded"
        self.tries = 0

    @property
    def done(self) -> bool:
        return self.small is not None or self.tries >= self.MAX_TRIES

    def offer(self, frames: list[Any], sample_aspect: Any) -> bool:
        """Offer one packet's decoded frames (of a packet without errors); True once taken."""
        for frame in frames:
            if self.done:
                break
            if frame.is_corrupt:
                self.note = "the first frames decoded with errors"
                continue
            self.tries += 1
            try:
                self.small = self._shrink(frame, sample_aspect)
            except Exception as exc:  # MemoryError, a pixel format swscale refuses, ...
                self.note = f"frame not converted: {type(exc).__name__}: {exc}"[:MAX_NOTE]
        return self.done

    @staticmethod
    def _shrink(frame: Any, sample_aspect: Any) -> Any:
        import cv2  # here, not at import: only a probe that decodes a picture loads OpenCV

        width, height = int(frame.width), int(frame.height)
        if not (width > 0 and height > 0 and width * height <= MAX_SOURCE_PIXELS):
            raise ValueError(f"frame of {width}x{height} pixels")
        sar = float(Fraction(sample_aspect)) if sample_aspect else 1.0
        if not (math.isfinite(sar) and 0.1 <= sar <= 10.0):
            sar = 1.0  # unset (0/1) or absurd: square pixels
        cv2.setNumThreads(1)  # one core copies, one probes: none spare for OpenCV's pool
        bgr = frame.to_ndarray(format="bgr24")
        return cv2.resize(bgr, fit(width, height, sar), interpolation=cv2.INTER_AREA)

    def result(self) -> tuple[str | None, str | None]:
        """(base64 JPEG or None, why there is none or None) for the child's output."""
        if self.small is None:
            return None, self.note
        import cv2

        try:
            for quality in QUALITIES:
                ok, buf = cv2.imencode(".jpg", self.small, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if ok and len(buf) <= MAX_BYTES:
                    return base64.b64encode(buf.tobytes()).decode("ascii"), None
        except Exception as exc:
            return None, f"not encoded: {type(exc).__name__}: {exc}"[:MAX_NOTE]
        return None, f"over {MAX_BYTES} bytes even at JPEG quality {QUALITIES[-1]}"


# --- in the agent ------------------------------------------------------------------------

def accept(value: Any) -> Thumbnail:
    """Check what the child sent; MalformedThumbnail names what is wrong with it."""
    if not isinstance(value, str):
        raise MalformedThumbnail(f"not a base64 text but {type(value).__name__}")
    if len(value) > (MAX_BYTES + 2) // 3 * 4:
        raise MalformedThumbnail(f"over {MAX_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedThumbnail(f"not base64 ({exc})") from None
    return check(data)


def check(data: bytes) -> Thumbnail:
    """The thumbnail in ``data`` if it is one JPEG of at most MAX_BYTES and MAX_WIDTH x
    MAX_HEIGHT (start and end markers, frame header); MalformedThumbnail otherwise."""
    if len(data) > MAX_BYTES:
        raise MalformedThumbnail(f"{len(data)} bytes, over {MAX_BYTES}")
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        raise MalformedThumbnail("no JPEG start and end markers")
    photo = read_jpeg(io.BytesIO(data))
    if not (0 < photo.width <= MAX_WIDTH and 0 < photo.height <= MAX_HEIGHT):
        raise MalformedThumbnail(f"a JPEG of {photo.width}x{photo.height}, not within "
                                 f"{MAX_WIDTH}x{MAX_HEIGHT}")
    return Thumbnail(data, photo.width, photo.height)
