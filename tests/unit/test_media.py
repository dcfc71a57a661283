"""The media probe against real encoder output, compared with ffprobe and ffmpeg on every file.

The corpus (tests/support/media_corpus.py) is made by the ffmpeg command:
good recordings in every container a camera writes, and damaged copies of
them.  Each file is probed the way the agent probes a vault file (a child
process, no file name given to FFmpeg), and the result is compared with the
reference tools run on the same file: ffprobe's format, streams, packet
counts and duration, and whether a full ``ffmpeg -f null`` decode reports
errors.  FFmpeg's versions differ (the system's ffprobe against the one
inside PyAV), which is the point: a court's tools will differ too.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import media
from agent.media import facts
from tests.support import media_corpus as corpus_mod
from tests.support.media_corpus import CUT_PERCENT, GOOD, HAND_MADE, Damaged

GOOD_NAMES = sorted([*GOOD, *HAND_MADE])


def within(a: float, b: float) -> bool:
    """The tolerance of the comparison with ffprobe: 0.5 s or 10 %, the larger."""
    return abs(a - b) <= max(0.5, 0.1 * max(abs(a), abs(b)))


@dataclass
class Seen:
    """One corpus file as the agent and the reference tools see it."""

    path: Path
    media: dict[str, Any]
    flags: list[str]
    ffprobe: dict[str, Any] | None  # None: ffprobe cannot open the file
    ffmpeg_errors: str  # what a full decode with the ffmpeg command reports


def _ffprobe(path: Path) -> dict[str, Any] | None:
    proc = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_format",
                           "-show_streams", "-of", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _ffmpeg_errors(path: Path) -> str:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null",
                           "-"], capture_output=True, text=True, timeout=60)
    return proc.stderr.strip() or ("" if proc.returncode == 0 else f"exit {proc.returncode}")


@pytest.fixture(scope="session")
def corpus() -> Path:
    return corpus_mod.build()


@pytest.fixture(scope="session")
def damaged(corpus: Path) -> dict[str, Damaged]:
    return {d.name: d for d in corpus_mod.damaged_list(corpus)}


@pytest.fixture(scope="session")
def seen(corpus: Path, damaged: dict[str, Damaged]) -> dict[str, Seen]:
    names = GOOD_NAMES + sorted(damaged)

    def one(name: str) -> Seen:
        path = corpus / name
        info = media.probe(path, clip_id="0190f0c1-0000-7000-8000-000000000001", name=name)
        return Seen(path, info.to_dict(), media.flags_for(info), _ffprobe(path),
                    _ffmpeg_errors(path))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def _streams(data: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(s["codec_type"], s.get("codec_name")) for s in data["streams"]]


def _agrees_with_ffprobe(s: Seen) -> None:
    """Streams, packet counts and duration as ffprobe says (its tolerance for time)."""
    m, ref = s.media, s.ffprobe
    if ref is None:
        assert m["streams"] == [], "ffprobe cannot open it, the agent lists streams"
        return
    assert [(x["type"], x["codec"]) for x in m["streams"]] == _streams(ref)
    for ours, theirs in zip(m["streams"], ref["streams"], strict=True):
        # PCM has no frames: how many bytes make a packet is the demuxer's choice, and
        # FFmpeg versions choose differently.  Every other codec's packets are its frames.
        if ours["type"] in ("video", "audio") and not ours["codec"].startswith("pcm_"):
            packets = int(theirs.get("nb_read_packets", 0))
            assert abs(ours["packets"] - packets) <= max(1, packets // 100), (ours, theirs)
    if m["kind"] != "photo" and "duration" in ref["format"]:
        assert m["container_duration_s"] is not None
        assert within(m["container_duration_s"], float(ref["format"]["duration"]))


# --- good recordings ---------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_recording_is_ok_and_agrees_with_ffprobe(seen: dict[str, Seen], name: str) -> None:
    s = seen[name]
    assert s.ffmpeg_errors == "", "the corpus file itself must be good"
    m = s.media
    assert (m["verdict"], m["decodable"], m["damage"], s.flags) == ("ok", True, None, []), m
    assert m["errors"] == [] and m["error_count"] == 0
    _agrees_with_ffprobe(s)
    ref = s.ffprobe
    assert ref is not None
    first = ref["streams"][0]
    if m["kind"] == "video":
        assert (m["width"], m["height"], m["fps"]) == (320, 240, 25.0)
        assert m["frames"] == 150 and within(m["duration_s"], corpus_mod.SECONDS)
        assert m["codec"] == first["codec_name"]
    elif m["kind"] == "audio":
        assert within(m["duration_s"], corpus_mod.SECONDS)
        assert (m["streams"][0]["sample_rate"], m["streams"][0]["channels"]) == (
            int(first["sample_rate"]), int(first["channels"]))
    assert m["checks"]["decode"] == "all" and m["checks"]["demux"] == "all packets"
    decoded = sum(x["decoded_packets"] for x in m["streams"])
    assert decoded == sum(x["packets"] for x in m["streams"] if x["type"] in ("video", "audio"))


def test_kinds_and_containers_are_named_from_the_bytes(seen: dict[str, Seen]) -> None:
    got = {n: (seen[n].media["kind"], seen[n].media["container"], seen[n].media["codec"])
           for n in GOOD_NAMES}
    assert got == {
        "audio.aac": ("audio", "aac", "aac"), "audio.amr": ("audio", "amr", "amr_nb"),
        "audio.mp3": ("audio", "mp3", "mp3"), "audio.wav": ("audio", "wav", "pcm_s16le"),
        "clip.mkv": ("video", "mkv", "h264"), "clip.mov": ("video", "mov", "h264"),
        "clip.ts": ("video", "mpegts", "h264"), "fragmented.mp4": ("video", "mp4", "h264"),
        "h264.mp4": ("video", "mp4", "h264"), "h264_faststart.mp4": ("video", "mp4", "h264"),
        "hevc.mp4": ("video", "mp4", "hevc"), "hevc_faststart.mp4": ("video", "mp4", "hevc"),
        "mjpeg.avi": ("video", "avi", "mjpeg"), "photo.jpg": ("photo", "jpeg", "mjpeg")}
    mov = seen["clip.mov"].media["streams"]
    assert [(x["type"], x["codec_tag"], x["packets"]) for x in mov] == [
        ("video", "avc1", 150), ("audio", "sowt", mov[1]["packets"]), ("data", None, 1)]


def test_photo_has_its_dimensions_and_exif_time(seen: dict[str, Seen]) -> None:
    m = seen["photo.jpg"].media
    assert (m["kind"], m["width"], m["height"], m["frames"], m["duration_s"]) == (
        "photo", 640, 480, 1, 0.0)
    assert m["photo"] == {"exif_datetime_original": corpus_mod.EXIF_TIME,
                          "exif_offset_time_original": corpus_mod.EXIF_OFFSET}


# --- damaged recordings ------------------------------------------------------------------


EXPECTED_VERDICT = {"cut": {"truncated"}, "zeroed": {"corrupt"}, "empty": {"empty"},
                    "random": {"not_media"}, "html": {"not_media"}}


def test_every_damaged_file_is_in_the_corpus(damaged: dict[str, Damaged]) -> None:
    cuts = [d for d in damaged.values() if d.how == "cut"]
    assert len(cuts) == len(corpus_mod.CUT) * len(CUT_PERCENT) + 2
    assert {"cutfrag_fragmented.mp4", "cutpacket_clip.ts", "zeroed_h264.mp4", "empty.mp4",
            "random.mp4", "not_found.MP4"} <= set(damaged)


@pytest.mark.parametrize("name", corpus_mod.damaged_names())
def test_damaged_file_is_flagged_where_the_damage_starts(seen: dict[str, Seen],
                                                         damaged: dict[str, Damaged],
                                                         name: str) -> None:
    d, s = damaged[name], seen[name]
    m = s.media
    assert m["verdict"] in EXPECTED_VERDICT[d.how], m
    assert f"media.{m['verdict']}" in s.flags and m["decodable"] is False
    _agrees_with_ffprobe(s)
    if d.how in ("empty", "random", "html"):
        assert m["damage"] is None and m["streams"] == []
        return
    damage = m["damage"]
    assert damage is not None and damage["what"] == m["verdict"]
    assert damage["byte"] is not None and 0 <= damage["byte"] <= m["end"]["file_bytes"]
    if d.how == "cut":
        assert d.cut_at is not None and damage["byte"] <= d.cut_at
        if m["kind"] == "photo":
            assert damage["time_s"] is None  # a still has no time line
        elif m["streams"]:  # FFmpeg read what is left: the damage is where the packets stop
            assert damage["time_s"] is not None and within(damage["time_s"], m["duration_s"])
    if s.ffmpeg_errors:
        assert m["verdict"] != "ok"


@pytest.mark.parametrize("name", ["zeroed_h264.mp4", "zeroed_h264_faststart.mp4"])
def test_zeroed_middle_keeps_its_length_and_says_where(seen: dict[str, Seen],
                                                       damaged: dict[str, Damaged],
                                                       name: str) -> None:
    m = seen[name].media
    a, b = damaged[name].zeroed or (0, 0)
    assert m["verdict"] == "corrupt"
    assert within(m["duration_s"], corpus_mod.SECONDS) and m["duration_s"] > 5.5
    assert within(m["container_duration_s"], corpus_mod.SECONDS)
    damage = m["damage"]
    # The first packet FFmpeg rejects holds zeros: it starts before them (a packet is
    # at most a few KiB here) and no later than their end.
    assert a - 8192 <= damage["byte"] < b
    assert 2.0 <= damage["time_s"] <= 3.7  # the zeros begin 2/5 of the way into 6 s
    assert any(i.startswith("corrupt:") for i in m["issues"])
    assert 0 < len(m["errors"]) <= 5 and m["error_count"] >= len(m["errors"])
    assert all(len(e["message"]) <= 160 for e in m["errors"])


def test_a_file_cut_inside_its_index_cannot_open_but_is_truncated(seen: dict[str, Seen]) -> None:
    m = seen["cut50_h264.mp4"].media
    assert (m["verdict"], m["kind"], m["streams"]) == ("truncated", "unknown", [])
    assert any("box 'mdat'" in i for i in m["issues"])
    assert m["end"]["declared_bytes"] > m["end"]["file_bytes"]
    assert m["damage"]["byte"] == m["end"]["file_bytes"]


def test_html_and_random_bytes_are_not_media(seen: dict[str, Seen]) -> None:
    for name in ("not_found.MP4", "random.mp4"):
        m = seen[name].media
        assert (m["verdict"], m["kind"], m["format"]) == ("not_media", "unknown", None)
        assert seen[name].flags == ["media.not_media"]
    assert seen["empty.mp4"].flags == ["media.empty"]


# --- how the probe runs ------------------------------------------------------------------


def test_ffmpeg_log_goes_through_the_agent_log_with_clip_and_name(
        corpus: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("DEBUG", logger="agent.media.ffmpeg")
    media.probe(corpus / "zeroed_h264.mp4", clip_id="clip-42", name="FILE0001.MP4")
    lines = [r for r in caplog.records if r.name == "agent.media.ffmpeg"]
    assert lines and all(r.levelname == "DEBUG" for r in lines)
    assert all("clip clip-42 (FILE0001.MP4)" in r.getMessage() for r in lines)
    assert any("[h264]" in r.getMessage() for r in lines)
    assert capfd.readouterr().err == ""  # nothing raw on the agent's stderr


def test_manifest_says_which_checks_ran(seen: dict[str, Seen]) -> None:
    m = seen["h264.mp4"].media
    assert m["checks"]["structure"] == "mp4"
    assert m["checks"]["limits"] == {"deadline_s": 60.0, "memory_mib": media.MEMORY_MIB,
                                     "full_decode_bytes": 64 * 1024 * 1024, "samples": 7}
    assert m["probe"]["version"] == facts.PROBE_VERSION
    assert {"pyav", "libavformat", "libavcodec"} <= set(m["probe"])


def _sampled(path: Path, **limits: Any) -> dict[str, Any]:
    lim = media.Limits(deadline_s=60, memory_mib=media.MEMORY_MIB, full_decode_bytes=0,
                       **limits)
    return media.run(path, lim).to_dict()


@pytest.mark.parametrize("name", ["h264.mp4", "hevc_faststart.mp4", "clip.mkv", "clip.ts",
                                  "audio.mp3"])
def test_sampled_decode_of_a_good_file_is_ok_and_says_what_it_decoded(corpus: Path,
                                                                      name: str) -> None:
    m = _sampled(corpus / name, samples=3)
    assert m["verdict"] == "ok", m["issues"]
    checks = m["checks"]
    assert checks["decode"] == "sampled" and checks["last_gop"] == "decoded"
    assert 2 <= len(checks["windows"]) <= 5
    total = sum(s["packets"] for s in m["streams"] if s["type"] in ("video", "audio"))
    assert 0 < checks["decoded_packets"] < total
    starts = [w[0] for w in checks["windows"]]
    assert starts == sorted(starts) and starts[0] == pytest.approx(
        min(s["start_s"] for s in m["streams"] if s["start_s"] is not None), abs=0.1)


def test_a_sample_is_one_second_however_long_the_gop(tmp_path: Path) -> None:
    """Rule: a sample decodes 1 s from its keyframe, so a check costs the same at any GOP
    length; the first and the last GOP are decoded whole."""
    path = tmp_path / "long_gop.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=40", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "250", "-pix_fmt", "yuv420p", str(path)],
                   check=True)
    m = _sampled(path, samples=3)
    assert m["verdict"] == "ok", m["issues"]
    (video,) = [s for s in m["streams"] if s["type"] == "video"]
    assert video["keyframes"] == 4 and video["packets"] == 1000  # four GOPs of 10 s
    first, *samples, last = m["checks"]["windows"]
    assert first == [0.0, 10.0] and last == [30.0, pytest.approx(40.0, abs=0.1)]
    # (Packets come in decode order: a sample ends at the first one at or past 1 s.)
    assert samples and all(1.0 <= end - start <= 1.12 for start, end in samples)
    assert [start for start, _ in samples] == sorted({start for start, _ in samples})
    assert m["checks"]["decoded_packets"] <= 250 + 30 * len(samples) + 250


def test_the_first_window_of_a_file_of_one_gop_stops_after_10_s(tmp_path: Path) -> None:
    """Rule: a recording with a single keyframe is not decoded whole by the first window; the
    last window (the whole GOP) is bounded by its 64 MiB on its own."""
    path = tmp_path / "one_gop.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=30", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "10000", "-pix_fmt", "yuv420p", str(path)],
                   check=True)
    m = _sampled(path, samples=3)
    assert m["verdict"] == "ok", m["issues"]
    first, last = m["checks"]["windows"]
    assert first[0] == 0.0 and first[1] == pytest.approx(10.0, abs=0.12)
    assert last == [0.0, pytest.approx(30.0, abs=0.1)] and m["checks"]["last_gop"] == "decoded"


def test_sampled_decode_still_finds_damage(corpus: Path) -> None:
    m = _sampled(corpus / "zeroed_h264.mp4", samples=3)
    assert m["verdict"] == "corrupt" and 2.0 <= m["damage"]["time_s"] <= 3.7


def test_decode_off_demuxes_and_says_so(corpus: Path) -> None:
    info = media.probe(corpus / "cut50_h264_faststart.mp4", decode_check=False)
    m = info.to_dict()
    assert m["verdict"] == "truncated" and m["checks"]["decode"] == "off"
    assert m["checks"]["decoded_packets"] == 0
    assert media.flags_for(info) == ["media.truncated", "media.unchecked"]


def test_probe_deadline_reports_unchecked_not_ok(corpus: Path) -> None:
    lim = media.Limits(deadline_s=0.001, memory_mib=media.MEMORY_MIB)
    m = media.run(corpus / "h264.mp4", lim).to_dict()
    assert m["verdict"] == "unchecked" and "probe deadline" in " ".join(m["issues"])


def test_a_probe_over_its_memory_limit_is_unchecked(corpus: Path) -> None:
    info = media.run(corpus / "h264.mp4", media.Limits(deadline_s=30, memory_mib=48))
    assert info.verdict == "unchecked" and info.issues[0].startswith("probe_failed:")
    assert media.flags_for(info) == ["media.unchecked"]


def test_a_probe_that_hangs_is_killed_at_its_deadline(tmp_path: Path) -> None:
    import os
    import tempfile
    import time

    from agent.media import sandbox

    pid_file = tmp_path / "pid"
    argv = ["python3", "-c", f"import os, time; open({str(pid_file)!r}, 'w').write("
            "str(os.getpid())); time.sleep(600)"]
    fd = os.open(__file__, os.O_RDONLY)
    start = time.monotonic()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            outcome = sandbox._spawn({}, fd, out, err, 0.5, argv=argv, grace_s=0.5)
    finally:
        os.close(fd)
    assert outcome.startswith("probe_timeout:") and time.monotonic() - start < 10
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_nothing_the_file_names_is_opened(tmp_path: Path) -> None:
    """Playlists and concat lists are not media: FFmpeg may not follow what they name."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        hls = tmp_path / "list.mp4"
        hls.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
                       f"http://127.0.0.1:{port}/a.ts\n#EXT-X-ENDLIST\n")
        concat = tmp_path / "concat.mp4"
        concat.write_text(f"ffconcat version 1.0\nfile '{__file__}'\n")
        for path in (hls, concat):
            assert media.probe(path).verdict == "not_media"
        with pytest.raises(TimeoutError):
            server.accept()


# --- the child's word is checked ---------------------------------------------------------


def _good_media(seen: dict[str, Seen]) -> dict[str, Any]:
    m = dict(seen["h264.mp4"].media)
    for key in ("probe",):
        m.pop(key)
    m["checks"] = {k: v for k, v in m["checks"].items() if k != "limits"}
    return m


@pytest.mark.parametrize("change", [
    {"verdict": "fine"}, {"kind": "hologram"}, {"width": "320"}, {"fps": float("nan")},
    {"codec": "x" * 1000}, {"extra": 1}, {"streams": [{}]}, {"decodable": 1},
    {"issues": ["x"] * 100}, {"damage": {"byte": 1}},
])
def test_probe_output_of_the_wrong_shape_is_refused(seen: dict[str, Seen],
                                                    change: dict[str, Any]) -> None:
    good = _good_media(seen)
    lim = media.Limits(deadline_s=60, memory_mib=1024)
    assert facts.from_child(json.loads(json.dumps(good)), {}, lim).verdict == "ok"
    with pytest.raises(facts.MalformedFacts):
        facts.from_child({**good, **change}, {}, lim)
