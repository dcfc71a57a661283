"""Where the container says the file ends, read from the bytes in pure Python.

FFmpeg demuxes what is there and says little about what is missing: an MP4
cut inside its ``mdat`` box, or a fragmented MP4 cut inside a fragment,
opens and plays up to the cut.  The container itself declares sizes (MP4
boxes, RIFF chunks, the Matroska Segment, fixed 188-byte TS packets, AMR
frames, the JPEG end marker); :func:`scan` walks them and says whether the
bytes end where the container says.

Invariants: reads are bounded (16 bytes per box or chunk header, at most
``MAX_UNITS`` headers, 64 KiB at the end of a JPEG); no recursion; nothing is
followed outside the file; a malformed header is reported, never raised.
The sniffed ``container`` names the bytes (magic numbers), never the file name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

HEAD = 4096
MAX_UNITS = 1_000_000  # top-level boxes, chunks or AMR frames walked at most
_ZERO_CHECK = 64 * 1024  # bytes of a suspected zero-filled tail actually looked at

AMR_NB_FRAME = (13, 14, 16, 18, 20, 21, 27, 32, 6, 1, 1, 1, 1, 1, 1, 1)  # incl. the header byte
AMR_WB_FRAME = (18, 24, 33, 37, 41, 47, 51, 59, 61, 6, 1, 1, 1, 1, 1, 1)


@dataclass
class Structure:
    """What the container's own sizes say.  Offsets are bytes from the start of the file."""

    container: str
    size: int
    declared_end: int | None = None  # where the container says its data ends; None: not said
    truncated_at: int | None = None  # first byte a declared unit needs that the file lacks
    damaged_at: int | None = None  # first byte that is not the container's structure
    fragmented: bool = False
    notes: list[str] = field(default_factory=list)  # "code: text", the evidence

    def cut(self, at: int, text: str) -> None:
        if self.truncated_at is None:
            self.truncated_at = at
            self.notes.append(f"truncated: {text}")

    def damage(self, at: int, text: str) -> None:
        if self.damaged_at is None:
            self.damaged_at = at
            self.notes.append(f"malformed: {text}")


def sniff(head: bytes) -> str:
    """The container the magic bytes name ("unknown" if none)."""
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"  # QuickTime files from before ftyp existed
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"WAVE"):
        return "avi" if head[8:12] == b"AVI " else "wav"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"\x42\x82\x84webm" in head[:64] else "mkv"
    if _ts_packets(head, 0, 188):
        return "mpegts"
    if _ts_packets(head, 4, 192):
        return "m2ts"
    if head[:9] == b"#!AMR-WB\n":
        return "amr-wb"
    if head[:6] == b"#!AMR\n":
        return "amr"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "aac" if head[1:2] and head[1] & 0xF6 == 0xF0 else "mp3"
    return "unknown"


def _ts_packets(head: bytes, start: int, step: int) -> bool:
    marks = head[start::step][:3]
    return len(head) >= start + step + 1 and len(marks) >= 2 and set(marks) == {0x47}


def scan(f: BinaryIO, size: int) -> Structure:
    """Walk the container structure of the open file ``f`` of ``size`` bytes."""
    f.seek(0)
    head = f.read(HEAD)
    st = Structure(sniff(head), size)
    try:
        walker = _WALKERS.get(st.container)
        if walker is not None:
            walker(f, st)
    except (struct.error, IndexError, ValueError) as exc:  # a header field points nowhere
        st.damage(0, f"{st.container} structure cannot be parsed ({exc})")
    return st


def _zero_tail(f: BinaryIO, at: int, size: int) -> bool:
    """Whether the bytes from ``at`` look like zero fill (a camera's pre-allocated space)."""
    f.seek(at)
    first = f.read(min(_ZERO_CHECK, size - at))
    if first.count(0) != len(first):
        return False
    if size - at > _ZERO_CHECK:
        f.seek(size - _ZERO_CHECK)
        last = f.read(_ZERO_CHECK)
        return last.count(0) == len(last)
    return True


def _mp4(f: BinaryIO, st: Structure) -> None:
    """Top-level boxes: each must fit in the file; a box type must be printable."""
    off, size, units = 0, st.size, 0
    while off + 8 <= size:
        units += 1
        if units > MAX_UNITS:
            st.notes.append(f"unchecked: more than {MAX_UNITS} top-level boxes; the end "
                            "was not walked")
            return
        f.seek(off)
        raw = f.read(16)
        n, kind = struct.unpack_from(">I4s", raw)
        hdr = 8
        if n == 1 and len(raw) == 16:
            n, hdr = struct.unpack_from(">Q", raw, 8)[0], 16
        elif n == 0:
            n = size - off  # "extends to the end of the file"
        if n < hdr or not (kind.isascii() and kind.decode("ascii").isprintable()):
            if _zero_tail(f, off, size):
                st.notes.append(f"zero_fill: {size - off} zero bytes after the last box "
                                f"(from offset {off})")
                st.declared_end = off
            else:
                st.damage(off, f"bytes at offset {off} are not an MP4 box header "
                               f"(size {n}, type {kind!r})")
            return
        name = kind.decode("ascii")
        if name == "moof":
            st.fragmented = True
        if off + n > size:
            st.declared_end = off + n
            st.cut(size, f"box {name!r} at offset {off} declares {n} bytes, the file ends "
                         f"{off + n - size} bytes short")
            return
        off += n
    st.declared_end = off
    if off < size:
        st.cut(size, f"{size - off} bytes at offset {off} are too short for a box header")


def _riff(f: BinaryIO, st: Structure) -> None:
    """RIFF chunks (AVI with OpenDML AVIX, WAVE): each chunk and sub-chunk fits in the file."""
    off, size, units = 0, st.size, 0
    while off + 12 <= size:
        f.seek(off)
        tag, n, form = struct.unpack("<4sI4s", f.read(12))
        if tag != b"RIFF":
            if _zero_tail(f, off, size):
                st.notes.append(f"zero_fill: {size - off} zero bytes after the last RIFF chunk")
            else:
                st.damage(off, f"bytes at offset {off} are not a RIFF chunk ({tag!r})")
            return
        end = off + 8 + n
        pos = off + 12
        while pos + 8 <= min(end, size):  # sub-chunks: the first missing one is the cut
            units += 1
            if units > MAX_UNITS:
                st.notes.append(f"unchecked: more than {MAX_UNITS} RIFF chunks; the end was "
                                "not walked")
                return
            f.seek(pos)
            cid, cn = struct.unpack("<4sI", f.read(8))
            if form == b"WAVE" and cid == b"data" and cn in (0, 0xFFFFFFFF):
                st.notes.append("unsized: WAV data chunk size not filled in (written live)")
                return
            if pos + 8 + cn > size:
                st.declared_end = pos + 8 + cn
                st.cut(size, f"chunk {cid.decode('latin-1')!r} at offset {pos} declares {cn} "
                             f"bytes, the file ends {pos + 8 + cn - size} bytes short")
                return
            pos += 8 + cn + (cn & 1)
        if end > size:
            st.declared_end = end
            st.cut(size, f"RIFF {form.decode('latin-1')!r} at offset {off} declares {n} bytes, "
                         f"the file ends {end - size} bytes short")
            return
        off = end + (n & 1)
    st.declared_end = min(off, size)
    if off < size and not _zero_tail(f, off, size):
        st.notes.append(f"trailing: {size - off} bytes after the last RIFF chunk")


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


def _ebml(f: BinaryIO, st: Structure) -> None:
    """The Matroska Segment must fit in the file, when its size is known."""
    f.seek(0)
    head = f.read(HEAD)
    n, ln, _ = _vint(head, 4)
    seg = 4 + ln + n
    if head[seg:seg + 4] != b"\x18\x53\x80\x67":
        st.damage(seg, "the EBML header is not followed by a Segment")
        return
    n, ln, unknown = _vint(head, seg + 4)
    if unknown:
        st.notes.append("unsized: Matroska Segment size not filled in (written live)")
        return
    st.declared_end = seg + 4 + ln + n
    if st.declared_end > st.size:
        st.cut(st.size, f"the Segment declares {n} bytes, the file ends "
                        f"{st.declared_end - st.size} bytes short")


def _ts(f: BinaryIO, st: Structure) -> None:
    """MPEG-TS declares no length, but every packet is 188 (M2TS: 192) bytes."""
    step = 192 if st.container == "m2ts" else 188
    whole = st.size - st.size % step
    st.declared_end = whole
    if st.size % step:
        st.cut(whole, f"the file ends {st.size % step} bytes into a {step}-byte packet "
                      f"(at offset {whole})")
    if whole >= step:  # the last whole packet starts with the sync byte
        f.seek(whole - step + (4 if step == 192 else 0))
        if f.read(1) != b"\x47":
            st.damage(whole - step, f"the last whole packet (offset {whole - step}) has no "
                                    "sync byte")


def _amr(f: BinaryIO, st: Structure) -> None:
    """AMR storage format (RFC 4867 section 5): a magic line, then self-sized frames."""
    wide = st.container == "amr-wb"
    sizes = AMR_WB_FRAME if wide else AMR_NB_FRAME
    off = 9 if wide else 6
    f.seek(off)
    data = f.read(st.size - off) if st.size - off <= 64 * 1024 * 1024 else b""
    if not data and st.size - off > 64 * 1024 * 1024:
        st.notes.append("unchecked: AMR file over 64 MiB; frames not walked")
        return
    pos, frames = 0, 0
    while pos < len(data) and frames < MAX_UNITS:
        header = data[pos]
        if header & 0x83:  # padding bits must be zero (RFC 4867 section 5.3)
            st.damage(off + pos, f"byte {off + pos} is not an AMR frame header "
                                 f"(0x{header:02x})")
            return
        n = sizes[(header >> 3) & 0x0F]
        if pos + n > len(data):
            st.declared_end = off + pos + n
            st.cut(off + pos, f"the last AMR frame (offset {off + pos}) needs {n} bytes, "
                              f"{len(data) - pos} are present")
            return
        pos += n
        frames += 1
    st.declared_end = off + pos


def _jpeg(f: BinaryIO, st: Structure) -> None:
    f.seek(max(0, st.size - 64 * 1024))
    tail = f.read().rstrip(b"\x00")  # some cameras pad a photo with zeros
    st.declared_end = None
    if not tail.endswith(b"\xff\xd9"):
        st.cut(st.size, "the JPEG has no end-of-image marker (FFD9)")


def _png(f: BinaryIO, st: Structure) -> None:
    f.seek(max(0, st.size - 12))
    if f.read() != b"\x00\x00\x00\x00IEND\xaeB`\x82":
        st.cut(st.size, "the PNG does not end with its IEND chunk")


_WALKERS = {
    "mp4": _mp4, "mov": _mp4, "avi": _riff, "wav": _riff, "mkv": _ebml, "webm": _ebml,
    "mpegts": _ts, "m2ts": _ts, "amr": _amr, "amr-wb": _amr, "jpeg": _jpeg, "png": _png,
}
