"""The pools after the copies are shared fairly: no camera waits behind another's backlog."""

from __future__ import annotations

import threading

from agent.workpool import Batch, FairPool


def _gate(pool: FairPool, key: str) -> tuple[threading.Event, threading.Event]:
    """Occupy one worker of ``pool`` until the returned gate opens."""
    gate, running = threading.Event(), threading.Event()

    def hold() -> None:
        running.set()
        gate.wait(30)

    pool.submit(key, hold)
    assert running.wait(10)
    return gate, running


def test_a_camera_that_queued_later_is_served_before_anothers_backlog() -> None:
    pool = FairPool("probe", 1)
    gate, _ = _gate(pool, "hold")
    order: list[str] = []
    batch = Batch()
    for i in range(4):
        batch.add(pool.submit("cam-a", lambda i=i: order.append(f"a{i}")))
    for i in range(2):
        batch.add(pool.submit("cam-b", lambda i=i: order.append(f"b{i}")))
    batch.add(pool.submit("cam-c", lambda: order.append("c0")))
    gate.set()
    batch.wait()
    # Round robin by camera, each camera's own jobs in order.
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    pool.shutdown()


def test_a_long_job_of_one_camera_leaves_the_other_workers_to_the_others() -> None:
    pool = FairPool("probe", 2)
    long_job, _ = _gate(pool, "cam-a")  # cam-a's large clip
    other, _ = _gate(pool, "cam-x")
    done: list[str] = []
    batch = Batch()
    for i in range(3):
        batch.add(pool.submit("cam-a", lambda i=i: done.append(f"a{i}")))
    b_jobs = [pool.submit("cam-b", lambda i=i: done.append(f"b{i}")) for i in range(3)]
    other.set()
    # The worker set free takes cam-b's jobs (none running) before cam-a's next ones.
    for job in b_jobs:
        job.result(timeout=10)
    assert done[:3] == ["b0", "b1", "b2"]
    long_job.set()
    batch.wait()
    assert done == ["b0", "b1", "b2", "a0", "a1", "a2"]
    pool.shutdown()


def test_a_batch_waits_for_jobs_its_jobs_submit() -> None:
    pool = FairPool("verify", 2)
    batch = Batch()
    done: list[str] = []

    def verify() -> None:
        batch.add(pool.submit("cam", lambda: done.append("probe")))
        done.append("verify")

    batch.add(pool.submit("cam", verify))
    batch.wait()
    assert done == ["verify", "probe"]
    pool.shutdown()


def test_never_more_jobs_run_than_workers() -> None:
    pool = FairPool("probe", 3)
    running, peak = [0], [0]
    lock = threading.Lock()
    release = threading.Event()

    def job() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(0.05)
        with lock:
            running[0] -= 1

    batch = Batch()
    for i in range(30):
        batch.add(pool.submit(f"cam-{i % 7}", job))
    batch.wait()
    assert peak[0] == 3
    pool.shutdown()
