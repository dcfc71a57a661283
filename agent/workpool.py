"""Worker pools shared fairly by the docked cameras, and batches a dock session waits for.

The checks after a copy (verify, media probe, seal) are CPU- or disk-bound
and run on small pools shared by every docked camera.  A plain FIFO would
let one camera with forty clips queued hold every other camera behind it;
a :class:`FairPool` keeps one queue per camera (the job's ``key``) and gives
a free worker the camera with the fewest jobs running, ties going to the one
served longest ago (round robin).  A camera's own jobs run in the order it
submitted them.

A dock session collects its jobs in a :class:`Batch` and ends only once
every one of them is done, including jobs that its jobs submitted (the
verify of a clip hands it to the probe).

Invariants: at most ``workers`` jobs run at once; every job submitted
before :meth:`FairPool.shutdown` runs; a job's exception is kept in its
future (the jobs record their own failures; the batch logs what escapes).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

Job = Callable[[], None]


class Batch:
    """Futures a dock session waits for; jobs may add more while it waits."""

    def __init__(self, name: str = "queued") -> None:
        self.name = name  # what the jobs are, for the log
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()

    def add(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.append(future)

    def wait(self) -> None:
        """Wait for every job added, also those added by jobs of this batch while waiting."""
        done = 0
        while True:
            with self._lock:
                if done == len(self._futures):
                    return
                future = self._futures[done]
            try:
                future.result()
            except Exception:  # a job records its own failures; this is a last resort
                log.exception("a %s job failed", self.name)
            done += 1


class FairPool:
    """``workers`` threads running jobs, fairly across keys (see the module docstring)."""

    def __init__(self, name: str, workers: int) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.name = name
        self.workers = workers
        self._queues: dict[Any, collections.deque[tuple[Job, Future[None]]]] = {}
        self._running: collections.Counter[Any] = collections.Counter()
        self._served: dict[Any, int] = {}
        self._turn = itertools.count()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopping = False
        self._cond = threading.Condition()

    def submit(self, key: Any, job: Job) -> Future[None]:
        """Queue ``job`` under ``key`` (a camera's handle); its future."""
        future: Future[None] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"{self.name} pool is shut down")
            self._queues.setdefault(key, collections.deque()).append((job, future))
            if self._idle == 0 and len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def pending(self) -> int:
        """Jobs queued and not started yet."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _next(self) -> tuple[Any, Job, Future[None]] | None:
        """The next job: the key with fewest running, then the one served longest ago."""
        if not self._queues:
            return None
        key = min(self._queues, key=lambda k: (self._running[k], self._served.get(k, -1)))
        queue = self._queues[key]
        job, future = queue.popleft()
        if not queue:
            del self._queues[key]
        self._running[key] += 1
        self._served[key] = next(self._turn)
        return key, job, future

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                try:
                    while (picked := self._next()) is None:
                        if self._stopping:
                            return
                        self._cond.wait()
                finally:
                    self._idle -= 1
            key, job, future = picked
            if future.set_running_or_notify_cancel():
                try:
                    job()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            with self._cond:
                self._running[key] -= 1
                if self._running[key] <= 0:
                    del self._running[key]
                    if key not in self._queues:
                        self._served.pop(key, None)  # a camera gone: forget it

    def shutdown(self) -> None:
        """Run what is queued, then stop the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join()
