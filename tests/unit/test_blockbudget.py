"""The block budget: the memory of every copy and verify at once stays under ingest.buffer_mib."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import random
import threading
import time
from pathlib import Path

import pytest

from agent.blockbudget import MIN_BLOCK, Block, BlockBudget
from agent.errors import Cancelled
from agent.ingest import copy_to_vault
from agent.vault import Vault, hash_file

MIB = 1024 * 1024


def test_blocks_shrink_as_streams_open_and_grow_back() -> None:
    budget = BlockBudget(24 * MIB, max_block=8 * MIB, depth=3)
    assert budget.block_size() == 8 * MIB  # one camera alone: the largest blocks
    streams = [budget.stream() for _ in range(4)]
    assert budget.block_size() == 2 * MIB  # 24 MiB / (4 x 3) = 2 MiB
    streams += [budget.stream() for _ in range(21)]
    assert budget.block_size() == 256 * 1024  # 25 cameras: 24 MiB / 75 -> 256 KiB
    streams += [budget.stream() for _ in range(200)]
    assert budget.block_size() == MIN_BLOCK  # never below 64 KiB: streams wait instead
    for stream in streams[1:]:
        stream.close()
    assert budget.block_size() == 8 * MIB
    streams[0].close()


def test_many_streams_never_hold_more_than_the_budget() -> None:
    # Sixteen streams as a copy runs them: a reader leases blocks, another thread gives
    # each back once done with it; 16 x 3 blocks wanted, memory for 10.
    budget = BlockBudget(10 * MIN_BLOCK, max_block=MIB, depth=3)
    errors: list[BaseException] = []
    over: list[int] = []

    def stream_work(seed: int) -> None:
        rng = random.Random(seed)
        done: queue.SimpleQueue[Block | None] = queue.SimpleQueue()

        def consume() -> None:
            while (block := done.get()) is not None:
                time.sleep(rng.random() / 500)  # hashing and writing take a moment
                stream.give_back(block)

        try:
            with budget.stream() as stream:
                consumer = threading.Thread(target=consume)
                consumer.start()
                for _ in range(40):
                    block = stream.acquire()
                    if budget.held > budget.total or block.size % MIN_BLOCK:
                        over.append(budget.held)
                    done.put(block)
                done.put(None)
                consumer.join()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream_work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not over and not any(t.is_alive() for t in threads)
    assert budget.peak <= budget.total == 10 * MIN_BLOCK
    assert budget.held == 0  # all closed: no block kept


def test_waiting_streams_are_served_in_arrival_order() -> None:
    budget = BlockBudget(MIN_BLOCK, max_block=MIN_BLOCK, depth=1)
    first = budget.stream()
    block = first.acquire()
    order: list[str] = []
    streams = {name: budget.stream() for name in ("b", "c")}

    def wait_for_block(name: str) -> None:
        got = streams[name].acquire()
        order.append(name)
        streams[name].give_back(got)

    b = threading.Thread(target=wait_for_block, args=("b",))
    b.start()
    _until(lambda: budget.waiting == 1)
    c = threading.Thread(target=wait_for_block, args=("c",))
    c.start()
    _until(lambda: budget.waiting == 2)
    first.give_back(block)
    b.join(10)
    c.join(10)
    assert order == ["b", "c"]
    assert budget.waits == 2
    for stream in (first, *streams.values()):
        stream.close()


def test_a_stream_waiting_for_memory_gives_up_when_the_agent_stops() -> None:
    budget = BlockBudget(MIN_BLOCK, max_block=MIN_BLOCK, depth=1)
    holder = budget.stream()
    block = holder.acquire()
    stopping = threading.Event()
    raised: list[BaseException] = []

    def wait() -> None:
        with budget.stream() as stream:
            try:
                stream.acquire(stopping)
            except Cancelled as exc:
                raised.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    _until(lambda: budget.waiting == 1)
    stopping.set()
    thread.join(10)
    assert raised and "stopping" in str(raised[0])
    holder.give_back(block)
    holder.close()
    assert budget.held == 0


def test_copies_and_verifies_sharing_a_small_budget_keep_every_byte(tmp_path: Path) -> None:
    # Eight copies and their verifies at once, in a budget for four blocks: most wait.
    budget = BlockBudget(4 * MIN_BLOCK, max_block=MIB, depth=3)
    vault = Vault(tmp_path / "vault", budget)
    sources = [os.urandom(random.Random(i).randrange(1, 900_000)) for i in range(8)]
    results: dict[int, tuple[str, int, int]] = {}

    def copy(i: int) -> None:
        temp = vault.temp_path(f"clip-{i}")
        result = copy_to_vault(io.BytesIO(sources[i]), temp, chunk_size=MIB, queue_chunks=3,
                               budget=budget)
        vault.commit(temp, result.sha256)
        results[i] = (result.sha256, result.size, vault.verify(result.sha256))

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, data in enumerate(sources):
        digest = hashlib.sha256(data).hexdigest()
        assert results[i] == (digest, len(data), len(data))
        assert hash_file(vault.path_for(digest)) == (digest, len(data))
    assert budget.peak <= budget.total == 4 * MIN_BLOCK
    assert budget.held == 0 and budget.streams == 0


def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.005)
