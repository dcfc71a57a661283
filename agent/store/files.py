"""The store's files are the agent's alone: 0600 whatever the umask, and a warning otherwise.

``state.db`` holds officer ids and names, clip paths and the custody log.
SQLite creates a database with mode 0644 less the umask, and its ``-wal``
and ``-shm`` files with the database file's mode, so the database file is
made (or narrowed to) 0600 before SQLite opens it: its companions follow.
The unit's ``UMask=0077`` does the same for everything else the daemon
writes; a data directory that every user can enter or read is warned about at
every start (and by ``bwc-agent doctor``), since a later ``chmod`` or a
restore from a backup may have opened it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

STORE_MODE = 0o600
COMPANIONS = ("-wal", "-shm", "-journal")


def prepare_store_file(path: Path) -> None:
    """Create the database file 0600 if it is missing; narrow it and its companions if wider.

    A file of another owner (root ran ``status`` before the first start) is
    left as it is: opening it reports that.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STORE_MODE)
    try:
        _narrow(fd, path)
    finally:
        os.close(fd)
    for suffix in COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            fd = os.open(companion, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # missing (the usual case), or not ours to open
        try:
            _narrow(fd, companion)
        finally:
            os.close(fd)


def _narrow(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        log.warning("%s was readable by others (mode %04o); made it %04o", path,
                    stat.S_IMODE(st.st_mode), STORE_MODE)
        os.fchmod(fd, STORE_MODE)


def open_to_others(data_dir: Path) -> str | None:
    """Why ``data_dir`` is open to every user (not only its owner and group), or None."""
    try:
        mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    except OSError:
        return None
    if mode & 0o007:
        return (f"the data directory {data_dir} is open to every user (mode {mode:04o}): "
                f"officer ids, clip names and the footage may be read by anyone on the "
                f"station; fix: chmod 0700 {data_dir}")
    return None


def warn_if_open_to_others(data_dir: Path) -> None:
    problem = open_to_others(data_dir)
    if problem is not None:
        log.warning("%s", problem)
