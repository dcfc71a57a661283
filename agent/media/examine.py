"""One file examined: its structure, FFmpeg's reading of it, its photo header, the verdict.

This is the whole probe of one file as the probe's child process runs it
(agent/media/sandbox.py); tests and benchmarks may also call it directly.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

from agent.media import demux, structure, verdict
from agent.media.photo import read_jpeg


def examine(fd: int, *, decode: bool = True, deadline_s: float | None = None,
            full_decode_bytes: int = demux.FULL_DECODE_BYTES,
            samples: int = demux.SAMPLES, picture: demux.Picture | None = None
            ) -> tuple[dict[str, Any], list[tuple[int, str, str]], int]:
    """(media object, FFmpeg log lines, log lines dropped) for the file open at ``fd``.

    ``picture`` is offered the first decoded video frames (agent/media/thumbnail.py).
    """
    size = os.fstat(fd).st_size
    deadline = time.monotonic() + deadline_s if deadline_s is not None else None
    f = io.FileIO(fd, closefd=False)
    st = structure.scan(f, size)
    photo = read_jpeg(f) if st.container == "jpeg" else None
    f.seek(0)
    reading = demux.read(fd, size, decode=decode, deadline=deadline,
                         full_decode_bytes=full_decode_bytes, samples=samples,
                         picture=picture)
    media = verdict.judge(st, reading, photo)
    return media, reading.log, reading.log_dropped


def versions() -> dict[str, str]:
    """PyAV and the FFmpeg libraries it carries: the tools behind every media fact."""
    import av

    libs = av.library_versions
    return {"pyav": av.__version__,
            **{name: ".".join(map(str, libs[name])) for name in ("libavformat", "libavcodec")
               if name in libs}}
