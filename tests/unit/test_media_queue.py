"""Probes run beside the copies: a camera's next clip is copied while the last one is probed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from agent.config import Config
from agent.media.queue import ProbeQueue
from tests.support.stations import camera, running_station


def _hold(queue: ProbeQueue, gate: threading.Event, holding: threading.Event) -> None:
    """Occupy every probe worker until ``gate`` opens: every probe queues behind these jobs."""
    started = threading.Semaphore(0)

    def job() -> None:
        started.release()
        gate.wait(30)

    with queue.batch():
        for _ in range(queue.workers):
            queue.submit(job, key=object())
        for _ in range(queue.workers):
            assert started.acquire(timeout=30)
        holding.set()


def test_copies_go_on_while_the_probe_worker_is_busy(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    camera(config, clips=3)
    with running_station(config) as station:
        assert station.offloader is not None and station.store is not None
        store = station.store
        gate, holding = threading.Event(), threading.Event()
        holder = threading.Thread(target=_hold, args=(station.offloader.probes, gate, holding))
        holder.start()
        assert holding.wait(10)
        results = []
        session = threading.Thread(target=lambda: results.append(station.run_once()))
        session.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = store.clips()
            if len(rows) == 3 and all(r["sha256"] for r in rows):
                break
            time.sleep(0.05)
        # All three are in the vault (hashed) while not one has been probed yet.
        rows = store.clips()
        assert len(rows) == 3 and all(r["sha256"] for r in rows)
        assert {r["state"] for r in rows} == {"copying"} and all(r["media"] is None for r in rows)
        assert session.is_alive()  # the session waits for its clips' probes
        gate.set()
        session.join(60)
        holder.join(10)
        assert results and results[0].ok, results
        rows = store.clips()
        assert {r["state"] for r in rows} == {"sealed"}
        for row in rows:  # each sealed with its own probe
            envelope = json.loads(row["manifest"])
            assert envelope["payloadType"] == "application/vnd.bwc.manifest.v1+json"
            assert json.loads(row["media"])["verdict"] == "ok"


def test_outside_a_batch_a_job_runs_before_submit_returns() -> None:
    queue = ProbeQueue()
    done = []
    queue.submit(lambda: done.append(threading.current_thread().name))
    assert done and done[0].startswith("probe")
    queue.shutdown()


def test_a_failing_job_does_not_stop_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    queue = ProbeQueue()
    done = []
    with queue.batch():
        queue.submit(lambda: 1 // 0 and None)
        queue.submit(lambda: done.append(1))
    assert done == [1] and "a probe job failed" in caplog.text
    queue.shutdown()
