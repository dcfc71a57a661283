"""A spy on the system calls that make a write durable, in the order the process made them.

A SIGKILL test cannot see a missing fsync (the page cache outlives the process); a
power cut can.  Short of cutting the power, the order of the calls is what decides
whether a cut could lose data: the data fsynced before the rename, the rename before
the directory's fsync, the directory's fsync before the database says the clip is
there.  ``SyscallSpy`` wraps ``os.open``/``os.close``/``os.fsync``/``os.fdatasync``/
``os.replace``/``os.rename`` (every call through the ``os`` module, in every thread)
and the SQLite connection's statement trace, and records one ``Call`` per call with
the path behind each file descriptor.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Call:
    what: str      # open, fsync, fdatasync, replace, rename, sql
    path: str      # the file (for fsync: the path the descriptor was opened with), or SQL
    target: str = ""  # replace / rename: the new name
    is_dir: bool = False
    flags: int = 0


class SyscallSpy:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._fds: dict[int, tuple[str, bool]] = {}
        self._lock = threading.Lock()

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_close = os.open, os.close
        real_fsync, real_fdatasync = os.fsync, os.fdatasync
        real_replace, real_rename = os.replace, os.rename

        def spy_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            name = os.fsdecode(path)
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            except OSError:
                is_dir = False
            with self._lock:
                self._fds[fd] = (name, is_dir)
            self._add(Call("open", name, is_dir=is_dir, flags=flags))
            return fd

        def spy_close(fd: int) -> None:
            with self._lock:
                self._fds.pop(fd, None)
            real_close(fd)

        def syncing(what: str, real: Callable[[int], None]) -> Callable[[Any], None]:
            def spy(fd: Any) -> None:
                number = fd if isinstance(fd, int) else fd.fileno()
                real(fd)
                with self._lock:
                    name, is_dir = self._fds.get(number, (f"fd:{number}", False))
                self._add(Call(what, name, is_dir=is_dir))
            return spy

        def renaming(what: str, real: Callable[..., None]) -> Callable[..., None]:
            def spy(src: Any, dst: Any, **kwargs: Any) -> None:
                real(src, dst, **kwargs)
                self._add(Call(what, os.fsdecode(src), os.fsdecode(dst)))
            return spy

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "close", spy_close)
        monkeypatch.setattr(os, "fsync", syncing("fsync", real_fsync))
        monkeypatch.setattr(os, "fdatasync", syncing("fdatasync", real_fdatasync))
        monkeypatch.setattr(os, "replace", renaming("replace", real_replace))
        monkeypatch.setattr(os, "rename", renaming("rename", real_rename))

    def trace(self, conn: sqlite3.Connection) -> None:
        """Record every SQL statement ``conn`` runs (COMMIT included), in the same order."""
        conn.set_trace_callback(lambda sql: self._add(Call("sql", sql)))

    # --- questions about the recording ----------------------------------------------------

    def index(self, match: Callable[[Call], bool], *, after: int = -1) -> int:
        """Index of the first call after ``after`` that ``match``es; fails if there is none."""
        for i in range(after + 1, len(self.calls)):
            if match(self.calls[i]):
                return i
        raise AssertionError(f"no such call after #{after}; calls: {self.describe(after)}")

    def describe(self, after: int = -1) -> str:
        return "\n".join(f"#{i} {c.what} {c.path} {c.target}".rstrip()
                         for i, c in enumerate(self.calls) if i > after)


@contextmanager
def spying(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyscallSpy]:
    spy = SyscallSpy()
    spy.install(monkeypatch)
    yield spy


def data_fsync(path: Path | str) -> Callable[[Call], bool]:
    return lambda c: c.what in ("fsync", "fdatasync") and not c.is_dir and c.path == str(path)


def dir_fsync(path: Path | str) -> Callable[[Call], bool]:
    return lambda c: c.what in ("fsync", "fdatasync") and c.is_dir and c.path == str(path)


def renamed(src: Path | str, dst: Path | str) -> Callable[[Call], bool]:
    return lambda c: c.what in ("replace", "rename") and (c.path, c.target) == (str(src),
                                                                                  str(dst))
