"""The manifest's ``media`` object: its shape, its flags, and the refusal of anything else.

The object is signed into the evidence record, so it is built only from
values of known keys and types (docs/FORMATS.md, section 3.1, lists each
field).  What the probe's child process sends is checked against that shape
before it is believed: a child that FFmpeg's parsing has thrown off course
cannot put arbitrary data in a manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agent.media.thumbnail import Thumbnail

VERDICTS = ("ok", "truncated", "corrupt", "undecodable", "empty", "not_media", "unchecked")
KINDS = ("video", "audio", "photo", "empty", "unknown")
PROBE_VERSION = 3  # of the method in docs/FORMATS.md; 2 decoded whole GOPs as samples,
# 1 was the OpenCV probe
MAX_STREAMS = 64
MAX_ISSUES = 32
MAX_TEXT = 400

_VERDICT_FLAGS = {"truncated": "media.truncated", "corrupt": "media.corrupt",
                  "undecodable": "media.undecodable", "empty": "media.empty",
                  "not_media": "media.not_media", "unchecked": "media.unchecked"}
_ISSUE_FLAGS = {"truncated": "media.truncated", "corrupt": "media.corrupt",
                "malformed": "media.corrupt", "unchecked": "media.unchecked",
                "probe_timeout": "media.unchecked", "probe_failed": "media.unchecked"}


class MalformedFacts(ValueError):
    """The probe's output does not have the shape of the ``media`` object."""


@dataclass(frozen=True)
class MediaInfo:
    """One probe result; ``to_dict()`` is the manifest's ``media`` object.

    ``thumbnail`` (when asked for, agent/media/thumbnail.py) is beside the
    facts, never in them: it is not evidence.
    """

    data: dict[str, Any] = field(default_factory=dict)
    thumbnail: Thumbnail | None = field(default=None, compare=False, repr=False)

    @property
    def verdict(self) -> str:
        return str(self.data["verdict"])

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def decodable(self) -> bool:
        return bool(self.data["decodable"])

    @property
    def duration_s(self) -> float:
        return float(self.data["duration_s"])

    @property
    def issues(self) -> list[str]:
        return list(self.data["issues"])

    def to_dict(self) -> dict[str, Any]:
        import copy

        return copy.deepcopy(self.data)


def flags_for(info: MediaInfo) -> list[str]:
    """Manifest flags: the verdict's, then one per kind of issue, each once."""
    flags: list[str] = []
    for flag in [_VERDICT_FLAGS.get(info.verdict)] + [
            _ISSUE_FLAGS.get(i.split(":", 1)[0]) for i in info.issues]:
        if flag and flag not in flags:
            flags.append(flag)
    return flags


def _base(kind: str, verdict: str, container: str, size: int, issues: list[str],
          checks: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "verdict": verdict, "container": container, "format": None,
            "codec": "", "width": 0, "height": 0, "fps": 0.0, "frames": 0,
            "duration_s": 0.0, "container_duration_s": None, "decodable": False,
            "issues": issues, "streams": [],
            "end": {"file_bytes": size, "declared_bytes": None, "packets_end_byte": None},
            "damage": None, "errors": [], "error_count": 0, "checks": checks,
            "probe": {"version": PROBE_VERSION}}


def empty() -> MediaInfo:
    return MediaInfo(_base("empty", "empty", "empty", 0, ["empty: file has 0 bytes"],
                           {"structure": "empty", "demux": "none", "decode": "none",
                            "windows": [], "last_gop": "", "decoded_packets": 0}))


def unchecked(size: int, why: str, limits: Any) -> MediaInfo:
    data = _base("unknown", "unchecked", "unknown", size, [why[:MAX_TEXT]],
                 {"structure": "unknown", "demux": "none", "decode": "none", "windows": [],
                  "last_gop": "", "decoded_packets": 0})
    data["checks"]["limits"] = _limits(limits)
    return MediaInfo(data)


def _limits(limits: Any) -> dict[str, Any]:
    return {"deadline_s": float(limits.deadline_s), "memory_mib": int(limits.memory_mib),
            "full_decode_bytes": int(limits.full_decode_bytes), "samples": int(limits.samples)}


def from_child(media: Any, versions: Any, limits: Any) -> MediaInfo:
    """Check the child's ``media`` object field by field; MalformedFacts if it is off."""
    m = _obj(media, _TOP, "media")
    _one_of(m["verdict"], VERDICTS, "verdict")
    _one_of(m["kind"], KINDS, "kind")
    _obj(m["end"], _END, "end")
    _obj(m["checks"], _CHECKS, "checks")
    if m["damage"] is not None:
        _obj(m["damage"], _DAMAGE, "damage")
    for what, items, shape, most in (("streams", m["streams"], _STREAM, MAX_STREAMS),
                                     ("errors", m["errors"], _ERROR, 5)):
        if len(items) > most:
            raise MalformedFacts(f"{what}: more than {most}")
        for item in items:
            _obj(item, shape, what)
    if len(m["issues"]) > MAX_ISSUES or not all(isinstance(i, str) for i in m["issues"]):
        raise MalformedFacts("issues: not a short list of strings")
    if "photo" in m:
        _obj(m["photo"], _PHOTO, "photo")
    probe: dict[str, Any] = {"version": PROBE_VERSION}
    if isinstance(versions, dict):
        probe.update({k: str(v)[:32] for k, v in versions.items()
                      if k in ("pyav", "libavformat", "libavcodec")})
    m["probe"] = probe
    m["checks"]["limits"] = _limits(limits)
    if not limits.decode:
        m["issues"].append("unchecked: decoding is off (media.decode_check = false)")
    return MediaInfo(m)


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))
_TOP = {"kind": str, "verdict": str, "container": str, "format": _OPT_STR, "codec": str,
        "width": int, "height": int, "fps": _NUM, "frames": int, "duration_s": _NUM,
        "container_duration_s": _OPT_NUM, "decodable": bool, "issues": list,
        "streams": list, "end": dict, "damage": (dict, type(None)), "errors": list,
        "error_count": int, "checks": dict, "photo": dict}
_OPTIONAL = {"photo"}
_END = {"file_bytes": int, "declared_bytes": _OPT_INT, "packets_end_byte": _OPT_INT}
_DAMAGE = {"byte": _OPT_INT, "time_s": _OPT_NUM, "stream": _OPT_INT, "what": str}
_ERROR = {"stage": str, "stream": _OPT_INT, "byte": _OPT_INT, "time_s": _OPT_NUM,
          "message": str}
_CHECKS = {"structure": str, "demux": str, "decode": str, "windows": list, "last_gop": str,
           "decoded_packets": int}
_STREAM = {"index": int, "type": str, "codec": _OPT_STR, "codec_tag": _OPT_STR,
           "width": int, "height": int, "fps": _NUM, "sample_rate": int, "channels": int,
           "attached_pic": bool, "packets": int, "bytes": int, "keyframes": int,
           "start_s": _OPT_NUM, "duration_s": _OPT_NUM, "index_frames": int,
           "decoded_packets": int, "decoded_frames": int, "decode_errors": int}
_PHOTO = {"exif_datetime_original": _OPT_STR, "exif_offset_time_original": _OPT_STR}


def _obj(value: Any, shape: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedFacts(f"{what}: not an object")
    required = set(shape) - _OPTIONAL
    if not required <= set(value) or not set(value) <= set(shape):
        raise MalformedFacts(f"{what}: keys {sorted(set(value) ^ set(shape))} differ")
    for key, item in value.items():
        kinds = shape[key]
        if isinstance(item, bool) and kinds is not bool and bool not in (
                kinds if isinstance(kinds, tuple) else (kinds,)):
            raise MalformedFacts(f"{what}.{key}: a boolean where a number belongs")
        if not isinstance(item, kinds):
            raise MalformedFacts(f"{what}.{key}: wrong type {type(item).__name__}")
        if isinstance(item, str) and len(item) > MAX_TEXT:
            raise MalformedFacts(f"{what}.{key}: text over {MAX_TEXT} characters")
        if isinstance(item, float) and not math.isfinite(item):
            raise MalformedFacts(f"{what}.{key}: not a finite number")
    return value


def _one_of(value: Any, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise MalformedFacts(f"{what}: {value!r} is not one of {', '.join(allowed)}")
