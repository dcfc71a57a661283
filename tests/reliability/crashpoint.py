"""Run ``bwc-agent`` and SIGKILL it at the Nth durable-write step (a test launcher).

Usage: python -m tests.reliability.crashpoint N [--scope seal] -- bwc-agent-args...

Counted steps are the calls that make state durable or visible: os.write,
os.fsync, os.replace, os.rename, os.unlink, os.chmod and every store
transaction (counted before it begins and just before it commits).  At the
Nth step the process kills itself with SIGKILL — no cleanup handler, no
atexit, exactly like a power cut from the process's point of view.
N = 0 counts without killing and prints the total on stderr at exit.
``--scope seal`` counts only the steps taken inside sealing and checkpointing
(``Custody.seal`` / ``Custody.checkpoint``), to cut power in the middle of a seal.
The product code is not modified: the launcher wraps the functions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_lock = threading.Lock()
_count = 0
_limit = 0
_scoped = False
_inside = threading.local()


def _step() -> None:
    global _count
    if _scoped and not getattr(_inside, "depth", 0):
        return
    with _lock:
        _count += 1
        if _limit and _count >= _limit:
            os.kill(os.getpid(), signal.SIGKILL)


def _wrap(module: Any, name: str) -> None:
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _step()
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def _scope(cls: Any, name: str) -> None:
    original: Callable[..., Any] = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return original(*args, **kwargs)
        finally:
            _inside.depth -= 1

    setattr(cls, name, wrapper)


def main() -> int:
    global _limit
    _limit = int(sys.argv[1])
    args = sys.argv[sys.argv.index("--") + 1:]
    for name in ("write", "fsync", "replace", "rename", "unlink", "chmod"):
        _wrap(os, name)
    from agent.store import db

    original_tx = db.Store.transaction

    @contextlib.contextmanager
    def transaction(self: Any) -> Iterator[Any]:
        _step()
        with original_tx(self) as tx:
            yield tx
            _step()

    db.Store.transaction = transaction  # type: ignore[method-assign]
    global _scoped
    if "--scope" in sys.argv[:sys.argv.index("--")]:
        _scoped = True
        from agent.custody import sealer

        for name in ("seal", "checkpoint"):
            _scope(sealer.Custody, name)
    from agent.cli.main import main as agent_main

    code = agent_main(args)
    if not _limit:
        print(f"crashpoint-steps={_count}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
