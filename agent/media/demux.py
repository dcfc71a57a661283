"""Reading a recording the way FFmpeg does: every packet demuxed, a documented sample decoded.

:func:`read` opens an already open file descriptor with PyAV (FFmpeg's own
demuxers, parsers and decoders) and walks every packet once:

- Demuxing is cheap (no decoding), so every packet of every stream is read:
  counts, bytes, keyframes and time stamps per stream, the container's
  duration next to the duration the packets actually cover, and every error
  FFmpeg's demuxer or parser reports, with the packet where it happened.
- Decoding is what costs, so it is bounded.  A file of at most
  ``full_decode_bytes`` is decoded whole.  A larger one is decoded in
  windows: the first GOP, a sample starting at the first keyframe at or
  after each of ``samples`` evenly spaced byte offsets, and the last GOP.
  A window runs from a keyframe of the anchor stream (the first video
  stream, else the first audio stream); the first one to the first
  keyframe at least ``WINDOW_S`` seconds later (at most
  ``FIRST_WINDOW_MAX_S``), a sample for ``WINDOW_S`` seconds of its time
  stamps however long the GOP, the last one to the end.  Every audio and
  video packet inside a window is decoded, then each decoder is drained and
  reset.
- FFmpeg's log lines are captured (never written to stderr) and each one is
  pinned to the packet being read or decoded when FFmpeg wrote it.
- ``picture``, if given, is offered the frames decoded from each packet of
  the first video stream that decoded without a problem, until it says it
  has taken one (agent/media/thumbnail.py).  What it does is not part of
  the reading: its log lines are dropped, and it sees frames the walk
  decodes anyway, so the ``media`` object is the same with or without it.

Untrusted input: the file name is never given to FFmpeg (it would use the
extension as a hint); FFmpeg gets only the open descriptor, the demuxers in
``ALLOWED_FORMATS`` (no playlists, no concat, no image sequences), no
protocol at all for anything the file refers to, and at most
``MAX_STREAMS`` streams.  Memory held here is bounded: problems and log
lines are capped, the last-GOP buffer is capped at ``MAX_TAIL_BYTES``.
This module runs inside the probe's child process (agent/media/sandbox.py),
which bounds time and memory.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import av.logging

ALLOWED_FORMATS = ("mov", "matroska", "mpegts", "mpeg", "avi", "asf", "flv", "wav", "w64",
                   "mp3", "amr", "amrnb", "amrwb", "aac", "flac", "ogg", "h264", "hevc",
                   "mjpeg", "jpeg_pipe", "png_pipe")
MAX_STREAMS = 64
FULL_DECODE_BYTES = 64 * 1024 * 1024
SAMPLES = 7
WINDOW_S = 1.0
FIRST_WINDOW_MAX_S = 10.0
MAX_TAIL_BYTES = 64 * 1024 * 1024
MAX_PROBLEMS = 32  # problems kept in detail; all are counted
MAX_LOG_LINES = 200
MAX_LOG_CHARS = 300
MAX_ERRORS = 10_000  # demux errors before giving up on the rest of the file
_RESERVOIR = ("mp3", "mp2", "mp1")
_OFFSET = re.compile(r"offset (0x[0-9a-fA-F]+|\d+)")


@dataclass
class StreamStats:
    index: int
    type: str
    codec: str | None
    codec_tag: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    index_frames: int = 0  # frames the container's index lists (0: it does not say)
    attached_pic: bool = False  # cover art in an audio file, not video
    decoder: bool = False
    packets: int = 0
    bytes: int = 0
    keyframes: int = 0
    start: float | None = None
    end: float | None = None
    decoded_packets: int = 0
    decoded_frames: int = 0
    decode_errors: int = 0
    last: Any = None  # the last packet, for the frame-length check of raw audio
    cc: Any = None  # FFmpeg's decoder context
    warmup: int = 0  # packets decoded since the decoder was last reset
    resets: int = 0

    @property
    def av(self) -> bool:
        return self.type in ("video", "audio") and not self.attached_pic


@dataclass
class Problem:
    stage: str  # "demux" or "decode"
    message: str
    read: int  # how many packets had been read when it happened
    stream: int | None = None
    byte: int | None = None
    time_s: float | None = None
    reaches_end: bool = False  # the packet's bytes run to the end of the file


@dataclass
class Reading:
    """What FFmpeg saw.  ``opened`` False means FFmpeg found no format it may read."""

    size: int
    opened: bool = False
    open_error: str = ""
    format: str | None = None
    container_duration: float | None = None
    streams: list[StreamStats] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    demux_errors: int = 0
    last_good_read: int = -1
    reads: int = 0
    last_end: int = 0
    decode_mode: str = "off"
    windows: list[tuple[float, float]] = field(default_factory=list)
    tail: str = ""
    stopped: str = ""  # why the walk stopped before the end ("" if it reached it)
    log: list[tuple[int, str, str]] = field(default_factory=list)
    log_dropped: int = 0


# Offered the frames of one packet and the stream's sample aspect ratio; True: taken.
Picture = Callable[[list[Any], Any], bool]


def read(fd: int, size: int, *, decode: bool = True, deadline: float | None = None,
         full_decode_bytes: int = FULL_DECODE_BYTES, samples: int = SAMPLES,
         picture: Picture | None = None) -> Reading:
    """Demux every packet of the file open at ``fd`` and decode the sample (see module doc)."""
    av.logging.set_level(av.logging.WARNING)
    reading = Reading(size)
    with av.logging.Capture(local=False) as logs:
        walker = _Walker(reading, logs, deadline, picture)
        try:
            container = av.open(io.FileIO(fd, closefd=False), mode="r", buffer_size=1 << 20,
                                container_options={
                                    "format_whitelist": ",".join(ALLOWED_FORMATS),
                                    "protocol_whitelist": "none",
                                    "max_streams": str(MAX_STREAMS)})
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            walker.take_logs()
            reading.open_error = _short(str(exc))
            return reading
        with container:
            reading.opened = True
            reading.format = container.format.name
            if container.duration is not None and container.duration > 0:
                reading.container_duration = container.duration / 1_000_000
            reading.streams = [_describe(s) for s in container.streams]
            walker.take_logs()
            if decode:
                full = size <= full_decode_bytes
                reading.decode_mode = "all" if full else "sampled"
                walker.plan([] if full else [size * k // (samples + 1)
                                             for k in range(1, samples + 1)], full)
            walker.walk(container)
    return reading


def _describe(stream: Any) -> StreamStats:
    cc = stream.codec_context
    st = StreamStats(stream.index, stream.type,
                     cc.codec.canonical_name if cc is not None and cc.codec else None)
    st.index_frames = max(int(stream.frames or 0), 0)
    st.attached_pic = bool(stream.disposition & av.stream.Disposition.attached_pic)
    if cc is None:
        return st
    tag = getattr(cc, "codec_tag", "")
    st.codec_tag = tag if tag and tag.isprintable() and tag.strip("\x00 ") else None
    st.decoder = cc.codec is not None and cc.codec.is_decoder
    st.cc = cc
    if st.decoder:
        cc.thread_count = 1  # one thread: the same errors in the same order on every run
    if stream.type == "video":
        st.width, st.height = int(cc.width or 0), int(cc.height or 0)
        rate = stream.average_rate or stream.guessed_rate
        st.fps = round(float(rate), 3) if rate and 0 < float(rate) <= 10_000 else 0.0
    elif stream.type == "audio":
        st.sample_rate, st.channels = int(cc.sample_rate or 0), int(cc.channels or 0)
    return st


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_LOG_CHARS else text[:MAX_LOG_CHARS - 1] + "…"


class _Walker:
    """One pass over the packets: statistics, decode windows, problems and log lines."""

    def __init__(self, reading: Reading, logs: list[Any], deadline: float | None,
                 picture: Picture | None = None) -> None:
        self.r = reading
        self.logs = logs
        self.deadline = deadline
        self.picture = picture
        self.picture_stream: StreamStats | None = None
        self.points: list[int] = []
        self.full = False
        self.decode = False
        self.window_open = False
        self.window_from = 0.0
        self.anchor: StreamStats | None = None
        self.tail: list[Any] = []
        self.tail_bytes = 0
        self.tail_from: float | None = None

    # --- log lines ------------------------------------------------------------------------

    def take_logs(self) -> list[tuple[int, str, str]]:
        """The log lines written since the last call; kept (bounded) for the agent's log."""
        new = [(int(level), str(name), _short(str(msg))) for level, name, msg in self.logs]
        self.logs.clear()  # the capture list never grows past one packet's lines
        room = MAX_LOG_LINES - len(self.r.log)
        self.r.log.extend(new[:max(room, 0)])
        self.r.log_dropped += max(len(new) - max(room, 0), 0)
        return [line for line in new if line[0] <= av.logging.ERROR]

    def problem(self, stage: str, message: str, packet: Any = None,
                stream: int | None = None) -> None:
        r = self.r
        r.problem_count += 1
        if len(r.problems) >= MAX_PROBLEMS:
            return
        p = Problem(stage, _short(message), r.reads, stream)
        if packet is not None:
            p.stream = packet.stream.index
            if packet.pos is not None and packet.pos >= 0:
                p.byte = int(packet.pos)
                p.reaches_end = p.byte + packet.size >= r.size
            p.time_s = _seconds(packet)
        else:
            found = _OFFSET.search(message)
            if found:
                p.byte = int(found.group(1), 0)
        r.problems.append(p)

    # --- the walk -------------------------------------------------------------------------

    def plan(self, points: list[int], full: bool) -> None:
        self.points, self.full, self.decode = points, full, True
        video = [s for s in self.r.streams if s.type == "video" and s.av and s.decoder]
        audio = [s for s in self.r.streams if s.type == "audio" and s.decoder]
        self.anchor = (video or audio)[0] if video or audio else None
        self.picture_stream = video[0] if video else None

    def walk(self, container: Any) -> None:
        r = self.r
        demuxer = container.demux()
        in_a_row = 0
        while True:
            if self.deadline is not None and time.monotonic() > self.deadline:
                r.stopped = f"probe deadline reached after {r.reads} packets"
                break
            try:
                packet = next(demuxer)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                errors = self.take_logs()
                message = errors[-1][2] if errors else str(exc)
                r.demux_errors += 1
                self.problem("demux", message)
                in_a_row += 1
                if in_a_row > 100 or r.demux_errors > MAX_ERRORS:
                    r.stopped = f"gave up after {r.demux_errors} demux errors"
                    break
                demuxer = container.demux()  # FFmpeg goes on from where it stopped
                continue
            in_a_row = 0
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # PyAV's end-of-stream marker, not data
            self.account(packet)
        self.finish()

    def account(self, packet: Any) -> None:
        r = self.r
        st = r.streams[packet.stream.index]
        r.reads += 1
        bad = False
        for _, name, message in self.take_logs():
            self.problem("demux", f"[{name}] {message}", packet)
            bad = True
        if packet.is_corrupt:
            self.problem("demux", "the demuxer marked the packet corrupt", packet)
            bad = True
        st.packets += 1
        st.bytes += packet.size
        st.keyframes += bool(packet.is_keyframe)
        st.last = packet
        if packet.pos is not None and packet.pos >= 0:
            r.last_end = max(r.last_end, int(packet.pos) + packet.size)
        begin = _seconds(packet)
        if begin is not None:
            length = float(packet.duration * packet.time_base) if packet.duration else 0.0
            st.start = begin if st.start is None else min(st.start, begin)
            st.end = begin + length if st.end is None else max(st.end, begin + length)
        if self.decode and st.av and st.decoder:
            bad |= self.route(packet, st, begin)
        if not bad:
            r.last_good_read = r.reads

    def route(self, packet: Any, st: StreamStats, begin: float | None) -> bool:
        """Decode the packet now, buffer it for the last GOP, or let it pass."""
        if self.full:
            return self.decode_packet(packet, st)
        if st is self.anchor and packet.is_keyframe:
            at = begin if begin is not None else 0.0
            if self.window_open and at - self.window_from >= WINDOW_S:
                self.close_window(at)
            pos = packet.pos if packet.pos is not None else -1
            due = bool(self.points) and pos >= self.points[0]
            while self.points and pos >= self.points[0]:
                self.points.pop(0)  # offsets passed inside an open window need no window
            if not self.window_open and (due or not self.r.windows):
                self.window_open, self.window_from = True, at
                self.tail, self.tail_bytes, self.tail_from = [], 0, at
            elif not self.window_open and (self.tail_from is None
                                           or at - self.tail_from >= WINDOW_S):
                self.tail, self.tail_bytes, self.tail_from = [], 0, at
        if self.window_open and st is self.anchor and begin is not None and \
                begin - self.window_from >= (WINDOW_S if self.r.windows else FIRST_WINDOW_MAX_S):
            # A sample is the first WINDOW_S of a GOP, not the whole GOP: decoding from a
            # keyframe may stop anywhere, and a long GOP (8 s with x264's defaults) would
            # cost eight times the decode for the same check.  The first GOP is decoded
            # whole up to FIRST_WINDOW_MAX_S: a file of one GOP is not decoded whole here.
            self.close_window(begin)
        bad = self.decode_packet(packet, st) if self.window_open else False
        # Kept inside a window too: a window cut short in the last GOP leaves that GOP
        # to be decoded whole from its keyframe at the end.
        if self.tail_from is not None and self.tail_bytes <= MAX_TAIL_BYTES:
            self.tail.append(packet)
            self.tail_bytes += packet.size
        return bad

    def close_window(self, at: float | None) -> None:
        self.drain()
        self.r.windows.append((round(self.window_from, 3),
                               round(at if at is not None else self.window_from, 3)))
        self.window_open = False

    def finish(self) -> None:
        if not self.decode:
            return
        if self.full or self.window_open:
            ends = [s.end for s in self.r.streams if s.end is not None]
            self.close_window(max(ends) if ends else None)
            self.r.tail = "decoded" if self.full or self.r.windows else ""
            return
        if self.tail_bytes > MAX_TAIL_BYTES:
            self.r.tail = f"not decoded: the last GOP is over {MAX_TAIL_BYTES >> 20} MiB"
            return
        if not self.tail:
            self.r.tail = "not decoded: no keyframe to start from"
            return
        self.window_open, self.window_from = True, self.tail_from or 0.0
        for packet in self.tail:
            self.decode_packet(packet, self.r.streams[packet.stream.index])
        self.tail = []
        ends = [s.end for s in self.r.streams if s.end is not None]
        self.close_window(max(ends) if ends else None)
        self.r.tail = "decoded"

    # --- decoding -------------------------------------------------------------------------

    def decode_packet(self, packet: Any, st: StreamStats) -> bool:
        """Decode one packet; True if FFmpeg reported a problem with it."""
        st.decoded_packets += 1
        st.warmup += 1
        # An MP3 frame may take bits from up to three frames before it: right after a
        # reset (a window after the first) its first frames cannot decode, rightly.
        quiet = st.resets > 0 and st.codec in _RESERVOIR and st.warmup <= 3
        bad = False
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            frames, bad = [], True
            errors = self.take_logs()
            if not quiet:
                self.problem("decode", f"[{st.codec}] {errors[-1][2] if errors else exc}",
                             packet)
        for frame in frames:
            st.decoded_frames += 1
            if frame.is_corrupt and not bad and not quiet:
                self.problem("decode", f"[{st.codec}] frame decoded with errors", packet)
                bad = True
        for _, name, message in self.take_logs():
            if not bad and not quiet:
                self.problem("decode", f"[{name}] {message}", packet)
            bad = True
        if not bad and frames and self.picture is not None and st is self.picture_stream:
            if self.picture(frames, st.cc.sample_aspect_ratio if st.cc is not None else None):
                self.picture = None
            self.logs.clear()  # the picture's own lines (swscale's) are not the file's
        if quiet:
            return False
        if bad:
            st.decode_errors += 1
        return bad

    def drain(self) -> None:
        """Take the frames still inside each decoder, then reset it for the next window."""
        for st in self.r.streams:
            if not (st.av and st.decoder and st.decoded_packets):
                continue
            cc = st.cc
            st.warmup, st.resets = 0, st.resets + 1
            try:
                st.decoded_frames += len(cc.decode(None))
            except av.error.FFmpegError as exc:
                self.problem("decode", f"[{st.codec}] {exc}", stream=st.index)
            self.take_logs()
            cc.flush_buffers()


def _seconds(packet: Any) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float(ts * packet.time_base)
