"""Probes beside the copies: a copied clip is probed while the next one is being copied.

A dock session copies its recordings one after the other; probing each one
in line would hold every later copy behind it (a camera's whole backlog
waits on the slowest file).  Instead the session hands each copied clip to a
:class:`ProbeQueue` and goes on copying.  The queue's worker probes it and
records it copied (then sealed) with its media facts, so a clip is still
sealed with its probe, never without.

A session wraps its copies in ``with queue.batch():``; leaving the block
waits for every job submitted inside it, so a session still ends only when
each of its clips is recorded.  A job submitted outside a batch runs before
``submit`` returns.  One worker by default: on a two-core station one core
copies and hashes, the other probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

log = logging.getLogger(__name__)


class ProbeQueue:
    def __init__(self, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        self._local = threading.local()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Collect the jobs this thread submits inside the block; wait for them at its end."""
        outer = getattr(self._local, "jobs", None)
        jobs: list[Future[None]] = []
        self._local.jobs = jobs
        try:
            yield
        finally:
            self._local.jobs = outer
            for job in jobs:
                try:
                    job.result()
                except Exception:  # a job records its own failures; this is a last resort
                    log.exception("a probe job failed")

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the probe worker (inside a batch), or now and wait (outside one)."""
        future = self._pool.submit(job)
        jobs = getattr(self._local, "jobs", None)
        if jobs is None:
            future.result()
        else:
            jobs.append(future)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
