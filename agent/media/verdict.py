"""From what FFmpeg saw and what the container declares to the manifest's ``media`` object.

The verdict, in order of precedence (docs/FORMATS.md section "media" is the
contract; this module is its implementation):

- ``not_media``: FFmpeg finds no format in the bytes and the bytes name no
  container (HTML, text, random data).
- ``undecodable``: a container is there but FFmpeg cannot open it, finds no
  audio or video stream, or decodes no frame of the anchor stream.
- ``truncated``: the file ends before the container says (a box, chunk or
  Segment runs past the end, a TS packet or an audio frame is cut), or the
  container declares more time or more frames than the packets present.
- ``corrupt``: FFmpeg reported errors on packets that are followed by good
  ones (damage inside the file, not at its end).
- ``unchecked``: the probe stopped (deadline) before finding any damage.
- ``ok``: none of the above.

When a file is both cut and damaged inside, the verdict names the damage
that starts first; the flags name both.  Errors on the packets at a cut
(nothing good read after them, or bytes at or past the cut) are the cut's,
not corruption.
"""

from __future__ import annotations

from typing import Any

from agent.media.demux import Problem, Reading, StreamStats
from agent.media.frames import short_by
from agent.media.photo import Photo
from agent.media.structure import Structure

MAX_ERRORS_SHOWN = 5
MAX_ERROR_CHARS = 160
# Formats that declare no length: a bad last packet there can only be read as a cut.
_UNSIZED = frozenset({"mpegts", "m2ts", "mp3", "aac", "amr", "amr-wb", "h264", "hevc",
                      "mjpeg", "unknown"})
_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv", "jpeg_pipe": "jpeg",
               "png_pipe": "png", "amrnb": "amr", "amrwb": "amr-wb"}
_PHOTO_FORMATS = frozenset({"jpeg_pipe", "png_pipe"})


def duration_tolerance(seconds: float) -> float:
    """Declared minus present time that counts as missing: 0.5 s or 1 %, the larger."""
    return max(0.5, 0.01 * seconds)


def judge(st: Structure, rd: Reading | None, photo: Photo | None) -> dict[str, Any]:
    """The ``media`` object for a non-empty file."""
    j = _Judgement(st, rd)
    j.run()
    return j.media(photo)


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class _Judgement:
    def __init__(self, st: Structure, rd: Reading | None) -> None:
        self.st = st
        self.rd = rd
        self.issues: list[str] = list(st.notes)
        self.flags: list[str] = []
        self.cut: tuple[int | None, float | None, str] | None = None  # byte, time, what
        self.corrupt: Problem | None = None
        self.verdict = "ok"
        av = [s for s in rd.streams if s.av] if rd else []
        self.video = next((s for s in av if s.type == "video"), None)
        self.audio = next((s for s in av if s.type == "audio"), None)
        self.anchor = next((s for s in (self.video, self.audio) if s and s.decoder), None)
        starts = [s.start for s in av if s.start is not None]
        ends = [s.end for s in av if s.end is not None]
        # Times in damage and errors count from the first packet, as a player shows them.
        self.origin = min(starts) if starts else 0.0
        self.present = (max(ends) - self.origin) if starts and ends else None
        self.packets_end = self.present

    # --- the verdict ----------------------------------------------------------------------

    def run(self) -> None:
        st, rd = self.st, self.rd
        if rd is None or not rd.opened:
            why = rd.open_error if rd is not None else "not examined"
            if st.truncated_at is not None:
                self.set_cut(st.truncated_at, None, "the container runs past the end")
                self.verdict = "truncated"
                self.issues.append(f"undecodable: FFmpeg cannot open what is left ({why})")
            elif st.container == "unknown":
                self.verdict = "not_media"
                self.issues.append(f"not_media: FFmpeg finds no media format in the bytes ({why})")
            else:
                self.verdict = "undecodable"
                self.issues.append(f"undecodable: FFmpeg cannot open the {st.container} ({why})")
            return
        if not any(s.av for s in rd.streams) and rd.format not in _PHOTO_FORMATS:
            self.verdict = "not_media" if st.container == "unknown" else "undecodable"
            self.issues.append(f"{self.verdict}: FFmpeg finds no audio or video stream "
                               f"({rd.format})")
            return
        if st.truncated_at is not None:
            self.set_cut(st.truncated_at, self.packets_end, "the container runs past the end")
        self.check_last_frames()
        self.check_declared()
        self.sort_problems()
        if rd.decode_mode != "off" and self.anchor is not None and \
                self.anchor.decoded_packets and not self.anchor.decoded_frames:
            self.verdict = "undecodable"
            self.issues.append(f"undecodable: no frame of stream {self.anchor.index} "
                               f"({self.anchor.codec}) decodes")
            return
        if self.corrupt is not None and (self.cut is None or self.cut[0] is None or
                                         (self.corrupt.byte or 0) < self.cut[0]):
            self.verdict = "corrupt"
        elif self.cut is not None:
            self.verdict = "truncated"
        elif rd.stopped:
            self.verdict = "unchecked"
            self.issues.append(f"unchecked: {rd.stopped}")
        if rd.decode_mode == "sampled" and self.anchor is not None and \
                not self.anchor.decoded_packets:
            self.issues.append(f"unchecked: stream {self.anchor.index} has no keyframe to "
                               "start decoding from; nothing was decoded")

    def rel(self, t: float | None) -> float | None:
        return None if t is None else t - self.origin

    def set_cut(self, byte: int | None, time_s: float | None, what: str) -> None:
        if self.cut is None or (byte is not None and (self.cut[0] is None or byte < self.cut[0])):
            self.cut = (byte, time_s, what)
        if "media.truncated" not in self.flags:
            self.flags.append("media.truncated")

    def check_last_frames(self) -> None:
        """A raw audio stream's last frame must be as long as its header says."""
        for s in self.rd.streams if self.rd else []:
            if s.type != "audio" or s.last is None or s.codec is None:
                continue
            short = short_by(s.codec, bytes(s.last))
            if short:
                pos = s.last.pos if s.last.pos is not None and s.last.pos >= 0 else None
                self.issues.append(f"truncated: the last {s.codec} frame of stream {s.index} "
                                   f"lacks {short} bytes (at offset {pos})")
                at = s.end if s.last.pts is None else float(s.last.pts * s.last.time_base)
                self.set_cut(pos, self.rel(at), "the last frame is cut")

    def check_declared(self) -> None:
        """More time or frames declared than present: missing at the end."""
        rd = self.rd
        assert rd is not None
        declared = rd.container_duration
        if declared is not None and self.present is not None and not rd.stopped and \
                declared - self.present > duration_tolerance(declared):
            self.issues.append(f"truncated: the container declares {declared:.3f} s, the "
                               f"packets present cover {self.present:.3f} s")
            self.set_cut(rd.last_end or None, self.packets_end, "packets end early")
        for s in rd.streams:
            # Video only: an audio index may count samples (PCM), not packets.
            if s.type == "video" and s.av and s.index_frames and s.packets < s.index_frames \
                    and not rd.stopped:
                self.issues.append(f"truncated: stream {s.index} ({s.codec}) lists "
                                   f"{s.index_frames} frames in its index, {s.packets} were "
                                   "read")
                self.set_cut(rd.last_end or None, self.packets_end, "index frames missing")

    def sort_problems(self) -> None:
        """Each problem is the cut's, or damage inside the file."""
        rd = self.rd
        assert rd is not None
        unsized = self.st.container in _UNSIZED
        for p in rd.problems:
            trailing = p.read >= rd.last_good_read
            at_cut = self.cut is not None and (
                trailing or p.reaches_end or
                (p.byte is not None and self.cut[0] is not None and p.byte >= self.cut[0]))
            if at_cut:
                continue
            if trailing and (p.reaches_end or unsized):
                self.issues.append(f"truncated: the last packets do not read ({p.message})")
                self.set_cut(p.byte, self.rel(p.time_s), "the last packets do not read")
                continue
            self.corrupt = self.corrupt or p
        if self.corrupt is not None:
            p = self.corrupt
            self.issues.append(f"corrupt: {rd.problem_count} FFmpeg errors, the first "
                               f"{_where(p, self.origin)}: {p.message}")
            self.flags.insert(0, "media.corrupt")
        if self.st.damaged_at is not None and self.corrupt is None:
            self.corrupt = Problem("structure", self.st.notes[-1], 0, byte=self.st.damaged_at)
            self.flags.insert(0, "media.corrupt")

    # --- the object -----------------------------------------------------------------------

    def media(self, photo: Photo | None) -> dict[str, Any]:
        st, rd = self.st, self.rd
        streams = rd.streams if rd is not None and rd.opened else []
        kind = _kind(st, rd, streams)
        v, a = self.video, self.audio
        primary = v or a
        out: dict[str, Any] = {
            "kind": kind,
            "verdict": self.verdict,
            "container": _container(st, rd),
            "format": rd.format if rd is not None else None,
            "codec": (primary.codec or "") if primary else (streams[0].codec or ""
                                                            if streams else ""),
            "width": v.width if v else 0,
            "height": v.height if v else 0,
            "fps": v.fps if v else 0.0,
            "frames": v.packets if v else 0,
            "duration_s": r3(self.present) or 0.0,
            "container_duration_s": r3(rd.container_duration) if rd else None,
            "decodable": self.verdict == "ok",
            "issues": self.issues,
            "streams": [_stream(s) for s in streams],
            "end": {"file_bytes": st.size, "declared_bytes": st.declared_end,
                    "packets_end_byte": (rd.last_end or None) if rd else None},
            "damage": self.damage(),
            "errors": [_error(p, self.origin)
                       for p in (rd.problems if rd else [])[:MAX_ERRORS_SHOWN]],
            "error_count": rd.problem_count if rd else 0,
            "checks": self.checks(),
        }
        if kind == "photo":
            s = streams[0] if streams else None
            out.update(width=(photo.width if photo and photo.width else s.width if s else 0),
                       height=(photo.height if photo and photo.height else s.height if s
                               else 0),
                       codec=s.codec if s and s.codec else st.container, frames=1,
                       fps=0.0, duration_s=0.0, container_duration_s=None)
            out["photo"] = {
                "exif_datetime_original": photo.exif_datetime_original if photo else None,
                "exif_offset_time_original": photo.exif_offset_time_original if photo
                else None}
        return out

    def damage(self) -> dict[str, Any] | None:
        if self.verdict == "corrupt" and self.corrupt is not None:
            p = self.corrupt
            return {"byte": p.byte, "time_s": r3(self.rel(p.time_s)), "stream": p.stream,
                    "what": "corrupt"}
        if self.verdict == "truncated" and self.cut is not None:
            still = self.st.container in ("jpeg", "png")  # a photo has no time line
            return {"byte": self.cut[0], "time_s": None if still else r3(self.cut[1]),
                    "stream": None,
                    "what": "truncated"}
        return None

    def checks(self) -> dict[str, Any]:
        rd = self.rd
        demux = "not opened"
        if rd is not None and rd.opened:
            demux = f"stopped: {rd.stopped}" if rd.stopped else "all packets"
        return {
            "structure": self.st.container,
            "demux": demux,
            "decode": rd.decode_mode if rd is not None and rd.opened else "none",
            "windows": [list(w) for w in rd.windows] if rd and rd.decode_mode == "sampled"
            else [],
            "last_gop": (rd.tail or "decoded") if rd and rd.decode_mode == "sampled" else "",
            "decoded_packets": sum(s.decoded_packets for s in rd.streams) if rd else 0,
        }


def _where(p: Problem, origin: float) -> str:
    parts = [f"in stream {p.stream}" if p.stream is not None else ""]
    if p.byte is not None:
        parts.append(f"at byte {p.byte}")
    if p.time_s is not None:
        parts.append(f"at {p.time_s - origin:.3f} s")
    return " ".join(x for x in parts if x) or "(position unknown)"


def _error(p: Problem, origin: float) -> dict[str, Any]:
    message = p.message if len(p.message) <= MAX_ERROR_CHARS else \
        p.message[:MAX_ERROR_CHARS - 1] + "…"
    at = None if p.time_s is None else p.time_s - origin
    return {"stage": p.stage, "stream": p.stream, "byte": p.byte, "time_s": r3(at),
            "message": message}


def _stream(s: StreamStats) -> dict[str, Any]:
    duration = (s.end - s.start) if s.start is not None and s.end is not None else None
    return {"index": s.index, "type": s.type, "codec": s.codec, "codec_tag": s.codec_tag,
            "width": s.width, "height": s.height, "fps": s.fps, "sample_rate": s.sample_rate,
            "channels": s.channels, "attached_pic": s.attached_pic, "packets": s.packets,
            "bytes": s.bytes, "keyframes": s.keyframes, "start_s": r3(s.start),
            "duration_s": r3(duration), "index_frames": s.index_frames,
            "decoded_packets": s.decoded_packets, "decoded_frames": s.decoded_frames,
            "decode_errors": s.decode_errors}


def _container(st: Structure, rd: Reading | None) -> str:
    if rd is None or rd.format is None:
        return st.container
    if st.container in ("mov", "mp4", "webm", "m2ts", "amr-wb"):
        return st.container  # the bytes tell these apart where FFmpeg's name does not
    return _CONTAINERS.get(rd.format, rd.format.split(",")[0])


def _kind(st: Structure, rd: Reading | None, streams: list[StreamStats]) -> str:
    if st.container in ("jpeg", "png") or (rd is not None and rd.format in _PHOTO_FORMATS):
        return "photo"
    if any(s.type == "video" and s.av for s in streams):
        return "video"
    if any(s.type == "audio" for s in streams):
        return "audio"
    return "unknown"
