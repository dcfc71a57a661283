"""The probe's child process: ``python -m agent.media.child REQUEST``.

REQUEST is JSON: {"fd": inherited descriptor of the file, "decode": bool,
"deadline_s": seconds, "memory_mib": address-space limit, "full_decode_bytes",
"samples", "thumbnail": bool}.  The child limits itself before it reads a byte
of the file (address space, CPU time, file size, no core dump), examines the
file and writes one JSON object to stdout: {"media", "log", "log_dropped",
"versions", "thumbnail": base64 JPEG or null, "thumbnail_note": why there is
none or null} (agent/media/thumbnail.py).
Anything else it prints (a traceback) goes to stderr, which the parent reads
for its log only.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from typing import Any

OUTPUT_LIMIT = 16 * 1024 * 1024  # bytes the child may write to its output files


def limit(memory_mib: int, cpu_s: float) -> None:
    """Bound this process: memory (address space), CPU seconds, output size, no core."""
    mem = memory_mib * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = math.ceil(cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str]) -> int:
    request: dict[str, Any] = json.loads(argv[1])
    limit(int(request["memory_mib"]), float(request["deadline_s"]) + 5)
    from agent.media.examine import examine, versions  # after the limits: FFmpeg loads here
    from agent.media.thumbnail import FirstPicture

    picture = FirstPicture() if request.get("thumbnail") else None
    media, log, dropped = examine(
        int(request["fd"]), decode=bool(request["decode"]),
        deadline_s=float(request["deadline_s"]) * 0.8,  # leave time to report what was seen
        full_decode_bytes=int(request["full_decode_bytes"]), samples=int(request["samples"]),
        picture=picture.offer if picture is not None else None)
    thumbnail, note = picture.result() if picture is not None else (None, None)
    json.dump({"media": media, "log": log, "log_dropped": dropped, "versions": versions(),
               "thumbnail": thumbnail, "thumbnail_note": note},
              sys.stdout, ensure_ascii=False, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
