"""The structure walk and the EXIF reader on hostile bytes: named findings, never an exception."""

from __future__ import annotations

import io
import struct

import pytest

from agent.media import frames, photo, structure


def _scan(data: bytes) -> structure.Structure:
    return structure.scan(io.BytesIO(data), len(data))


def _box(kind: bytes, body: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack(">I4s", len(body) + 8 if size is None else size, kind) + body


def test_mp4_box_past_the_end_is_a_cut_at_the_end() -> None:
    data = _box(b"ftyp", b"isom\0\0\0\0") + _box(b"mdat", b"x" * 100, size=1000)
    st = _scan(data)
    assert (st.container, st.truncated_at, st.declared_end) == ("mp4", len(data), 16 + 1000)
    assert st.notes[0].startswith("truncated: box 'mdat' at offset 16 declares 1000 bytes")


def test_mp4_zero_fill_after_the_last_box_is_named_not_damage() -> None:
    data = _box(b"ftyp", b"isom\0\0\0\0") + _box(b"mdat", b"x" * 100) + bytes(5000)
    st = _scan(data)
    assert st.truncated_at is None and st.damaged_at is None
    assert st.notes == ["zero_fill: 5000 zero bytes after the last box (from offset 124)"]


@pytest.mark.parametrize("tail", [b"\x00\x00\x00\x04junk", b"\x00\x00\x01\x00\xff\xfe\x01\x02"])
def test_mp4_garbage_box_header_is_malformed_at_its_offset(tail: bytes) -> None:
    data = _box(b"ftyp", b"isom\0\0\0\0") + tail + b"more bytes here"
    st = _scan(data)
    assert st.damaged_at == 16 and st.notes[0].startswith("malformed: bytes at offset 16")


def test_riff_chunk_past_the_end_and_unsized_wav() -> None:
    fmt = b"fmt " + struct.pack("<I", 16) + bytes(16)
    wav = b"RIFF" + struct.pack("<I", 4 + len(fmt) + 8 + 1000) + b"WAVE" + fmt
    cut = wav + b"data" + struct.pack("<I", 1000) + bytes(10)
    st = _scan(cut)
    assert st.container == "wav" and st.truncated_at == len(cut)
    live = wav + b"data" + struct.pack("<I", 0xFFFFFFFF) + bytes(10)
    assert _scan(live).notes == ["unsized: WAV data chunk size not filled in (written live)"]


def test_ts_partial_packet_is_a_cut_at_its_start() -> None:
    data = (b"\x47" + bytes(187)) * 5 + b"\x47" + bytes(50)
    st = _scan(data)
    assert (st.container, st.truncated_at) == ("mpegts", 5 * 188)


def test_amr_frames_walked_to_a_cut_or_a_bad_header() -> None:
    frame = bytes([0x3C]) + bytes(31)
    assert _scan(b"#!AMR\n" + frame * 3).truncated_at is None
    st = _scan(b"#!AMR\n" + frame * 3 + frame[:10])
    assert st.truncated_at == 6 + 3 * 32
    st = _scan(b"#!AMR\n" + frame + b"\xff" + bytes(40))
    assert st.damaged_at == 6 + 32


def test_mpeg_audio_and_adts_frame_lengths() -> None:
    assert frames.mpeg_audio_frame_length(bytes([0xFF, 0xFB, 0x52, 0xC4])) == 209  # 64k 44.1k
    assert frames.mpeg_audio_frame_length(b"\xff\xfb\xf0\x00") is None  # bad bitrate index
    adts = bytes([0xFF, 0xF1, 0x50, 0x80, 0x1A, 0x3F, 0xFC])  # 209-byte frame
    assert frames.adts_frame_length(adts) == 209
    assert frames.short_by("aac", adts + bytes(100)) == 209 - 107
    assert frames.short_by("opus", b"x") == 0


def _jpeg(app1: bytes) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 480, 640, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + sof + b"\xff\xd9"


def test_exif_with_offsets_out_of_range_or_looping_gives_no_time() -> None:
    looping = b"Exif\0\0II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x8769, 4, 1, 8) + bytes(4)  # the EXIF IFD is IFD0 again
    outside = b"Exif\0\0II*\x00" + struct.pack("<I", 60000)
    wrong_type = b"Exif\0\0MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHII", 0x8769, 2, 1, 8) + bytes(4)
    for app1 in (looping, outside, wrong_type, b"Exif\0\0", b"Exif\0\0XX**"):
        p = photo.read_jpeg(io.BytesIO(_jpeg(app1)))
        assert (p.width, p.height, p.exif_datetime_original) == (640, 480, None)


def test_exif_time_must_have_the_exif_shape() -> None:
    text = b"not a date at all\0"
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x8769, 4, 1, 26) + bytes(4) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x9003, 2, len(text), 44) + bytes(4) + text
    p = photo.read_jpeg(io.BytesIO(_jpeg(b"Exif\0\0" + tiff)))
    assert p.exif_datetime_original is None and p.width == 640
