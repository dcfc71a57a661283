"""Media probe: what a clip is, and whether it decodes to its end.

``probe(path)`` returns a :class:`MediaInfo` (the manifest's ``media``
object) for a file in the station's vault.  Bad media never raises: a broken
file is evidence too, so it is described by ``decodable=False`` and short
``issues`` ("code: text"), and :func:`flags_for` turns those into manifest
flags.  Only an OSError on the vault file itself raises (as StoreError).

How a clip is examined, cheapest first:

1. Container from the magic bytes, never the file name.  Unrecognised files
   are not handed to OpenCV: FFmpeg would follow playlists and URLs in them.
2. Container structure in pure Python: MP4/MOV box sizes, the video track's
   sample entry (the codec FourCC, e.g. "mp4v"; OpenCV would say "FMP4") and
   duration; AVI RIFF sizes, stream header, FourCC, index; Matroska/WebM
   Segment size; WAV chunks; JPEG end marker; PNG IEND.  A box or chunk that
   runs past the end of the file proves truncation even when every frame
   still decodes (the last 8 bytes of an MP4 cut off, a partial last frame).
3. OpenCV (FFmpeg back end): header width, height, fps and frame count, and
   a decode of the first frame.
4. The end.  The header frame count is not proof: an AVI cut short opens
   with the count the camera wrote at the start (an MP4 whose index was
   written last does not open at all).  Where the structure is cut or gives
   no verdict, the frames present are counted by demuxing without decoding
   (OpenCV raw mode); then the last two frames are decoded after a seek and
   one more read must find the end.  ``frames`` is the position of the last
   frame that decodes, ``duration_s`` is ``frames / fps``.
5. Clips of at most ``full_decode_frames`` frames are decoded whole, which
   also finds bad frames in the middle.  Longer clips are sampled: the first
   frame, frames 1/4, 1/2 and 3/4 in, and the last two.  OpenCV seeks to up
   to 16 frames (and one GOP) before a target and decodes forward, so each
   sample checks a short window; it clamps seeks to the header frame count.
   An AVI without index (every cut AVI: idx1 is written last) cannot be
   seeked without decoding everything, so there the end is counted, not
   decoded, and an ``end_unverified`` issue says so.

Frames missing at the end are ``truncated`` when the structure proves the
file cut (or gives no verdict); in a structurally complete file they, and
frames that fail in the middle, are ``corrupt``.  Where the container states
its own duration (MP4/MOV mdhd, AVI strh) it must agree with frames / fps.

What this proves: the container is complete where its structure declares
sizes; the frames decoded (all, for short clips; the samples' windows
otherwise) decode; the stream ends where the count says.  What it does not
prove: that frames between sample windows decode; that a decoded frame is
intact (FFmpeg conceals damage: a partial last frame, or half a JPEG frame
zeroed, still "decodes"); anything about audio streams.  MPEG-TS declares no
length, so a cut TS file looks complete.  The bytes themselves are proven by
the SHA-256 in the manifest, not here.  OpenCV 4.8+ and 5.x behave alike
here (tested with 4.14 and 5.0).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from agent.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

FULL_DECODE_FRAMES = 300  # 10 s at 30 fps: short clips are decoded whole
_HEAD = 4096
_MAX_HEADER_BYTES = 64 * 1024 * 1024  # moov / hdrl read into memory at most

# Issue codes that mean the decodability check failed.
_FAILING = frozenset({"empty", "unrecognized", "unopenable", "first_frame", "truncated",
                      "corrupt", "malformed", "opencv_error", "unchecked"})
_FLAGS = {
    "empty": "media.empty",
    "unrecognized": "media.undecodable",
    "unopenable": "media.undecodable",
    "first_frame": "media.undecodable",
    "opencv_error": "media.undecodable",
    "malformed": "media.undecodable",
    "truncated": "media.truncated",
    "corrupt": "media.corrupt",
    "not_video": "media.not_video",
    "duration_mismatch": "media.duration_mismatch",
    "frame_count": "media.frame_count_mismatch",
    "size_mismatch": "media.size_mismatch",
    "fps_invalid": "media.fps_invalid",
    "end_unverified": "media.end_unverified",
    "unchecked": "media.unchecked",
}


@dataclass(frozen=True)
class MediaInfo:
    """The manifest's ``media`` object.  ``issues`` are "code: human text" strings."""

    container: str
    codec: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    frames: int = 0
    duration_s: float = 0.0
    decodable: bool = False
    issues: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "width": self.width,
                "height": self.height, "fps": self.fps, "frames": self.frames,
                "duration_s": self.duration_s, "decodable": self.decodable,
                "issues": list(self.issues)}


def flags_for(info: MediaInfo) -> list[str]:
    """Manifest flags for a probe result, in the order of its issues, each once."""
    flags: list[str] = []
    for issue in info.issues:
        flag = _FLAGS.get(issue.split(":", 1)[0])
        if flag and flag not in flags:
            flags.append(flag)
    failing = {_FLAGS[c] for c in _FAILING}
    if not info.decodable and not failing.intersection(flags):
        flags.append("media.undecodable")  # never let a failed check go unflagged
    return flags


@dataclass
class _Scan:
    """What the container structure says, before OpenCV looks at the file."""

    container: str
    codec: str = ""
    issues: list[str] = field(default_factory=list)
    checked: bool = False  # the structure was walked to its declared end
    truncated: bool = False
    declared_duration: float | None = None
    seekable: bool = True  # has an index, so a seek does not decode from the start
    has_video: bool = True
    audio_duration: float = 0.0

    def bad(self, code: str, text: str) -> None:
        self.issues.append(f"{code}: {text}")
        if code == "truncated":
            self.truncated = True


def probe(path: Path, *, decode_check: bool = True,
          full_decode_frames: int = FULL_DECODE_FRAMES) -> MediaInfo:
    """Describe the vault file at ``path``; see the module docstring for the method.

    Raises StoreError only if the file itself cannot be read (OSError), and
    ConfigError if OpenCV with its FFmpeg back end is not installed.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size == 0:
            return MediaInfo(container="empty", issues=["empty: file has 0 bytes"])
        with open(path, "rb") as f:
            scan = _scan(f, size)
    except OSError as exc:
        raise StoreError(f"cannot read vault file {path}: {exc}") from exc
    if scan.container == "unknown":
        return MediaInfo(container="unknown", issues=[
            *scan.issues, "unrecognized: no known container signature; not handed to the decoder"])
    if scan.container == "wav" or not scan.has_video:
        kind = "WAV audio" if scan.container == "wav" else f"{scan.container} without video track"
        return MediaInfo(container=scan.container, codec=scan.codec,
                         duration_s=round(scan.audio_duration, 3),
                         decodable=not _failing(scan.issues),
                         issues=[*scan.issues, f"not_video: {kind}"])
    cv2 = _cv2()
    try:
        if scan.container in ("jpeg", "png"):
            return _probe_image(cv2, path, scan, decode_check)
        return _probe_video(cv2, path, scan, decode_check, max(full_decode_frames, 0))
    except (cv2.error, ValueError, OverflowError, MemoryError) as exc:
        log.warning("OpenCV failed on %s: %s", path, exc)
        return MediaInfo(container=scan.container, codec=scan.codec,
                         issues=[*scan.issues, f"opencv_error: {exc}".strip()])


def _failing(issues: list[str]) -> bool:
    return any(i.split(":", 1)[0] in _FAILING for i in issues)


def _cv2() -> Any:
    """Import OpenCV on first use; the rest of the agent does not need it."""
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(f"OpenCV is not installed (pip install opencv-python-headless): "
                          f"{exc}") from exc
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        raise ConfigError("this OpenCV build has no FFmpeg video back end; "
                          "install opencv-python-headless")
    return cv2


# --- container structure ---------------------------------------------------------------


def _sniff(head: bytes) -> str:
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"  # QuickTime files before ftyp existed
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"\x42\x82\x84webm" in head[:64] else "mkv"
    for start, step in ((0, 188), (4, 192)):  # TS and M2TS (timestamped) packets
        marks = head[start::step][:3]
        if len(head) >= start + step + 1 and marks and set(marks) == {0x47}:
            return "mpegts"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "unknown"


def _scan(f: BinaryIO, size: int) -> _Scan:
    head = f.read(_HEAD)
    scan = _Scan(_sniff(head))
    try:
        if scan.container in ("mp4", "mov"):
            _scan_mp4(f, size, scan)
        elif scan.container in ("avi", "wav"):
            _scan_riff(f, size, scan)
        elif scan.container in ("mkv", "webm"):
            _scan_ebml(head, size, scan)
    except (struct.error, IndexError, ValueError) as exc:  # a header field points nowhere
        scan.bad("malformed", f"{scan.container} structure cannot be parsed ({exc})")
    if scan.container == "jpeg":
        f.seek(max(0, size - 64))
        if not f.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
            scan.bad("truncated", "JPEG has no end-of-image marker")
    elif scan.container == "png":
        f.seek(max(0, size - 12))
        if f.read() != b"\x00\x00\x00\x00IEND\xaeB`\x82":
            scan.bad("truncated", "PNG does not end with its IEND chunk")
    return scan


def _boxes(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the MP4 boxes in ``buf[start:end]``."""
    out = []
    while start + 8 <= end:
        n, kind = struct.unpack_from(">I4s", buf, start)
        hdr = 8
        if n == 1 and start + 16 <= end:
            n, hdr = struct.unpack_from(">Q", buf, start + 8)[0], 16
        elif n == 0:
            n = end - start
        if n < hdr or start + n > end:
            break
        out.append((kind, start + hdr, start + n))
        start += n
    return out


def _scan_mp4(f: BinaryIO, size: int, scan: _Scan) -> None:
    """Walk the top-level boxes; read moov for the video track's codec and duration."""
    off, moov, moov_size = 0, None, 0
    while off + 8 <= size:
        f.seek(off)
        raw = f.read(16)
        n, kind = struct.unpack_from(">I4s", raw)
        hdr = 8
        if n == 1 and len(raw) == 16:
            n, hdr = struct.unpack_from(">Q", raw, 8)[0], 16
        elif n == 0:
            n = size - off  # "extends to the end of the file"
        name = kind.decode("latin-1")
        if n < hdr or not kind.isascii():
            scan.bad("malformed", f"invalid box header at offset {off} (size {n}, type {name!r})")
            return
        if off + n > size:
            scan.bad("truncated", f"box {name!r} at offset {off} declares {n} bytes, "
                                  f"file ends {off + n - size} bytes short")
        if kind == b"moov" and n <= _MAX_HEADER_BYTES:
            f.seek(off)
            moov, moov_size = f.read(n), n
        off += n
    scan.checked = True
    if moov is None:
        scan.bad("truncated" if scan.truncated else "malformed",
                 "no 'moov' box (the index that says where the frames are)")
        return
    _read_moov(moov, scan, complete=len(moov) == moov_size)


def _read_moov(moov: bytes, scan: _Scan, *, complete: bool) -> None:
    start = 16 if moov[:4] == b"\x00\x00\x00\x01" else 8  # 64-bit box size
    children = _boxes(moov, start, len(moov))
    fragmented = any(k == b"mvex" for k, _, _ in children)
    for kind, s, e in children:
        if kind != b"trak":
            continue
        mdia = {k: (a, b) for k, a, b in _boxes(moov, s, e)}.get(b"mdia")
        if mdia is None:
            continue
        parts = {k: (a, b) for k, a, b in _boxes(moov, *mdia)}
        hdlr, mdhd = parts.get(b"hdlr"), parts.get(b"mdhd")
        handler = moov[hdlr[0] + 8:hdlr[0] + 12] if hdlr else b""
        if handler != b"vide":
            continue
        if mdhd:
            v1 = moov[mdhd[0]] == 1  # version 1 has 64-bit times and duration
            scale, dur = struct.unpack_from(">IQ" if v1 else ">II", moov,
                                            mdhd[0] + (20 if v1 else 12))
            unknown = dur in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) or fragmented
            if scale and not unknown:
                scan.declared_duration = dur / scale
        stsd = _path(moov, parts.get(b"minf"), b"stbl", b"stsd")
        if stsd and stsd[1] - stsd[0] >= 16:
            scan.codec = _fourcc(moov[stsd[0] + 12:stsd[0] + 16])
        return
    scan.has_video = not complete  # a cut moov may have lost the video track: let OpenCV try


def _path(buf: bytes, span: tuple[int, int] | None, *names: bytes) -> tuple[int, int] | None:
    for name in names:
        if span is None:
            return None
        span = {k: (a, b) for k, a, b in _boxes(buf, *span)}.get(name)
    return span


def _fourcc(raw: bytes) -> str:
    text = raw.decode("latin-1")
    return text if len(raw) == 4 and text.isprintable() and text.strip("\x00 ") else ""


def _scan_riff(f: BinaryIO, size: int, scan: _Scan) -> None:
    """Walk RIFF chunks (AVI, OpenDML AVIX, WAVE); read hdrl / fmt for codec and duration."""
    off, first = 0, True
    has_index = fmt = data = False
    fmt_raw = b""
    while off + 12 <= size:
        f.seek(off)
        tag, n, form = struct.unpack("<4sI4s", f.read(12))
        if tag != b"RIFF":
            break  # trailing bytes after the last RIFF chunk are not ours to judge
        end = off + 8 + n + (n & 1)
        if off + 8 + n > size:
            scan.bad("truncated", f"RIFF {form.decode('latin-1')!r} chunk at offset {off} declares "
                                  f"{n} bytes, file ends {off + 8 + n - size} bytes short")
        pos = off + 12
        while first and pos + 8 <= min(end, size):
            f.seek(pos)
            cid, cn = struct.unpack("<4sI", f.read(8))
            if cid == b"idx1":
                has_index = True
            elif cid == b"LIST" and cn >= 4 and f.read(4) == b"hdrl" and cn <= _MAX_HEADER_BYTES:
                hdrl = f.read(cn - 4)
                if len(hdrl) == cn - 4:  # a cut header proves nothing about the streams
                    has_index |= _read_hdrl(hdrl, scan)
            elif cid == b"fmt " and cn >= 16:
                fmt_raw = f.read(16)
                fmt = True
            elif cid == b"data":
                data = True
                have = min(cn, size - pos - 8)
                if fmt:
                    _, _, _, byte_rate, _, _ = struct.unpack("<HHIIHH", fmt_raw)
                    scan.audio_duration = have / byte_rate if byte_rate else 0.0
                if cn > have:
                    scan.bad("truncated", f"WAV data chunk declares {cn} bytes, {have} present")
            pos += 8 + cn + (cn & 1)
        first = False
        off = end
    scan.checked = True
    if scan.container == "wav":
        scan.has_video = False
        if not (fmt and data) and not scan.truncated:
            scan.bad("malformed", "WAV lacks its 'fmt ' or 'data' chunk")
    else:
        scan.seekable = has_index


def _read_hdrl(hdrl: bytes, scan: _Scan) -> bool:
    """Codec and declared duration of the first video stream; True if an OpenDML index exists."""
    pos, indexed = 0, False
    scan.has_video = False
    while pos + 8 <= len(hdrl):
        cid, n = struct.unpack_from("<4sI", hdrl, pos)
        body = hdrl[pos + 8:pos + 8 + n]
        if cid == b"LIST" and body[:4] == b"strl" and not scan.has_video:
            chunks: dict[bytes, bytes] = {}
            p = 4
            while p + 8 <= len(body):
                sid, sn = struct.unpack_from("<4sI", body, p)
                chunks.setdefault(sid, body[p + 8:p + 8 + sn])
                p += 8 + sn + (sn & 1)
            strh, strf = chunks.get(b"strh", b""), chunks.get(b"strf", b"")
            if strh[:4] == b"vids" and len(strh) >= 36:
                scan.has_video = True
                scale, rate, _start, length = struct.unpack_from("<4I", strh, 20)
                scan.declared_duration = length * scale / rate if rate else None
                scan.codec = _fourcc(strf[16:20]) if len(strf) >= 20 else ""
                scan.codec = scan.codec or _fourcc(strh[4:8])
                indexed = b"indx" in chunks
        pos += 8 + n + (n & 1)
    return indexed


def _vint(buf: bytes, pos: int) -> tuple[int, int, bool]:
    """An EBML variable-size integer at ``pos``: (value, length, all ones = unknown size)."""
    first = buf[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or pos + length > len(buf):
        raise ValueError("bad EBML size")
    value = first & (0xFF >> length)
    for b in buf[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, length, value == (1 << (7 * length)) - 1


def _scan_ebml(head: bytes, size: int, scan: _Scan) -> None:
    """Check that the Matroska Segment fits in the file (when its size is known)."""
    try:
        n, ln, _ = _vint(head, 4)
        seg = 4 + ln + n
        if head[seg:seg + 4] != b"\x18\x53\x80\x67":
            scan.bad("malformed", "EBML header is not followed by a Segment")
            return
        n, ln, unknown = _vint(head, seg + 4)
    except (ValueError, IndexError):
        scan.bad("malformed", "EBML header cannot be parsed")
        return
    if unknown:
        return  # written live, size never filled in: no structural verdict
    scan.checked = True
    end = seg + 4 + ln + n
    if end > size:
        scan.bad("truncated", f"Segment declares {n} bytes, file ends {end - size} bytes short")


# --- decoding --------------------------------------------------------------------------


def _probe_image(cv2: Any, path: Path, scan: _Scan, decode_check: bool) -> MediaInfo:
    issues = [*scan.issues, f"not_video: {scan.container.upper()} still image"]
    if not decode_check:
        return MediaInfo(container=scan.container, issues=[
            *issues, "unchecked: image not decoded (decode_check off)"])
    img = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return MediaInfo(container=scan.container, issues=[
            *issues, "unopenable: OpenCV cannot decode the image"])
    return MediaInfo(container=scan.container, width=int(img.shape[1]), height=int(img.shape[0]),
                     frames=1, decodable=not _failing(issues), issues=issues)


class _Video:
    """One file seen through OpenCV; every capture is opened fresh and released."""

    def __init__(self, cv2: Any, path: Path) -> None:
        self.cv2 = cv2
        self.name = os.fspath(path.absolute())  # absolute: never parsed as "proto:" URL

    def open(self) -> Any:
        cap = self.cv2.VideoCapture(self.name, self.cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def packets(self) -> int | None:
        """Video packets present, by demuxing without decoding (None: raw mode unsupported)."""
        cap = self.open()
        if cap is None:
            return None
        try:
            if not cap.set(self.cv2.CAP_PROP_FORMAT, -1):
                return None
            count = 0
            while cap.grab():
                count += 1
            return count
        finally:
            cap.release()

    def decode_at(self, target: int, count: int) -> int:
        """Seek to frame ``target`` and decode up to ``count`` frames.

        Returns the position after the last frame that decoded in a row from
        the target, or where the seek landed if it fell short of the target.
        """
        cap = self.open()
        if cap is None:
            return 0
        try:
            if target > 0:
                cap.set(self.cv2.CAP_PROP_POS_FRAMES, target)
            pos = int(cap.get(self.cv2.CAP_PROP_POS_FRAMES))
            if pos != target:
                return min(pos, target)
            for _ in range(count):
                if not cap.grab():
                    break
                pos += 1
            return pos
        finally:
            cap.release()

    def decode_end(self, total: int, header: int) -> int:
        """Decode the last two of ``total`` frames and try one more; ``total`` if all is well.

        Seeks go at most to the header count (OpenCV clamps them there); the
        frames after it are decoded forward.
        """
        start = max(min(total, header) - 2 if header > 0 else total - 2, 0)
        return self.decode_at(start, total - start + 1)

    def decode_all(self, cap: Any, total: int) -> tuple[int, list[int]]:
        """Decode frames 1..total-1 (frame 0 already read): (last good position, failed frames)."""
        last, failed = 1, []
        for i in range(1, total):
            if cap.grab():  # a failed frame returns False once; the next one is decoded again
                last = i + 1
            else:
                failed.append(i)
        return last, [i for i in failed if i < last]


def _probe_video(cv2: Any, path: Path, scan: _Scan, decode_check: bool,
                 full_decode_frames: int) -> MediaInfo:
    issues = list(scan.issues)
    video = _Video(cv2, path)
    cap = video.open()
    if cap is None:
        return MediaInfo(container=scan.container, codec=scan.codec, issues=[
            *issues, "unopenable: OpenCV (FFmpeg) cannot open the file"])
    try:
        fps = _finite(cap.get(cv2.CAP_PROP_FPS))
        if not 0 < fps <= 1000:
            issues.append(f"fps_invalid: header frame rate {fps:g}")
            fps = 0.0
        codec_tag = int(_finite(cap.get(cv2.CAP_PROP_FOURCC))) & 0xFFFFFFFF
        base = MediaInfo(container=scan.container,
                         codec=scan.codec or _fourcc(codec_tag.to_bytes(4, "little")),
                         width=int(_finite(cap.get(cv2.CAP_PROP_FRAME_WIDTH))),
                         height=int(_finite(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),
                         fps=round(fps, 3))
        header = int(_finite(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        if not decode_check:
            frames = max(header, 0)
            return replace(base, frames=frames,
                           duration_s=round(frames / fps, 3) if fps else 0.0,
                           issues=[*issues, "unchecked: frames not decoded (decode_check off)"])
        ok, frame = cap.read()
        if not ok or frame is None:
            return replace(base, issues=[*issues, "first_frame: frame 0 does not decode"])
        if frame.shape[:2] != (base.height, base.width):
            issues.append(f"size_mismatch: header says {base.width}x{base.height}, frame 0 is "
                          f"{frame.shape[1]}x{frame.shape[0]}")
        packets = None
        if header <= full_decode_frames or scan.truncated or not scan.checked:
            packets = video.packets()
        total = packets if packets is not None else header
        if total <= full_decode_frames:
            last, failed = video.decode_all(cap, max(total, 1))
            if failed:
                issues.append(f"corrupt: {len(failed)} of {last} frames do not decode "
                              f"(first: frame {failed[0]})")
        else:
            last, packets = _sample(video, scan, header, packets, issues=issues,
                                    budget=full_decode_frames)
    finally:
        cap.release()
    _judge_end(scan, header, packets, last, issues)
    duration = last / fps if fps else 0.0
    if (scan.declared_duration is not None and fps and not scan.truncated
            and abs(duration - scan.declared_duration) > max(2 / fps, 0.02 * duration)):
        issues.append(f"duration_mismatch: container says {scan.declared_duration:.3f} s, "
                      f"{last} frames at {fps:g} fps is {duration:.3f} s")
    if _failing(issues):
        log.info("media probe %s: %s", path, "; ".join(issues))
    return replace(base, frames=last, duration_s=round(duration, 3),
                   decodable=not _failing(issues), issues=issues)


def _sample(video: _Video, scan: _Scan, header: int, packets: int | None, *,
            issues: list[str], budget: int) -> tuple[int, int | None]:
    """Long clip: decode samples at 1/4, 1/2, 3/4 and the end; (last good frame, packets).

    OpenCV seeks to a keyframe up to 16 frames before the target and decodes
    forward, so a bad frame shortly before a sample makes that sample fail:
    the issue names where decoding stopped, not only the sample.  OpenCV
    also clamps seeks to the header frame count, so frames past it are
    reached by decoding forward, within the budget.
    """
    if packets is None and not scan.seekable:
        packets = video.packets()
    total = packets if packets is not None else header
    why = ""
    if not scan.seekable:
        why = f"{scan.container} without index: a seek would decode the whole file"
    elif header > 0 and total - header > budget:
        why = f"OpenCV does not seek past the header's {header} frames"
    if why:
        issues.append(f"end_unverified: {total} frames counted by the demuxer, the end not "
                      f"decoded ({why})")
        return total, packets
    last = video.decode_end(total, header)
    if last != total and packets is None:
        packets = video.packets()  # the header count is wrong; find where the stream ends
        if packets is not None and packets != total:
            return _sample(video, scan, header, packets, issues=issues, budget=budget)
    last = min(last, total)
    stops = {}
    for target in (total // 4, total // 2, 3 * total // 4):
        reached = video.decode_at(target, 1) if target < last else target + 1
        if reached != target + 1:
            stops[target] = reached
    if stops:
        issues.append(f"corrupt: sampled frames {', '.join(map(str, stops))} do not decode "
                      f"(decoding stopped at frame {min(stops.values())})")
    return last, packets


def _judge_end(scan: _Scan, header: int, packets: int | None, last: int,
               issues: list[str]) -> None:
    """Name what is wrong at the end: truncated, corrupt, or a wrong header frame count.

    Missing frames are frames before the end of the demuxed stream that do
    not decode, or fewer frames than the header declares.  They mean
    truncated when the structure proves the file cut, or (for containers
    without a structural verdict) when the stream's own end fails to decode;
    otherwise the container is whole and the frames are corrupt.  Where the
    header count is only an estimate from the duration (MPEG-TS, live-written
    Matroska) a shortfall of 2 frames or 2 % is tolerated: audio may outlast
    the video.
    """
    present = packets if packets is not None else header
    declared = header if header > 0 else present
    slack = 0 if scan.checked else max(2, header // 50)
    if last < present or header - last > slack:
        if scan.truncated or (not scan.checked and last < present):
            counted = any(i.startswith("end_unverified:") for i in issues)
            what = "frames present" if counted else "last decodable frame"
            issues.append(f"truncated: {what} {last} of {declared} in header")
        elif last < present:
            issues.append(f"corrupt: frames from {last} on do not decode ({present} in the "
                          f"stream); the container is complete")
        else:
            why = "the container is complete" if scan.checked else "the stream's end decodes"
            issues.append(f"corrupt: only {last} of {declared} frames in header can be read; "
                          f"{why}")
    elif header > 0 and header != last:
        issues.append(f"frame_count: header declares {header} frames, the stream holds {last}")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
