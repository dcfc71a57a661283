"""What the benchmarks share: where results go, a source file of random bytes, timing.

Each ``scripts/bench`` subcommand has its own module (bench_ingest, bench_upload,
bench_probe); they import this one and never each other.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-run"
GIB = 1024 ** 3


def drop_caches() -> bool:
    """Drop the page cache so every run reads from the disk (root only)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def make_source(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            # Vary the content so no layer can de-duplicate blocks.
            block = block[1:] + block[:1]


def timed(cmd: str) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], check=True)
    return time.perf_counter() - start


def child_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
