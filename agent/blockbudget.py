"""One memory budget for the clip bytes in flight: every copy and every verify leases from it.

A station with 25 docked cameras copies 25 clips at once and verifies others
beside them.  Each of those streams reads into blocks leased from the one
:class:`BlockBudget` (``ingest.buffer_mib``), so the memory held in blocks
stays under the budget however many cameras are docked.  The block size
adapts to the number of streams open when a block is leased::

    block = min(max_block, pow2floor(budget / (streams x depth))), at least MIN_BLOCK

``max_block`` is ``ingest.chunk_kib`` (one camera alone reads in large
blocks, which disks and USB bridges do best) and ``depth`` is
``ingest.queue_chunks``, the blocks one stream may hold (one being read, one
being hashed, one being written).  With more streams than
``budget / (depth x MIN_BLOCK)`` the blocks cannot shrink further: a stream
then waits for a block, and waiting streams are served in arrival order, so
none starves.  Waiting always ends because of how streams use their
blocks: the reader leases, and the stages it hands blocks to (hasher,
writer) give them back without needing anything from the budget.  A
caller must never keep blocks itself while it waits for another.

Invariants:

- ``held`` (bytes in blocks leased, plus free blocks kept for reuse) never
  exceeds ``total``; ``peak`` is the highest ``held`` seen (the tests read it);
- a stream holds at most ``depth`` blocks at a time;
- a block is page-aligned (an anonymous mmap) and its size a multiple of
  :data:`MIN_BLOCK` (64 KiB), so O_DIRECT reads and writes can use it and
  file offsets stay aligned when the block size changes mid-file;
- free blocks are kept only while a stream is open: an idle station holds none.
"""

from __future__ import annotations

import collections
import mmap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from agent.errors import Cancelled

MIN_BLOCK = 64 * 1024  # a multiple of every logical block size O_DIRECT may need
_WAIT_SLICE_S = 0.25  # how often a waiting stream looks at its cancel event


def _pow2floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


class Block:
    """A page-aligned buffer leased from a budget; ``n`` bytes of it hold data."""

    __slots__ = ("buf", "n", "size")

    def __init__(self, size: int) -> None:
        self.buf = mmap.mmap(-1, size)
        self.size = size
        self.n = 0

    @contextmanager
    def data(self) -> Iterator[memoryview]:
        """The filled part, as a view released on exit (the buffer may be unmapped later)."""
        with memoryview(self.buf) as whole, whole[:self.n] as part:
            yield part


class BlockBudget:
    """The station's budget of block memory (see the module docstring)."""

    def __init__(self, total: int, *, max_block: int, depth: int,
                 min_block: int = MIN_BLOCK) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.min_block = max(MIN_BLOCK, min_block - min_block % MIN_BLOCK)
        self.max_block = max(self.min_block, max_block - max_block % MIN_BLOCK)
        self.depth = depth
        # One stream must always be able to lease one block of the smallest size.
        self.total = max(total, self.min_block)
        self.held = 0
        self.peak = 0
        self.waits = 0  # leases that had to wait for memory (for the benchmark's report)
        self._streams = 0
        self._free: list[Block] = []
        self._queue: collections.deque[object] = collections.deque()  # waiting leases, in order
        self._cond = threading.Condition()

    @classmethod
    def for_one(cls, block: int, depth: int) -> BlockBudget:
        """A private budget for one stream of ``depth`` blocks of ``block`` bytes."""
        return cls(block * depth, max_block=block, depth=depth)

    @property
    def streams(self) -> int:
        return self._streams

    @property
    def waiting(self) -> int:
        """Leases waiting for memory now (a lease in the queue holds the lock unless waiting)."""
        with self._cond:
            return len(self._queue)

    def block_size(self) -> int:
        """The size of the next block leased, for the streams open now."""
        with self._cond:
            return self._block_size()

    def _block_size(self) -> int:
        share = self.total // (max(1, self._streams) * self.depth)
        size = min(self.max_block, _pow2floor(share))
        return max(self.min_block, size - size % MIN_BLOCK)

    def stream(self) -> Stream:
        """Open a stream (a copy or a verify); close it, or use it as a context manager."""
        with self._cond:
            self._streams += 1
        return Stream(self)

    # --- used by Stream --------------------------------------------------------------------

    def _closed(self) -> None:
        with self._cond:
            self._streams -= 1
            if self._streams == 0:
                self._drop_free()
            self._cond.notify_all()

    def _lease(self, cancel: threading.Event | None) -> Block:
        with self._cond:
            ticket = object()
            self._queue.append(ticket)
            waited = False
            try:
                while True:
                    if self._queue[0] is ticket:
                        block = self._take(self._block_size())
                        if block is not None:
                            return block
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("copy cancelled: the agent is stopping")
                    if not waited:
                        waited = True
                        self.waits += 1
                    self._cond.wait(_WAIT_SLICE_S)
            finally:
                del self._queue[self._queue.index(ticket)]
                self._cond.notify_all()  # the next in line may go now

    def _take(self, size: int) -> Block | None:
        """A block of ``size`` from the free ones or newly mapped; None if it does not fit."""
        for i, block in enumerate(self._free):
            if block.size == size:
                del self._free[i]
                block.n = 0
                return block
        while self.held + size > self.total and self._free:
            self._unmap(self._free.pop())
        if self.held + size > self.total:
            return None
        block = Block(size)
        self.held += size
        self.peak = max(self.peak, self.held)
        return block

    def _give_back(self, block: Block) -> None:
        with self._cond:
            if self._streams > 0 and block.size == self._block_size():
                self._free.append(block)  # leased again soon: no unmap and map
            else:
                self._unmap(block)
            self._cond.notify_all()

    def _unmap(self, block: Block) -> None:
        block.buf.close()
        self.held -= block.size

    def _drop_free(self) -> None:
        while self._free:
            self._unmap(self._free.pop())


class Stream:
    """One copy's or verify's share of a budget: at most ``depth`` blocks at a time.

    ``acquire`` may be called from one thread (the stream's reader); ``give_back``
    from any thread (the stage that finished with the block).
    """

    def __init__(self, budget: BlockBudget) -> None:
        self.budget = budget
        self._held = 0
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self, cancel: threading.Event | None = None) -> Block:
        """A block to fill; waits while this stream holds ``depth`` or the budget is spent.

        Raises Cancelled if ``cancel`` is set while waiting.
        """
        with self._cond:
            while self._held >= self.budget.depth:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("copy cancelled: the agent is stopping")
                self._cond.wait(_WAIT_SLICE_S)
            self._held += 1
        try:
            return self.budget._lease(cancel)
        except BaseException:
            with self._cond:
                self._held -= 1
            raise

    def give_back(self, block: Block) -> None:
        self.budget._give_back(block)
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.budget._closed()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
