"""A media corpus made by real encoders (the ffmpeg command), good files and damaged copies.

Every good file is 6 s of a moving test pattern (320x240, 25 fps, a keyframe
every second) and/or a 440 Hz tone, the way camera firmware would write it:
H.264 and HEVC MP4 (index at the end and "faststart"), fragmented MP4, MOV
with a timecode data track, MKV with MP3 audio, MPEG-TS, MJPEG AVI, WAV,
MP3, ADTS AAC, AMR-NB and a JPEG photo with EXIF.  AMR-NB is written by hand
in the AMR storage format (RFC 4867) when ffmpeg has no AMR-NB encoder.

Damaged copies: cut at 10, 50 and 90 % of their bytes, a fragmented MP4 cut
inside a fragment, a TS cut inside a packet, an MP4 whose middle fifth is
zeroed, an empty file, random bytes, and an HTML page named .MP4.

The corpus is built once per recipe and ffmpeg version, into a directory
under the system's temporary directory, and reused by later test runs.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECONDS = 6
VIDEO = ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={SECONDS}"]
AUDIO = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}"]
H264 = ["-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p"]
HEVC = ["-c:v", "libx265", "-preset", "veryfast", "-x265-params", "log-level=error:keyint=25",
        "-pix_fmt", "yuv420p", "-tag:v", "hvc1"]
AAC = ["-c:a", "aac", "-b:a", "64k"]

# name -> ffmpeg arguments between the inputs and the output file.
GOOD: dict[str, list[str]] = {
    "h264.mp4": [*VIDEO, *AUDIO, *H264, *AAC],
    "h264_faststart.mp4": [*VIDEO, *AUDIO, *H264, *AAC, "-movflags", "+faststart"],
    "hevc.mp4": [*VIDEO, *AUDIO, *HEVC, *AAC],
    "hevc_faststart.mp4": [*VIDEO, *AUDIO, *HEVC, *AAC, "-movflags", "+faststart"],
    "fragmented.mp4": [*VIDEO, *AUDIO, *H264, *AAC, "-movflags",
                       "+frag_keyframe+empty_moov+default_base_moof"],
    "clip.mov": [*VIDEO, *AUDIO, *H264, "-c:a", "pcm_s16le", "-timecode", "08:00:00:00"],
    "clip.mkv": [*VIDEO, *AUDIO, *H264, "-c:a", "libmp3lame", "-b:a", "64k"],
    "clip.ts": [*VIDEO, *AUDIO, *H264, *AAC],
    "mjpeg.avi": [*VIDEO, *AUDIO, "-c:v", "mjpeg", "-q:v", "6", "-pix_fmt", "yuvj420p",
                  "-c:a", "pcm_s16le"],
    "audio.wav": [*AUDIO, "-ar", "16000", "-c:a", "pcm_s16le"],
    "audio.mp3": [*AUDIO, "-c:a", "libmp3lame", "-b:a", "64k"],
    "audio.aac": [*AUDIO, *AAC],
    "photo.jpg": ["-f", "lavfi", "-i", "testsrc2=size=640x480", "-frames:v", "1",
                  "-q:v", "4"],
}
HAND_MADE = ("audio.amr",)
CUT_PERCENT = (10, 50, 90)
CUT = ("h264.mp4", "h264_faststart.mp4", "hevc.mp4", "hevc_faststart.mp4", "fragmented.mp4",
       "clip.mov", "clip.mkv", "clip.ts", "mjpeg.avi", "audio.wav", "audio.mp3", "audio.aac",
       "audio.amr", "photo.jpg")
EXIF_TIME, EXIF_OFFSET = "2024:05:01 08:30:00", "+08:00"


@dataclass(frozen=True)
class Damaged:
    name: str
    source: str | None  # the good file it was made from
    how: str  # "cut", "zeroed", "empty", "random", "html"
    cut_at: int | None = None  # bytes kept, for cuts
    zeroed: tuple[int, int] | None = None


def recipe_key() -> str:
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    text = repr((GOOD, HAND_MADE, CUT, CUT_PERCENT, version, EXIF_TIME, 3))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(base: Path | None = None) -> Path:
    """The corpus directory (built now if this recipe has not been built before)."""
    base = base or Path(tempfile.gettempdir())
    final = base / f"bwc-media-corpus-{recipe_key()}"
    if (final / "DONE").exists():
        return final
    work = Path(tempfile.mkdtemp(prefix="bwc-media-corpus-", dir=base))
    for name, args in GOOD.items():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args,
                        str(work / name)], check=True)
    add_exif(work / "photo.jpg")
    write_amr(work / "audio.amr")
    for item in damaged_list(work):
        make_damaged(work, item)
    (work / "DONE").write_text("ok\n")
    try:
        os.rename(work, final)
    except OSError:  # another run built it at the same moment
        shutil.rmtree(work, ignore_errors=True)
    return final


def damaged_list(d: Path) -> list[Damaged]:
    out = []
    for name in CUT:
        size = (d / name).stat().st_size
        for pct in CUT_PERCENT:
            out.append(Damaged(f"cut{pct}_{name}", name, "cut", size * pct // 100))
    frag = (d / "fragmented.mp4").read_bytes()
    mdats = [i - 4 for i in _find_all(frag, b"mdat")]
    third = mdats[2]  # the third fragment's media data: cut in its middle
    n = struct.unpack(">I", frag[third:third + 4])[0]
    out.append(Damaged("cutfrag_fragmented.mp4", "fragmented.mp4", "cut", third + n // 2))
    ts = (d / "clip.ts").stat().st_size
    out.append(Damaged("cutpacket_clip.ts", "clip.ts", "cut", (ts // 188 // 2) * 188 + 100))
    size = (d / "h264.mp4").stat().st_size
    out.append(Damaged("zeroed_h264.mp4", "h264.mp4", "zeroed",
                       zeroed=(size * 2 // 5, size * 3 // 5)))
    size = (d / "h264_faststart.mp4").stat().st_size
    out.append(Damaged("zeroed_h264_faststart.mp4", "h264_faststart.mp4", "zeroed",
                       zeroed=(size * 2 // 5, size * 3 // 5)))
    out.append(Damaged("empty.mp4", None, "empty"))
    out.append(Damaged("random.mp4", None, "random"))
    out.append(Damaged("not_found.MP4", None, "html"))
    return out


def damaged_names() -> list[str]:
    """The names :func:`damaged_list` gives, known without building the corpus."""
    return sorted([f"cut{pct}_{name}" for name in CUT for pct in CUT_PERCENT]
                  + ["cutfrag_fragmented.mp4", "cutpacket_clip.ts", "zeroed_h264.mp4",
                     "zeroed_h264_faststart.mp4", "empty.mp4", "random.mp4", "not_found.MP4"])


def make_damaged(d: Path, item: Damaged) -> None:
    target = d / item.name
    if item.how == "cut":
        assert item.source is not None and item.cut_at is not None
        target.write_bytes((d / item.source).read_bytes()[:item.cut_at])
    elif item.how == "zeroed":
        assert item.source is not None and item.zeroed is not None
        data = bytearray((d / item.source).read_bytes())
        a, b = item.zeroed
        data[a:b] = bytes(b - a)
        target.write_bytes(bytes(data))
    elif item.how == "empty":
        target.write_bytes(b"")
    elif item.how == "random":
        target.write_bytes(random.Random(947).randbytes(200_000))
    else:
        target.write_bytes(b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
                           b"<body><h1>Not Found</h1><p>The requested URL was not found.</p>"
                           b"</body></html>\n" * 40)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out


def write_amr(path: Path, seconds: int = SECONDS) -> None:
    """AMR-NB in the storage format: "#!AMR\\n", then 20 ms frames of mode 7 (12.2 kbit/s).

    The speech bits are random: AMR is a parametric codec, any bits decode to sound.
    """
    rng = random.Random(4867)
    frames = [bytes([0x3C]) + rng.randbytes(31) for _ in range(seconds * 50)]
    path.write_bytes(b"#!AMR\n" + b"".join(frames))


def add_exif(path: Path) -> None:
    """Insert an APP1 EXIF segment with DateTimeOriginal and OffsetTimeOriginal."""
    when, offset = EXIF_TIME.encode() + b"\x00", EXIF_OFFSET.encode() + b"\x00"
    # TIFF header, IFD0 (1 entry: ExifIFD pointer), EXIF IFD (2 entries), then the strings.
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 + 4
    strings = exif_ifd + 2 + 2 * 12 + 4
    tiff = b"II*\x00" + struct.pack("<I", ifd0)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, exif_ifd) + b"\0" * 4
    tiff += struct.pack("<H", 2)
    tiff += struct.pack("<HHII", 0x9003, 2, len(when), strings)
    tiff += struct.pack("<HHII", 0x9011, 2, len(offset), strings + len(when))
    tiff += b"\0" * 4 + when + offset
    body = b"Exif\x00\x00" + tiff
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:])
