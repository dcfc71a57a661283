"""The station's identity files, and how a set of them is replaced all or nothing.

Layout of ``<data_dir>/keys/`` (directory 0700)::

    station.key            the Ed25519 signing key (0600)
    station.pem            its certificate, then the intermediate CA certificates
    tls.key / tls.pem      the ECDSA P-256 TLS client key (0600) and certificate + chain
    ca.pem                 the platform CA certificates (EST /cacerts): trust anchors
    archive/<keyid>.key    signing keys replaced by ``keys rotate`` (0600), kept so
    archive/<keyid>.pem    the past stays verifiable, and their certificates

Enrolment, renewal and rotation change several of these files together; a
crash must never leave a new certificate beside the old chain, or a rotated
log beside the old key.  ``stage`` writes every new file durably into
``.pending/`` and then a journal naming them; ``Pending.apply`` renames
them into place and removes the journal.  ``recover`` (run before the files
are read) finishes an applied change or throws away an unfinished one:

- a journal without a condition is a committed change: apply it again
  (renames of files already moved are skipped);
- a journal whose change is a key rotation applies only if the custody log
  holds that rotation (the store transaction is the commit point); otherwise
  the rotation never happened and the staged files are deleted;
- staged files without a journal are deleted.

Names in the journal are checked against the layout: nothing outside
``keys/`` is ever renamed, whatever the journal says.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.durable import fsync_dir, makedirs_durable, write_atomic
from agent.errors import ConfigError, StoreError

__all__ = ["KeyFiles", "NotRegularFile", "Pending", "data_dir_lock", "open_regular", "recover",
           "stage"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"(station\.key|station\.pem|tls\.key|tls\.pem|ca\.pem|"
                   r"archive/[0-9a-f]{64}\.(?:key|pem))")
_JOURNAL = "commit.json"
_PRIVATE = 0o600
_PUBLIC = 0o644


@dataclass(frozen=True)
class KeyFiles:
    """Paths of the identity files of one data directory."""

    dir: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> KeyFiles:
        return cls(Path(data_dir) / "keys")

    @property
    def station_key(self) -> Path:
        return self.dir / "station.key"

    @property
    def station_cert(self) -> Path:
        return self.dir / "station.pem"

    @property
    def tls_key(self) -> Path:
        return self.dir / "tls.key"

    @property
    def tls_cert(self) -> Path:
        return self.dir / "tls.pem"

    @property
    def ca_bundle(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def archive(self) -> Path:
        return self.dir / "archive"

    def archived_key(self, keyid: str) -> Path:
        return self.archive / f"{keyid}.key"

    def archived_cert(self, keyid: str) -> Path:
        return self.archive / f"{keyid}.pem"

    @property
    def pending(self) -> Path:
        return self.dir / ".pending"


class NotRegularFile(OSError):
    """A path that is a directory, a device, a FIFO...: identity files are regular files."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` open for reading: a regular file, a final symbolic link not followed.

    Raises OSError (NotRegularFile for anything but a regular file); the mode
    is checked on the open descriptor, so it is the mode of what is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _staged_name(name: str) -> str:
    return name.replace("/", "--")


@dataclass(frozen=True)
class Pending:
    """A staged change: ``apply`` puts it in place (idempotent)."""

    files: KeyFiles
    names: tuple[str, ...]

    def apply(self) -> None:
        for name in self.names:
            staged = self.files.pending / _staged_name(name)
            target = self.files.dir / name
            if not staged.exists():
                continue  # moved before a crash
            if target.parent != self.files.dir:
                makedirs_durable(target.parent, mode=0o700)
            os.replace(staged, target)
            fsync_dir(target.parent)
        (self.files.pending / _JOURNAL).unlink(missing_ok=True)
        _discard(self.files)  # the empty staging directory (or leftovers of write_atomic)
        log.info("identity files replaced: %s", ", ".join(self.names))


def stage(files: KeyFiles, changes: Mapping[str, bytes], *,
          rotation_to: str | None = None) -> Pending:
    """Write ``changes`` (name -> bytes; ``*.key`` files 0600) durably, then the journal.

    ``rotation_to`` makes the change conditional on a ``key.rotated`` entry
    for that keyid in the custody log (see the module docstring).
    """
    for name in changes:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an identity file name")
    makedirs_durable(files.dir, mode=0o700)
    _discard(files)
    files.pending.mkdir(mode=0o700)
    fsync_dir(files.dir)
    for name, data in changes.items():
        mode = _PRIVATE if name.endswith(".key") else _PUBLIC
        write_atomic(files.pending / _staged_name(name), data, mode=mode)
    journal = {"files": sorted(changes), "rotation_to": rotation_to}
    write_atomic(files.pending / _JOURNAL, json.dumps(journal).encode(), mode=_PRIVATE)
    return Pending(files, tuple(sorted(changes)))


def recover(files: KeyFiles, rotated_to: Callable[[str], bool] | None = None) -> str | None:
    """Finish or discard a change a crash interrupted; returns what was done, or None.

    ``rotated_to(keyid)`` answers whether the custody log holds a rotation
    to ``keyid``; without it a pending rotation cannot be decided and is left
    alone (ConfigError: the caller cannot use the identity files yet).
    """
    # An enrolment cut short leaves its private request directory (a TLS key) behind.
    for leftover in files.dir.glob(".enroll-*") if files.dir.is_dir() else []:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
    if not files.pending.is_dir():
        return None
    journal_path = files.pending / _JOURNAL
    try:
        journal = json.loads(journal_path.read_bytes())
    except FileNotFoundError:
        _discard(files)
        return "discarded an unfinished change (no journal)"
    except (OSError, ValueError) as exc:
        raise StoreError(f"{journal_path} cannot be read ({exc}); move {files.pending} "
                         "aside and check the identity files by hand") from exc
    names = journal.get("files") if isinstance(journal, dict) else None
    if not isinstance(names, list) or not all(
            isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        raise StoreError(f"{journal_path} names files outside the identity layout; move "
                         f"{files.pending} aside and check the identity files by hand")
    rotation_to = journal.get("rotation_to")
    if isinstance(rotation_to, str):
        if rotated_to is None:
            raise ConfigError(f"a key rotation to {rotation_to} was interrupted; start the "
                              "agent (or run `bwc-agent keys rotate` again) to finish it")
        if not rotated_to(rotation_to):
            _discard(files)
            log.warning("discarded an interrupted key rotation to %s: the custody log does "
                        "not hold it", rotation_to)
            return f"discarded the interrupted rotation to {rotation_to}"
    Pending(files, tuple(names)).apply()
    log.warning("finished an interrupted change of the identity files: %s", ", ".join(names))
    return f"finished the change of {', '.join(names)}"


def _discard(files: KeyFiles) -> None:
    if files.pending.is_dir() and not files.pending.is_symlink():
        shutil.rmtree(files.pending)
        fsync_dir(files.dir)
    elif files.pending.is_symlink():
        files.pending.unlink()


@contextlib.contextmanager
def data_dir_lock(data_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``<data_dir>/agent.lock`` as the daemon does: identity changes need it stopped."""
    path = Path(data_dir) / "agent.lock"
    try:
        makedirs_durable(data_dir, mode=0o750)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"bwc-agent is running on {data_dir} (it holds {path}); stop "
                             "it first (systemctl stop bwc-agent): the station's identity "
                             "is changed only while the daemon is stopped") from None
        yield
    finally:
        os.close(fd)
