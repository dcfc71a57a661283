"""Media probe: what a recording is, as FFmpeg sees it, and whether it is whole.

``probe(path)`` returns a :class:`MediaInfo` whose ``to_dict()`` is the
manifest's ``media`` object (docs/FORMATS.md section 3.1 documents every
field and how to reproduce it with ffprobe); :func:`flags_for` turns it into
manifest flags.  Bad media never raises: a broken file is evidence too, so
it gets a verdict (``truncated``, ``corrupt`` with where the damage starts,
``undecodable``, ``not_media``, ``empty``) and the evidence for it.  Only an
OSError on the vault file itself raises (StoreError).

The threads:

- structure.py: where the container says the file ends (pure Python).
- demux.py: FFmpeg (PyAV) demuxes every packet and decodes a documented
  sample; its log lines are captured, never printed.
- verdict.py: the verdict, the damage and the ``media`` object.
- thumbnail.py: the first picture, small, for the officer at the station
  screen (not evidence: never in the ``media`` object).
- child.py / sandbox.py: all of the above runs in a child process with a
  deadline and a memory limit; the parent checks its output (facts.py,
  thumbnail.py).
- queue.py: probes run beside the copies, not in front of them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agent.errors import ConfigError
from agent.media.facts import MediaInfo, flags_for
from agent.media.sandbox import Limits, run

__all__ = ["Limits", "MediaInfo", "deadline_for", "flags_for", "probe", "run"]

GIB = 1024 ** 3
TIMEOUT_PER_GIB_S = 60.0  # media.probe_timeout_s: the probe's deadline for each GiB
MEMORY_MIB = 1536  # media.probe_memory_mib


def deadline_for(size: int, per_gib_s: float = TIMEOUT_PER_GIB_S) -> float:
    """The probe's deadline for a file of ``size`` bytes: per GiB, never under one GiB's."""
    return per_gib_s * max(1.0, size / GIB)


def probe(path: Path, *, decode_check: bool = True, clip_id: str | None = None,
          name: str | None = None, timeout_per_gib_s: float = TIMEOUT_PER_GIB_S,
          memory_mib: int = MEMORY_MIB, thumbnail: bool = False) -> MediaInfo:
    """Describe the vault file at ``path`` (see the module docstring).

    With ``thumbnail`` the result also carries the first picture, small
    (``MediaInfo.thumbnail``; None for audio, or when nothing decodes, or
    with ``decode_check`` off: then nothing is decoded).
    """
    if importlib.util.find_spec("av") is None:
        raise ConfigError("PyAV is not installed (pip install av): the media probe needs "
                          "FFmpeg's demuxers and decoders")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # run() opens it and raises StoreError with the reason
    limits = Limits(deadline_s=deadline_for(size, timeout_per_gib_s), memory_mib=memory_mib,
                    decode=decode_check, thumbnail=thumbnail)
    return run(path, limits, clip_id=clip_id, name=name)
