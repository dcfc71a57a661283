"""Thumbnails from the media probe's child process, against what the ffmpeg command decodes.

Every file of the media corpus (tests/support/media_corpus.py: real encoder
output and damaged copies) is probed as the agent probes a vault file, with
a thumbnail asked for.  A file has a thumbnail exactly when the ffmpeg
command, reading it the way the probe does (no file name, the same
demuxers, decoding errors fatal), decodes a first video frame; its pixels
are that frame's, made small.  The thumbnail changes nothing in the
``media`` object, and what the child sends is believed only once checked.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from agent import media
from agent.media import demux, sandbox, thumbnail
from agent.media.thumbnail import FirstPicture, MalformedThumbnail, Thumbnail
from tests.support import media_corpus as corpus_mod
from tests.support.media_corpus import GOOD, HAND_MADE

VIDEO = sorted(n for n in GOOD if not n.startswith("audio."))
AUDIO = sorted([*(n for n in GOOD if n.startswith("audio.")), *HAND_MADE])
ALL = sorted([*GOOD, *HAND_MADE, *corpus_mod.damaged_names()])


@pytest.fixture(scope="session")
def corpus() -> Path:
    return corpus_mod.build()


@pytest.fixture(scope="session")
def pictured(corpus: Path) -> dict[str, media.MediaInfo]:
    """Every corpus file probed with a thumbnail asked for."""
    def one(name: str) -> media.MediaInfo:
        return media.probe(corpus / name, thumbnail=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(ALL, pool.map(one, ALL), strict=True))


def _ffmpeg(path: Path, before: list[str], after: list[str]) -> subprocess.CompletedProcess[bytes]:
    """The ffmpeg command on ``path`` read as the probe reads it: through a descriptor, no
    name to guess from, the same demuxers; ``before`` and ``after`` the input."""
    with open(path, "rb") as f:
        return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-format_whitelist",
                               ",".join(demux.ALLOWED_FORMATS), *before, "-i",
                               "file:/dev/stdin", *after],
                              stdin=f, capture_output=True, timeout=60)


def _first_frame_decodes(path: Path) -> bool:
    """Whether ffmpeg decodes a first frame of the first video stream without an error."""
    done = _ffmpeg(path, ["-err_detect", "explode"],
                   ["-map", "0:v:0", "-frames:v", "1", "-f", "framemd5", "-"])
    return any(line and not line.startswith(b"#") for line in done.stdout.splitlines())


def _first_frame(path: Path) -> np.ndarray:
    """The first video frame as the ffmpeg command decodes it (lossless PNG), BGR."""
    done = _ffmpeg(path, [], ["-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe",
                              "-c:v", "png", "-"])
    assert done.returncode == 0, done.stderr
    return cv2.imdecode(np.frombuffer(done.stdout, np.uint8), cv2.IMREAD_COLOR)


def _pixels(thumb: Thumbnail) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(thumb.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (thumb.height, thumb.width, 3)
    return img


# --- which files have one ----------------------------------------------------------------

@pytest.mark.parametrize("name", VIDEO)
def test_video_and_photos_have_a_thumbnail_of_their_first_frame(
        corpus: Path, pictured: dict[str, media.MediaInfo], name: str) -> None:
    thumb = pictured[name].thumbnail
    assert thumb is not None
    assert (thumb.width, thumb.height) == (240, 180)  # 320x240 and 640x480 keep their 4:3
    assert len(thumb.jpeg) <= thumbnail.MAX_BYTES and thumb.jpeg[:3] == b"\xff\xd8\xff"
    # The pixels are the first frame's, as ffmpeg decodes it, made small: JPEG at
    # quality 70 leaves them about 5 levels off on this pattern; a frame 3 s later is
    # about 18 off (the pattern moves).
    reference = cv2.resize(_first_frame(corpus / name), (thumb.width, thumb.height),
                           interpolation=cv2.INTER_AREA)
    assert float(np.abs(reference.astype(int) - _pixels(thumb).astype(int)).mean()) < 8


@pytest.mark.parametrize("name", AUDIO)
def test_audio_has_no_thumbnail(pictured: dict[str, media.MediaInfo], name: str) -> None:
    assert pictured[name].kind == "audio" and pictured[name].verdict == "ok"
    assert pictured[name].thumbnail is None


@pytest.mark.parametrize("name", corpus_mod.damaged_names())
def test_a_damaged_file_has_a_thumbnail_only_if_its_first_frame_decodes(
        corpus: Path, pictured: dict[str, media.MediaInfo], name: str) -> None:
    """Cut or zeroed after its first frame: a thumbnail; nothing of it decodes (an index
    lost with the end of the file, a cut photo, random bytes, an HTML page): none."""
    info = pictured[name]
    assert info.verdict != "ok"  # probed to its verdict: the thumbnail broke nothing
    assert (info.thumbnail is not None) == _first_frame_decodes(corpus / name)
    if info.thumbnail is not None:
        assert thumbnail.check(info.thumbnail.jpeg) == info.thumbnail


def test_the_damaged_corpus_has_both_cases(pictured: dict[str, media.MediaInfo]) -> None:
    found = {n: pictured[n].thumbnail is not None for n in corpus_mod.damaged_names()}
    assert found["zeroed_h264.mp4"] and found["cut50_h264_faststart.mp4"]
    assert not found["cut50_h264.mp4"] and not found["cut50_photo.jpg"]
    assert not found["random.mp4"] and not found["not_found.MP4"] and not found["empty.mp4"]


@pytest.mark.parametrize("name", ["h264.mp4", "hevc_faststart.mp4", "mjpeg.avi", "photo.jpg",
                                  "clip.mkv", "audio.mp3", "zeroed_h264.mp4", "cut50_clip.ts",
                                  "cutfrag_fragmented.mp4", "not_found.MP4"])
def test_a_thumbnail_changes_nothing_in_the_media_object(
        corpus: Path, pictured: dict[str, media.MediaInfo], name: str) -> None:
    without = media.probe(corpus / name)
    assert without.thumbnail is None
    assert _same_run(pictured[name].to_dict()) == _same_run(without.to_dict())
    assert "thumbnail" not in json.dumps(pictured[name].to_dict())


def _same_run(media_object: dict[str, Any]) -> str:
    """The object as text, with the number of the descriptor FFmpeg read from (which PyAV
    names in its open error, and which depends on what else the process has open) made 0."""
    return re.sub(r"processing input: '\d+'", "processing input: '0'", json.dumps(media_object))


def test_with_decoding_off_nothing_is_decoded_and_there_is_no_thumbnail(corpus: Path) -> None:
    info = media.probe(corpus / "h264.mp4", decode_check=False, thumbnail=True)
    assert info.to_dict()["checks"]["decoded_packets"] == 0 and info.thumbnail is None


# --- what the picture shows --------------------------------------------------------------

def _encode(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def test_the_thumbnail_is_the_first_frame_not_a_later_one(tmp_path: Path) -> None:
    """One second of red, then blue: the thumbnail is red, 16:9 at 320x180."""
    clip = _encode(tmp_path, "red-then-blue.mp4",
                   "-f", "lavfi", "-i", "color=c=red:s=1280x720:r=25:d=1",
                   "-f", "lavfi", "-i", "color=c=blue:s=1280x720:r=25:d=1",
                   "-filter_complex", "[0][1]concat=n=2:v=1:a=0")
    thumb = media.probe(clip, thumbnail=True).thumbnail
    assert thumb is not None and (thumb.width, thumb.height) == (320, 180)
    b, g, r = _pixels(thumb).reshape(-1, 3).mean(axis=0)
    assert r > 235 and g < 20 and b < 20, (b, g, r)


@pytest.mark.parametrize(("size", "sar", "expected"), [
    ("720x1280", "1", (101, 180)),     # portrait: the height bounds it
    ("480x360", "4/3", (320, 180)),    # anamorphic: shown 640x360 wide
    ("160x90", "1", (160, 90)),        # smaller than a thumbnail: never made larger
])
def test_the_thumbnail_keeps_the_shape_a_player_shows(tmp_path: Path, size: str, sar: str,
                                                      expected: tuple[int, int]) -> None:
    clip = _encode(tmp_path, "shape.mp4", "-f", "lavfi", "-i",
                   f"color=c=green:s={size}:r=25:d=1", "-vf", f"setsar={sar}")
    thumb = media.probe(clip, thumbnail=True).thumbnail
    assert thumb is not None and (thumb.width, thumb.height) == expected


# --- in the child: only a good frame, never a failure ------------------------------------

def _frame(width: int = 640, height: int = 360, seed: int = 0) -> Any:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(pixels, format="bgr24")


class _Corrupt:
    is_corrupt = True


def test_the_first_good_frame_is_taken_and_corrupt_ones_are_passed_over() -> None:
    picture = FirstPicture()
    assert picture.offer([_Corrupt()], None) is False  # type: ignore[list-item]
    assert picture.note == "the first frames decoded with errors"
    first, second = _frame(seed=1), _frame(seed=2)
    assert picture.offer([first, second], None) is True
    jpeg, note = picture.result()
    assert note is None and jpeg is not None
    thumb = thumbnail.accept(jpeg)
    assert (thumb.width, thumb.height) == (320, 180)


def test_a_frame_too_large_or_a_jpeg_too_big_gives_no_thumbnail_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thumbnail, "MAX_SOURCE_PIXELS", 100 * 100)
    picture = FirstPicture()
    for _ in range(FirstPicture.MAX_TRIES):
        picture.offer([_frame()], None)
    assert picture.done and picture.result() == (None, "frame not converted: ValueError: "
                                                       "frame of 640x360 pixels")
    monkeypatch.undo()
    monkeypatch.setattr(thumbnail, "MAX_BYTES", 2000)  # random pixels: ~40 KB at quality 70
    picture = FirstPicture()
    picture.offer([_frame()], None)
    assert picture.result() == (None, "over 2000 bytes even at JPEG quality 45")


# --- in the parent: the child's word is checked ------------------------------------------

def _jpeg(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return bytes(buf.tobytes())


@pytest.mark.parametrize(("value", "why"), [
    (None, "not a base64 text"),
    (12, "not a base64 text"),
    ("not base64!", "not base64"),
    ("A" * 70_000, "over 49152 bytes"),
    (base64.b64encode(b"GIF89a" + bytes(100)).decode(), "no JPEG start and end markers"),
    (base64.b64encode(_jpeg(320, 180)[:-2]).decode(), "no JPEG start and end markers"),
    (base64.b64encode(_jpeg(640, 360)).decode(), "a JPEG of 640x360, not within 320x180"),
    (base64.b64encode(b"\xff\xd8\xff\xd9").decode(), "a JPEG of 0x0"),
])
def test_what_is_not_one_small_jpeg_is_refused_by_name(value: Any, why: str) -> None:
    with pytest.raises(MalformedThumbnail, match=why.replace("(", r"\(")):
        thumbnail.accept(value)


def test_a_malformed_thumbnail_from_the_child_is_dropped_and_the_facts_kept(
        corpus: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A child that FFmpeg threw off course sends a picture too large: it is refused by name;
    the media facts, checked on their own, stand."""
    real = sandbox._spawn

    def child_sends_a_large_picture(request: dict[str, Any], fd: int, out: Any, err: Any,
                                    deadline_s: float) -> str:
        outcome = real(request, fd, out, err, deadline_s)
        out.seek(0)
        result = json.loads(out.read())
        result["thumbnail"] = base64.b64encode(_jpeg(1280, 720)).decode()
        out.seek(0)
        out.truncate()
        out.write(json.dumps(result).encode())
        return outcome

    monkeypatch.setattr(sandbox, "_spawn", child_sends_a_large_picture)
    with caplog.at_level("WARNING", logger="agent.media"):
        info = media.probe(corpus / "h264.mp4", thumbnail=True)
    assert info.verdict == "ok" and info.thumbnail is None
    assert "the probe's thumbnail refused: a JPEG of 1280x720, not within 320x180" in caplog.text
