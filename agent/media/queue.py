"""Probes beside the copies: a copied clip is probed while the next one is being copied.

A dock session copies its recordings one after the other; probing each one
in line would hold every later copy behind it (a camera's whole backlog
waits on the slowest file).  Instead the session hands each copied clip on
and goes on copying; a :class:`ProbeQueue` worker probes it and records it
copied (then sealed) with its media facts, so a clip is still sealed with
its probe, never without.

The probe is CPU-bound (a child process running FFmpeg), so the station has
one queue with as many workers as cores (``media.probe_workers``), shared
fairly by the docked cameras (agent/workpool.py): a camera with forty clips
waiting does not hold back one that docked later, and a long probe of one
camera's large clip leaves the other workers to the other cameras.

A session wraps its copies in ``with queue.batch():``; leaving the block
waits for every job submitted inside it (or added to the batch by a job of
it), so a session still ends only when each of its clips is recorded.  A job
submitted outside a batch runs before ``submit`` returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from agent.workpool import Batch, FairPool


def default_workers() -> int:
    """One probe per core the agent may run on (``media.probe_workers = 0``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ProbeQueue:
    def __init__(self, workers: int = 1, name: str = "probe") -> None:
        self._pool = FairPool(name, workers)
        self._local = threading.local()

    @property
    def workers(self) -> int:
        return self._pool.workers

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect the jobs this thread submits inside the block; wait for them at its end."""
        outer = getattr(self._local, "batch", None)
        batch = Batch(self._pool.name)
        self._local.batch = batch
        try:
            yield batch
        finally:
            self._local.batch = outer
            batch.wait()

    def submit(self, job: Callable[[], None], *, key: Any = None,
               batch: Batch | None = None) -> None:
        """Run ``job`` on a worker, fairly by ``key`` (a camera), as part of ``batch``.

        Without ``batch``, the batch this thread opened; with none, ``job`` runs
        on a worker and ``submit`` waits for it.
        """
        batch = batch or getattr(self._local, "batch", None)
        future = self._pool.submit(key, job)
        if batch is None:
            future.result()
        else:
            batch.add(future)

    def shutdown(self) -> None:
        self._pool.shutdown()
