"""JPEG photos: dimensions from the frame header and the EXIF time the camera wrote.

Only the marker segments before the image data are read (at most
``MAX_SEGMENTS`` of them, each at most 64 KiB, as JPEG's 16-bit lengths
allow).  EXIF is a TIFF structure inside the APP1 segment: IFD0 points to
the EXIF IFD, which holds DateTimeOriginal (0x9003) and, since EXIF 2.31,
OffsetTimeOriginal (0x9011).  Every offset is checked against the segment;
each IFD is read once (no loops through a hostile chain) and at most
``MAX_ENTRIES`` entries of it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_SEGMENTS = 64
MAX_ENTRIES = 256
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_EXIF_TIME = re.compile(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}")
_EXIF_OFFSET = re.compile(r"[+-]\d{2}:\d{2}")


@dataclass(frozen=True)
class Photo:
    width: int = 0
    height: int = 0
    exif_datetime_original: str | None = None  # "YYYY:MM:DD HH:MM:SS", the camera's clock
    exif_offset_time_original: str | None = None  # "+08:00", when the camera wrote it


def read_jpeg(f: BinaryIO) -> Photo:
    """Dimensions and EXIF time of the JPEG in ``f`` (zeros/None where absent or malformed)."""
    f.seek(0)
    if f.read(2) != b"\xff\xd8":
        return Photo()
    width = height = 0
    exif: tuple[str | None, str | None] = (None, None)
    for _ in range(MAX_SEGMENTS):
        marker = f.read(2)
        while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes
            marker = marker[1:] + f.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            break
        code = marker[1]
        if code in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            break
        if 0xD0 <= code <= 0xD7 or code == 0x01:
            continue  # markers without a length
        raw = f.read(2)
        if len(raw) < 2:
            break
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            break
        body = f.read(length - 2)
        if code in _SOF and len(body) >= 5:
            height, width = struct.unpack_from(">HH", body, 1)
        elif code == 0xE1 and body[:6] == b"Exif\x00\x00" and exif == (None, None):
            exif = _exif_times(body[6:])
    return Photo(width, height, *exif)


def _exif_times(tiff: bytes) -> tuple[str | None, str | None]:
    if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None, None
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        ifd0 = struct.unpack_from(order + "I", tiff, 4)[0]
        exif_ifd = _entries(tiff, order, ifd0).get(0x8769)
        if exif_ifd is None:
            return None, None
        tags = _entries(tiff, order, _long(tiff, order, exif_ifd))
        return (_ascii(tiff, order, tags.get(0x9003), _EXIF_TIME),
                _ascii(tiff, order, tags.get(0x9011), _EXIF_OFFSET))
    except (struct.error, ValueError):
        return None, None


def _entries(tiff: bytes, order: str, at: int) -> dict[int, tuple[int, int, int]]:
    """IFD entries at offset ``at``: tag -> (type, count, offset of the value field)."""
    if not 8 <= at <= len(tiff) - 2:
        raise ValueError("IFD offset outside the EXIF segment")
    count = min(struct.unpack_from(order + "H", tiff, at)[0], MAX_ENTRIES)
    out: dict[int, tuple[int, int, int]] = {}
    for i in range(count):
        pos = at + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, pos)
        out.setdefault(tag, (kind, n, pos + 8))
    return out


def _long(tiff: bytes, order: str, entry: tuple[int, int, int]) -> int:
    kind, _, value_at = entry
    if kind not in (4, 13):  # LONG or IFD
        raise ValueError("EXIF IFD pointer has the wrong type")
    return int(struct.unpack_from(order + "I", tiff, value_at)[0])


def _ascii(tiff: bytes, order: str, entry: tuple[int, int, int] | None,
           shape: re.Pattern[str]) -> str | None:
    if entry is None or entry[0] != 2 or not 0 < entry[1] <= 64:
        return None
    _, n, value_at = entry
    at = value_at if n <= 4 else struct.unpack_from(order + "I", tiff, value_at)[0]
    raw = tiff[at:at + n]
    if len(raw) != n:
        return None
    text = raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")
    return text if shape.fullmatch(text) else None
