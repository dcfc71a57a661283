"""The media probe against real OpenCV-written videos, cut and corrupted on purpose.

Expected frame counts for cut files come from the files' own indexes (AVI
idx1, MP4 stsz/stco): a frame whose data begins before the cut is counted,
because FFmpeg conceals a partial last frame and it still decodes.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent import media
from agent.errors import StoreError
from agent.media import MediaInfo, flags_for, probe

W, H, FPS, N = 160, 120, 15.0, 60
MEDIA_KEYS = {"container", "codec", "width", "height", "fps", "frames", "duration_s",
              "decodable", "issues"}


def write_video(path: Path, fourcc: str, frames: int = N, size: tuple[int, int] = (W, H)) -> Path:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (w, h))
    assert writer.isOpened(), f"VideoWriter cannot write {fourcc} to {path.name}"
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 255, (h // 4, w, 3), dtype=np.uint8)
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (i * 4 % 256, 80, 160)
        img[h // 2:h // 2 + h // 4] = np.roll(noise, i * 3, axis=1)  # motion, so P-frames differ
        writer.write(img)
    writer.release()
    return path


def _boxes(d: bytes, off: int, end: int):
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", d, off)
        yield kind, off, size
        off += size


def faststart(src: Path, dst: Path) -> Path:
    """Move the moov box before mdat (as cameras that write the index first do)."""
    d = bytearray(src.read_bytes())
    top = {k: (o, s) for k, o, s in _boxes(d, 0, len(d))}
    (mo, ms), (md, _) = top[b"moov"], top[b"mdat"]
    moov = bytearray(d[mo:mo + ms])
    i = moov.index(b"stco") - 4
    count = struct.unpack_from(">I", moov, i + 12)[0]
    for k in range(count):  # chunk offsets move by the size of the moov now in front
        p = i + 16 + 4 * k
        struct.pack_into(">I", moov, p, struct.unpack_from(">I", moov, p)[0] + ms)
    dst.write_bytes(bytes(d[:md] + moov + d[md:mo] + d[mo + ms:]))
    return dst


def mp4_frames(d: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each sample; OpenCV's writer puts all samples in one chunk."""
    i = d.index(b"stsz") - 4
    sizes = struct.unpack_from(f">{struct.unpack_from('>I', d, i + 16)[0]}I", d, i + 20)
    j = d.index(b"stco") - 4
    assert struct.unpack_from(">I", d, j + 12)[0] == 1
    off = struct.unpack_from(">I", d, j + 16)[0]
    out = []
    for s in sizes:
        out.append((off, s))
        off += s
    return out


def avi_frames(d: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each frame from idx1 (offsets count from the 'movi' tag)."""
    movi, i = d.index(b"movi"), d.rindex(b"idx1")
    n = struct.unpack_from("<I", d, i + 4)[0] // 16
    return [(movi + 8 + struct.unpack_from("<I", d, i + 16 + 16 * k)[0],
             struct.unpack_from("<I", d, i + 20 + 16 * k)[0]) for k in range(n)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    mp4 = write_video(d / "a.mp4", "mp4v")
    return {"mp4": mp4, "avi": write_video(d / "a.avi", "MJPG"),
            "fast": faststart(mp4, d / "fast.mp4")}


def cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def ok(container: str, codec: str, frames: int = N, issues: list[str] | None = None) -> MediaInfo:
    """A clip that passes the check, as a 160x120 15 fps test video gives it."""
    return MediaInfo(container=container, codec=codec, width=W, height=H, fps=FPS, frames=frames,
                     duration_s=round(frames / FPS, 3), decodable=True, issues=issues or [])


# --- whole files -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "container", "codec"), [
    ("mp4", "mp4", "mp4v"), ("fast", "mp4", "mp4v"), ("avi", "avi", "MJPG")])
def test_complete_clip(clips: dict[str, Path], name: str, container: str, codec: str) -> None:
    for budget in (media.FULL_DECODE_FRAMES, 0):  # decoded whole, and sampled
        info = probe(clips[name], full_decode_frames=budget)
        assert info == ok(container, codec)
        assert flags_for(info) == []
    assert set(info.to_dict()) == MEDIA_KEYS
    assert info.to_dict()["duration_s"] == 4.0


@pytest.mark.parametrize(("ext", "fourcc", "container", "codec"), [
    ("mov", "mp4v", "mov", "mp4v"), ("mkv", "MJPG", "mkv", "MJPG"),
    ("webm", "VP80", "webm", "VP80"), ("ts", "mp4v", "mpegts", "FMP4")])
def test_other_containers(tmp_path: Path, ext: str, fourcc: str, container: str,
                          codec: str) -> None:
    path = write_video(tmp_path / f"c.{ext}", fourcc, frames=10)
    assert probe(path) == ok(container, codec, frames=10)


def test_container_comes_from_magic_bytes_not_the_name(clips: dict[str, Path],
                                                       tmp_path: Path) -> None:
    liar = tmp_path / "really-an-mp4.avi"
    liar.write_bytes(clips["mp4"].read_bytes())
    assert probe(liar).container == "mp4"


# --- truncation ------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_mp4_with_index_at_end_cut_does_not_open(clips: dict[str, Path], tmp_path: Path,
                                                 fraction: float) -> None:
    size = clips["mp4"].stat().st_size
    keep = int(size * fraction)
    info = probe(cut(clips["mp4"], tmp_path / "x.mp4", keep))
    assert info == MediaInfo(container="mp4", issues=[
        f"truncated: box 'mdat' at offset 36 declares {size - 36 - 1093} bytes, "
        f"file ends {size - 1093 - keep} bytes short",
        "truncated: no 'moov' box (the index that says where the frames are)",
        "unopenable: OpenCV (FFmpeg) cannot open the file"])
    assert flags_for(info) == ["media.truncated", "media.undecodable"]


def test_mp4_last_kib_and_header_only(clips: dict[str, Path], tmp_path: Path) -> None:
    size = clips["mp4"].stat().st_size
    moov_at = size - 1093  # OpenCV's writer: ftyp, free, mdat, moov (1093 bytes here)
    assert clips["mp4"].read_bytes()[moov_at + 4:moov_at + 8] == b"moov"
    info = probe(cut(clips["mp4"], tmp_path / "x.mp4", size - 1024))
    assert info.issues == [
        f"truncated: box 'moov' at offset {moov_at} declares 1093 bytes, file ends 1024 bytes short",
        "unopenable: OpenCV (FFmpeg) cannot open the file"]
    assert not info.decodable and info.frames == 0
    info = probe(cut(clips["mp4"], tmp_path / "h.mp4", 100))
    assert info.issues[-1] == "unopenable: OpenCV (FFmpeg) cannot open the file"
    assert flags_for(info) == ["media.truncated", "media.undecodable"]


def test_mp4_missing_last_8_bytes_still_decodes_but_is_truncated(clips: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    size = clips["mp4"].stat().st_size
    info = probe(cut(clips["mp4"], tmp_path / "x.mp4", size - 8))
    # Every frame decodes: only the box sizes show the file is not what was written.
    assert info == dataclasses.replace(ok("mp4", "mp4v"), decodable=False, issues=[
        f"truncated: box 'moov' at offset {size - 1093} declares 1093 bytes, "
        f"file ends 8 bytes short"])
    assert flags_for(info) == ["media.truncated"]


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("budget", [media.FULL_DECODE_FRAMES, 0])
def test_faststart_mp4_cut_reports_last_decodable_frame(clips: dict[str, Path], tmp_path: Path,
                                                        fraction: float, budget: int) -> None:
    data = clips["fast"].read_bytes()
    keep = int(len(data) * fraction)
    expected = sum(1 for off, _ in mp4_frames(data) if off < keep)
    assert 0 < expected < N
    info = probe(cut(clips["fast"], tmp_path / "x.mp4", keep), full_decode_frames=budget)
    assert (info.width, info.height, info.codec, info.fps) == (W, H, "mp4v", FPS)
    assert info.frames == expected
    assert info.duration_s == round(expected / FPS, 3)
    assert not info.decodable
    assert info.issues[-1] == f"truncated: last decodable frame {expected} of {N} in header"
    assert info.issues[0].startswith("truncated: box 'mdat' at offset ")
    assert flags_for(info) == ["media.truncated"]


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_avi_cut_opens_with_a_lying_header_and_is_caught(clips: dict[str, Path], tmp_path: Path,
                                                          fraction: float) -> None:
    data = clips["avi"].read_bytes()
    keep = int(len(data) * fraction)
    expected = sum(1 for off, _ in avi_frames(data) if off < keep)
    path = cut(clips["avi"], tmp_path / "x.avi", keep)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)  # what OpenCV alone would believe
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) == N
    cap.release()
    riff = len(data) - 8
    info = probe(path)
    assert info == dataclasses.replace(ok("avi", "MJPG", frames=expected), decodable=False, issues=[
        f"truncated: RIFF 'AVI ' chunk at offset 0 declares {riff} bytes, "
        f"file ends {riff + 8 - keep} bytes short",
        f"truncated: last decodable frame {expected} of {N} in header"])
    assert flags_for(info) == ["media.truncated"]
    # Sampled: a cut AVI has lost idx1, so the end is counted, not decoded (bounded cost).
    sampled = probe(path, full_decode_frames=0)
    assert sampled.frames == expected
    assert sampled.issues[1:] == [
        f"end_unverified: {expected} frames counted by the demuxer, the end not decoded "
        f"(avi without index: a seek would decode the whole file)",
        f"truncated: frames present {expected} of {N} in header"]
    assert flags_for(sampled) == ["media.truncated", "media.end_unverified"]


def test_avi_last_kib_and_header_only(clips: dict[str, Path], tmp_path: Path) -> None:
    size = clips["avi"].stat().st_size
    info = probe(cut(clips["avi"], tmp_path / "x.avi", size - 1024))
    assert info == dataclasses.replace(ok("avi", "MJPG"), decodable=False, issues=[
        f"truncated: RIFF 'AVI ' chunk at offset 0 declares {size - 8} bytes, "
        f"file ends 1024 bytes short"])
    info = probe(cut(clips["avi"], tmp_path / "h.avi", 100))
    assert info.issues == [
        f"truncated: RIFF 'AVI ' chunk at offset 0 declares {size - 8} bytes, "
        f"file ends {size - 100} bytes short",
        "unopenable: OpenCV (FFmpeg) cannot open the file"]
    assert flags_for(info) == ["media.truncated", "media.undecodable"]


def test_matroska_cut_is_truncated(tmp_path: Path) -> None:
    path = write_video(tmp_path / "c.mkv", "MJPG", frames=10)
    data = path.read_bytes()
    info = probe(cut(path, tmp_path / "x.mkv", len(data) // 2))
    assert info.issues[0].startswith("truncated: Segment declares ")
    assert info.issues[-1].startswith("truncated: last decodable frame ")
    assert 0 < info.frames < 10 and not info.decodable


# --- corruption ------------------------------------------------------------------------


def corrupt(src: Path, dst: Path, frame: int) -> Path:
    data = bytearray(src.read_bytes())
    frames = avi_frames(data) if src.suffix == ".avi" else mp4_frames(data)
    off, size = frames[frame]
    if src.suffix == ".avi":
        data[off:off + size] = bytes(size)  # MJPEG conceals anything less than a lost frame
    else:
        data[off:off + 16] = bytes(16)  # the VOP start code: the decoder rejects the frame
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("name", ["mp4", "avi"])
def test_corrupt_frame_in_the_middle(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    path = corrupt(clips[name], tmp_path / f"c.{name}", 30)
    info = probe(path)
    assert info.frames == N and not info.decodable
    assert info.issues == [f"corrupt: 1 of {N} frames do not decode (first: frame 30)"]
    assert flags_for(info) == ["media.corrupt"]
    sampled = probe(path, full_decode_frames=0)  # 30 is a sample; 45's seek runs through 30
    assert sampled.issues == [
        "corrupt: sampled frames 30, 45 do not decode (decoding stopped at frame 30)"]


def test_corrupt_last_frame_of_a_complete_file(clips: dict[str, Path], tmp_path: Path) -> None:
    info = probe(corrupt(clips["mp4"], tmp_path / "c.mp4", N - 1))
    assert info.frames == N - 1 and not info.decodable
    assert info.issues == [f"corrupt: frames from {N - 1} on do not decode ({N} in the stream); "
                           f"the container is complete"]


def test_sampling_does_not_see_a_bad_frame_between_samples(tmp_path: Path) -> None:
    """What sampling does not prove: frame 70 of 200 lies outside every seek window."""
    path = write_video(tmp_path / "long.avi", "MJPG", frames=200, size=(64, 48))
    bad = corrupt(path, tmp_path / "bad.avi", 70)
    assert probe(bad).issues == ["corrupt: 1 of 200 frames do not decode (first: frame 70)"]
    sampled = probe(bad, full_decode_frames=100)
    assert sampled.decodable and sampled.issues == [] and sampled.frames == 200


def test_concealed_damage_still_decodes(clips: dict[str, Path], tmp_path: Path) -> None:
    """What decoding does not prove: half a JPEG frame zeroed still 'decodes'."""
    data = bytearray(clips["avi"].read_bytes())
    off, size = avi_frames(data)[30]
    data[off + size // 2:off + size] = bytes(size - size // 2)
    (tmp_path / "z.avi").write_bytes(bytes(data))
    assert probe(tmp_path / "z.avi") == ok("avi", "MJPG")


# --- headers that disagree with the stream ---------------------------------------------


def _patch_avi_frames(src: Path, dst: Path, frames: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into("<I", data, data.index(b"avih") + 8 + 16, frames)  # dwTotalFrames
    struct.pack_into("<I", data, data.index(b"strh") + 8 + 32, frames)  # dwLength
    dst.write_bytes(bytes(data))
    return dst


def test_avi_header_claims_more_frames_than_a_complete_file_holds(clips: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    info = probe(_patch_avi_frames(clips["avi"], tmp_path / "x.avi", 120))
    assert info == dataclasses.replace(ok("avi", "MJPG"), decodable=False, issues=[
        "corrupt: only 60 of 120 frames in header can be read; the container is complete",
        "duration_mismatch: container says 8.000 s, 60 frames at 15 fps is 4.000 s"])
    assert flags_for(info) == ["media.corrupt", "media.duration_mismatch"]


def test_avi_header_claims_fewer_frames(clips: dict[str, Path], tmp_path: Path) -> None:
    info = probe(_patch_avi_frames(clips["avi"], tmp_path / "x.avi", 30))
    assert info == ok("avi", "MJPG", issues=[
        "frame_count: header declares 30 frames, the stream holds 60",
        "duration_mismatch: container says 2.000 s, 60 frames at 15 fps is 4.000 s"])
    assert flags_for(info) == ["media.frame_count_mismatch", "media.duration_mismatch"]


def test_mp4_duration_disagrees_with_frames_and_fps(clips: dict[str, Path],
                                                    tmp_path: Path) -> None:
    data = bytearray(clips["mp4"].read_bytes())
    at = data.index(b"mdhd") + 4 + 12  # version 0: timescale, then duration
    scale, duration = struct.unpack_from(">II", data, at)
    assert duration / scale == 4.0
    struct.pack_into(">I", data, at + 4, duration * 2)
    (tmp_path / "d.mp4").write_bytes(bytes(data))
    info = probe(tmp_path / "d.mp4")
    assert info == ok("mp4", "mp4v", issues=[
        "duration_mismatch: container says 8.000 s, 60 frames at 15 fps is 4.000 s"])
    assert flags_for(info) == ["media.duration_mismatch"]


# --- not video, empty, unknown ---------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.mp4").write_bytes(b"")
    info = probe(tmp_path / "e.mp4")
    assert info == MediaInfo(container="empty", issues=["empty: file has 0 bytes"])
    assert flags_for(info) == ["media.empty"]


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_still_image(tmp_path: Path, ext: str) -> None:
    img = np.zeros((90, 120, 3), np.uint8)
    img[10:50, 20:80] = (0, 0, 255)
    path = tmp_path / f"i.{ext}"
    assert cv2.imwrite(str(path), img)
    kind = "jpeg" if ext == "jpg" else "png"
    info = probe(path)
    assert info == MediaInfo(container=kind, width=120, height=90, frames=1, decodable=True,
                             issues=[f"not_video: {kind.upper()} still image"])
    assert flags_for(info) == ["media.not_video"]
    data = path.read_bytes()
    cut_info = probe(cut(path, tmp_path / f"cut.{ext}", len(data) - 20))
    assert not cut_info.decodable
    assert cut_info.issues[0] == ("truncated: JPEG has no end-of-image marker" if kind == "jpeg"
                                  else "truncated: PNG does not end with its IEND chunk")
    assert flags_for(cut_info)[:2] == ["media.truncated", "media.not_video"]


def test_wav_audio(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 16000)
    info = probe(path)
    assert info == MediaInfo(container="wav", duration_s=2.0, decodable=True,
                             issues=["not_video: WAV audio"])
    half = probe(cut(path, tmp_path / "h.wav", 44 + 16000))
    assert half == MediaInfo(container="wav", duration_s=1.0, issues=[
        "truncated: RIFF 'WAVE' chunk at offset 0 declares 32036 bytes, file ends 16000 bytes short",
        "truncated: WAV data chunk declares 32000 bytes, 16000 present",
        "not_video: WAV audio"])
    assert flags_for(half) == ["media.truncated", "media.not_video"]


def test_unknown_bytes_are_not_handed_to_ffmpeg(tmp_path: Path) -> None:
    # An HLS playlist named like a clip: FFmpeg would fetch its URLs if it were opened.
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n")
    info = probe(path)
    assert info == MediaInfo(container="unknown", issues=[
        "unrecognized: no known container signature; not handed to the decoder"])
    assert flags_for(info) == ["media.undecodable"]


def test_decode_check_off_reports_header_only(clips: dict[str, Path]) -> None:
    info = probe(clips["avi"], decode_check=False)
    assert info == dataclasses.replace(ok("avi", "MJPG"), decodable=False, issues=[
        "unchecked: frames not decoded (decode_check off)"])
    assert flags_for(info) == ["media.unchecked"]


# --- contract --------------------------------------------------------------------------


def test_damaged_headers_never_raise(clips: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(1234)
    for name in ("mp4", "fast", "avi"):
        data = clips[name].read_bytes()
        for n in range(25):
            buf = bytearray(data)
            for _ in range(4):  # headers live in the first KiB (and the moov at the end)
                region = rng.choice([(0, 1024), (len(buf) - 1100, len(buf))])
                buf[rng.randrange(*region)] = rng.randrange(256)
            path = tmp_path / f"{name}{n}{clips[name].suffix}"
            path.write_bytes(bytes(buf))
            info = probe(path)
            assert info.decodable == (not any(f in flags_for(info) for f in (
                "media.undecodable", "media.truncated", "media.corrupt")))


def test_vault_file_errors_raise_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"missing\.mp4"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(StoreError, match="cannot read vault file"):
        probe(tmp_path)


def test_flags_for_never_leaves_a_failed_check_unflagged() -> None:
    assert flags_for(MediaInfo(container="mp4")) == ["media.undecodable"]
    assert flags_for(MediaInfo(container="mp4", decodable=True)) == []


def test_media_info_is_frozen() -> None:
    info = MediaInfo(container="mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.frames = 3  # type: ignore[misc]


def test_avi_without_index_is_counted_not_seeked(clips: dict[str, Path], tmp_path: Path) -> None:
    """Some cameras write no idx1: complete, but a seek would decode the whole file."""
    data = bytearray(clips["avi"].read_bytes())
    data = data[:data.rindex(b"idx1")]
    struct.pack_into("<I", data, 4, len(data) - 8)  # a consistent RIFF size: not truncated
    (tmp_path / "n.avi").write_bytes(bytes(data))
    assert probe(tmp_path / "n.avi") == ok("avi", "MJPG")  # short clip: decoded whole
    sampled = probe(tmp_path / "n.avi", full_decode_frames=10)
    assert sampled == ok("avi", "MJPG", issues=[
        "end_unverified: 60 frames counted by the demuxer, the end not decoded "
        "(avi without index: a seek would decode the whole file)"])
    assert flags_for(sampled) == ["media.end_unverified"]
