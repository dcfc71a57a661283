"""Listing a camera volume without trusting it.

:func:`walk` lists the recordings below a volume root and reports every
other entry with a reason.  The volume may be hostile or corrupt, so:

* directories are opened by file descriptor with O_NOFOLLOW, each relative
  to its parent, and every entry is stat'ed through that descriptor: a
  symlink swapped in during the walk cannot redirect it;
* symlinks and special files are reported, never followed or opened; other
  file systems mounted inside are not entered; a recording with several hard
  links is refused (a camera's FAT or exFAT has none: it is a link to
  something else, maybe a station secret) and left where it is;
* the walk is a loop over an explicit stack, never a recursion, so no tree
  can exhaust the interpreter's stack; it goes at most :data:`MAX_DEPTH`
  directories below the root (a corrupt FAT can hold a directory loop that
  no inode number reveals), enters no directory twice (same st_dev and
  st_ino: a bind mount of an ancestor), and looks at no more than
  :data:`MAX_ENTRIES` entries in all.  What it does not enter is reported,
  and a directory not entered because of a bound is reported as one that
  could not be read (it may hold recordings);
* a name is stored as :func:`drivers.paths.stored_name` gives it: text
  that is safe in a path and from which the exact bytes are recovered (two
  raw names of one directory never get the same stored name), so a
  recording is never left on the camera for its name alone;
* entries are handled depth first, sorted by their raw names, so a
  listing is deterministic.

At most MAX_DEPTH + 1 directory descriptors are open at once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.base import Listing, Recording, Skipped
from drivers.paths import GONE_ERRNOS, escaped_bytes, open_root, os_error, stored_name

# Camera firmware writes DCIM/100MEDIA/<file> or Record/<yyyy>/<mm>/<dd>/<file>:
# a handful of levels.  Sixteen is far beyond any camera, and near enough to end a
# directory loop on a corrupt card after few repeats.
MAX_DEPTH = 16
# Entries (files and directories) looked at in one walk: a card of 256 GB holds some
# ten thousand files; a corrupt one may seem to hold endless trees.
MAX_ENTRIES = 500_000

TOO_DEEP = (f"directory too deep: more than {MAX_DEPTH} levels below the volume root, "
            "not entered")
TOO_MANY = "listing stopped"
# A camera's FAT or exFAT has no hard links: a recording with several is not the camera's
# (a link to a station file planted in the tree), and it is never read.
REFUSED = "refused, left on the camera"
NO_HARD_LINKS = "a camera's FAT or exFAT has none"
UNREADABLE_DIR = "unreadable directory"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Dir:
    """A directory being listed: its descriptor and the raw names still to look at."""

    fd: int
    raw_prefix: bytes  # raw path of the directory below the root, with a trailing '/'
    prefix: str  # the same, as text
    flags: tuple[str, ...]  # name flags every entry below inherits
    encoding: str | None  # of the names on its path (drivers.paths.stored_name)
    depth: int  # 0 for the root
    pending: list[bytes] = field(default_factory=list)  # reverse order: pop() gives the next
    taken: set[str] = field(default_factory=set)  # stored names given in this directory


@dataclass
class _Walk:
    root: Path
    root_dev: int
    extensions: frozenset[str]
    ignore: frozenset[bytes]
    listing: Listing
    raw: dict[str, bytes]
    entries: int = 0
    seen: dict[tuple[int, int], str] = field(default_factory=dict)  # directory -> its path

    def skip(self, path: str, reason: str) -> None:
        self.listing.skipped.append(Skipped(path, reason))


def _extension(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot else ""


def walk(
    root: Path,
    extensions: Iterable[str],
    ignore: Iterable[str] = (),
    raw_paths: dict[str, bytes] | None = None,
) -> Listing:
    """List the recordings below ``root`` whose extension (case-insensitive) is in ``extensions``.

    ``ignore`` names root-level files left out silently (a driver's identity
    file).  ``raw_paths``, if given, is filled with stored path -> raw
    on-disk relative path.  Order is deterministic: depth first, entries
    sorted by their raw names.  Raises DeviceGoneError if the volume goes away.
    """
    state = _Walk(
        root=root,
        root_dev=0,
        extensions=frozenset(e.lower().lstrip(".") for e in extensions),
        ignore=frozenset(os.fsencode(n) for n in ignore),
        listing=Listing(),
        raw=raw_paths if raw_paths is not None else {},
    )
    fd = open_root(root)
    stack: list[_Dir] = []
    try:
        st = os.fstat(fd)
        state.root_dev = st.st_dev
        state.seen[(st.st_dev, st.st_ino)] = "."
        top = _Dir(fd, b"", "", (), None, 0)
        stack.append(top)
        _read_names(state, top)
        while stack:
            current = stack[-1]
            if not current.pending:
                os.close(stack.pop().fd)
                continue
            if state.entries >= MAX_ENTRIES:
                state.skip(current.prefix.rstrip("/") or ".",
                           f"{TOO_MANY}: more than {MAX_ENTRIES} entries on the volume")
                break
            state.entries += 1
            sub = _entry(state, current, current.pending.pop())
            if sub is not None:
                stack.append(sub)
    finally:
        for opened in stack:
            os.close(opened.fd)
    return state.listing


def _read_names(state: _Walk, directory: _Dir) -> bool:
    """Fill ``directory.pending`` with its entries' raw names; False if it cannot be read."""
    try:
        names = [os.fsencode(n) for n in os.listdir(directory.fd)]
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise os_error(exc, f"listing {state.root}") from exc
        state.skip(directory.prefix.rstrip("/") or ".", f"{UNREADABLE_DIR}: {exc.strerror}")
        return False
    directory.pending = sorted(names, reverse=True)
    return True


def _entry(state: _Walk, parent: _Dir, raw_name: bytes) -> _Dir | None:
    """Look at one entry of ``parent``; returns the directory to list next, if it is one."""
    if not parent.raw_prefix and raw_name in state.ignore:
        return None
    name, encoding, name_flags = stored_name(raw_name, parent.encoding)
    if name in parent.taken:
        # Another raw name of this directory was stored as the same text (the UTF-8
        # and the GBK bytes of one name): this one is stored with its bytes escaped.
        name, name_flags = escaped_bytes(raw_name), ("name.collision", "name.escaped")
        encoding = parent.encoding
    parent.taken.add(name)
    path = parent.prefix + name
    raw_path = parent.raw_prefix + raw_name
    flags = tuple(dict.fromkeys(parent.flags + name_flags))
    try:
        st = os.stat(raw_name, dir_fd=parent.fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise os_error(exc, f"listing {state.root}") from exc
        state.skip(path, f"cannot stat: {exc.strerror}")
        return None
    if stat.S_ISLNK(st.st_mode):
        state.skip(path, "symlink, not followed")
        return None
    if stat.S_ISDIR(st.st_mode):
        if st.st_dev != state.root_dev:
            state.skip(path, "another file system mounted here, not entered")
            return None
        return _enter(state, parent, raw_name, (raw_path, path), (flags, encoding))
    if stat.S_ISREG(st.st_mode):
        if _extension(name) not in state.extensions:
            state.skip(path, "not a recording type")
            return None
        if st.st_nlink > 1:
            state.skip(path, f"hard links: {st.st_nlink} ({NO_HARD_LINKS}), {REFUSED}")
            return None
        state.raw[path] = raw_path
        state.listing.recordings.append(
            Recording(path=path, size=st.st_size, mtime=st.st_mtime, name_flags=flags))
        return None
    state.skip(path, "special file")
    return None


def _enter(state: _Walk, parent: _Dir, raw_name: bytes, where: tuple[bytes, str],
           names: tuple[tuple[str, ...], str | None]) -> _Dir | None:
    raw_path, path = where
    flags, encoding = names
    if parent.depth >= MAX_DEPTH:
        state.skip(path, TOO_DEEP)
        return None
    try:
        fd = os.open(raw_name, _DIR_FLAGS, dir_fd=parent.fd)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise os_error(exc, f"listing {state.root}") from exc
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since it was listed
            reason = "changed while listed (no longer a directory), not entered"
        else:
            reason = f"{UNREADABLE_DIR}: {exc.strerror}"
        state.skip(path, reason)
        return None
    directory = _Dir(fd, raw_path + b"/", path + "/", flags, encoding, parent.depth + 1)
    try:
        st = os.fstat(fd)
        if st.st_dev != state.root_dev:  # swapped for a mount since the scan
            state.skip(path, "another file system mounted here, not entered")
        elif (st.st_dev, st.st_ino) in state.seen:
            state.skip(path, f"directory loop: the same directory as "
                             f"{state.seen[(st.st_dev, st.st_ino)]}, not entered")
        else:
            state.seen[(st.st_dev, st.st_ino)] = path
            if _read_names(state, directory):
                return directory
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None
