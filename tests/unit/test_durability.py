"""Durability seen from the system calls: what a power cut at the dock could lose.

A SIGKILL keeps the page cache, so the crash tests cannot tell a write that was
fsynced from one that was not.  These tests record the fsync / rename / directory
fsync calls (tests/support/syscalls.py) of the real code paths — a dock's copy into
the vault through a running station, the vault's commit, write_atomic — and check
their order, and the store's SQLite settings that make a commit durable.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Config
from agent.durable import makedirs_durable, remove_stale_temps, write_atomic
from agent.ingest import copy_to_vault
from agent.store import Store
from agent.vault import Vault
from tests.support.stations import camera, running_station
from tests.support.syscalls import Call, data_fsync, dir_fsync, renamed, spying


def test_write_atomic_fsyncs_data_then_renames_then_fsyncs_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a file written atomically is on disk, whole, under its name, before it returns."""
    target = tmp_path / "keys" / "station.key"
    target.parent.mkdir()
    with spying(monkeypatch) as spy:
        write_atomic(target, b"secret bytes", mode=0o600)
    rename = spy.index(lambda c: c.what == "replace" and c.target == str(target))
    temp = spy.calls[rename].path
    assert Path(temp).parent == target.parent and temp != str(target)
    synced = spy.index(data_fsync(temp))
    dir_synced = spy.index(dir_fsync(target.parent), after=rename)
    assert synced < rename < dir_synced, spy.describe()
    assert target.read_bytes() == b"secret bytes"
    assert target.stat().st_mode & 0o777 == 0o600


def test_makedirs_durable_fsyncs_every_parent_that_gained_a_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a new vault directory survives a power cut (its parent's entry is flushed)."""
    with spying(monkeypatch) as spy:
        makedirs_durable(tmp_path / "a" / "b" / "c")
    synced = [c.path for c in spy.calls if c.what == "fsync" and c.is_dir]
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_removing_stale_temps_is_flushed(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: leftovers of an interrupted write are removed for good, and only those."""
    (tmp_path / ".manifest.json.tmp-1-ab").write_bytes(b"half")
    (tmp_path / "manifest.json").write_bytes(b"whole")
    (tmp_path / ".hidden").write_bytes(b"not a temp")
    with spying(monkeypatch) as spy:
        assert remove_stale_temps(tmp_path) == [".manifest.json.tmp-1-ab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "manifest.json"]
    spy.index(dir_fsync(tmp_path))
    assert remove_stale_temps(tmp_path / "missing") == []


def test_copy_into_the_vault_is_fsynced_renamed_and_its_directory_fsynced_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a vault object's bytes reach the disk before its name, its name before commit returns."""
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("clip-1")
    final = vault.path_for(digest)
    with spying(monkeypatch) as spy:
        copy_to_vault(io.BytesIO(data), temp, chunk_size=64 * 1024, queue_chunks=2)
        vault.commit(temp, digest)
    synced = spy.index(data_fsync(temp))
    rename = spy.index(renamed(temp, final), after=synced)
    spy.index(dir_fsync(final.parent), after=rename)
    spy.index(dir_fsync(vault.incoming), after=rename)
    assert final.read_bytes() == data


def test_removing_a_vault_object_is_flushed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a purged object stays purged after a power cut."""
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("c")
    temp.write_bytes(b"clip")
    digest = hashlib.sha256(b"clip").hexdigest()
    vault.commit(temp, digest)
    with spying(monkeypatch) as spy:
        vault.remove(digest)
    assert not vault.has(digest)
    spy.index(dir_fsync(vault.path_for(digest).parent))


def _store_pragmas(store: Store) -> tuple[str, int]:
    mode = store.query_one("PRAGMA journal_mode")
    sync = store.query_one("PRAGMA synchronous")
    assert mode is not None and sync is not None
    return str(mode[0]).lower(), int(sync[0])


def test_the_store_commits_to_disk_before_a_commit_returns(tmp_path: Path) -> None:
    """Rule: a recorded state change survives a power cut (WAL with synchronous = FULL)."""
    store = Store(tmp_path / "station.db", station_id="ST-0001")
    assert _store_pragmas(store) == ("wal", 2)  # 2 = FULL: the WAL is fsynced at each commit
    store.close()
    reopened = Store(tmp_path / "station.db", station_id="ST-0001")
    assert _store_pragmas(reopened) == ("wal", 2)
    reopened.close()


def _first_sql(spy_calls: list[Call], *needles: str, after: int) -> int:
    for i in range(after + 1, len(spy_calls)):
        call = spy_calls[i]
        if call.what == "sql" and all(n in call.path for n in needles):
            return i
    raise AssertionError(f"no statement with {needles} after #{after}")


def test_a_docked_clip_is_durable_in_the_vault_before_the_store_says_it_is_copied(
        station_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the store never records a clip whose vault copy a power cut could still lose.

    For every clip of a real dock: its bytes are fsynced, then renamed to their
    digest, then that directory is fsynced, then read back from the disk (the
    verify pass), and only then does the store name the digest and record the
    clip ``copied`` (committed with synchronous = FULL).
    """
    config = station_config()
    camera(config, clips=2, serial="SIMDUR1")
    with running_station(config) as station:
        assert station.store is not None
        assert _store_pragmas(station.store) == ("wal", 2)
        with spying(monkeypatch) as spy:
            spy.trace(station.store._conn)
            summary = station.run_once()
        assert summary.ok, summary
        rows = station.store.clips()
    assert len(rows) == 2
    vault = Vault(config.data_dir / "vault")
    for row in rows:
        digest, clip_id = row["sha256"], row["clip_id"]
        temp = vault.temp_path(clip_id)
        final = vault.path_for(digest)
        synced = spy.index(data_fsync(temp))
        rename = spy.index(renamed(temp, final), after=synced)
        dir_synced = spy.index(dir_fsync(final.parent), after=rename)
        read_back = spy.index(lambda c, f=final: c.what == "open" and c.path == str(f)
                              and not c.flags & (os.O_WRONLY | os.O_RDWR), after=rename)
        named = _first_sql(spy.calls, digest, after=-1)
        copied = _first_sql(spy.calls, clip_id, "'copied'", after=-1)
        committed = _first_sql(spy.calls, "COMMIT", after=copied)
        assert dir_synced < named, spy.describe()
        assert read_back < named, "the vault copy was not read back before it was recorded"
        assert named <= copied < committed


# --- write_atomic and makedirs_durable at their edges ---------------------------------------

def test_write_atomic_creates_its_temp_file_with_the_final_mode_and_safe_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a key written atomically is never readable by others, not even for a moment:
    its temp file is created new (O_EXCL, never through a planted link, not inherited by
    child processes) with the final mode already."""
    created: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            created.append((flags, mode))
        return real_open(path, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    write_atomic(tmp_path / "station.key", b"k", mode=0o600)
    ((flags, mode),) = created
    assert mode == 0o600
    for flag in (os.O_CREAT, os.O_EXCL, os.O_NOFOLLOW, os.O_CLOEXEC, os.O_WRONLY):
        assert flags & flag == flag, flag
    write_atomic(tmp_path / "status.json", b"{}")
    assert (tmp_path / "status.json").stat().st_mode & 0o777 == 0o644


def test_write_atomic_writes_everything_even_when_the_kernel_takes_it_in_pieces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a short write is continued until every byte is in the file."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    write_atomic(tmp_path / "f", b"0123456789" * 10)
    assert (tmp_path / "f").read_bytes() == b"0123456789" * 10


@pytest.mark.parametrize("cleanup_fails", [False, True])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_fails: bool) -> None:
    """Rule: a write that fails (disk full) leaves the previous file whole, removes its temp
    file, and raises the error that made it fail, even if the clean-up fails too."""
    import errno as errno_mod

    target = tmp_path / "manifest.json"
    target.write_bytes(b"previous")

    def full(_fd: int, _data: object) -> int:
        raise OSError(errno_mod.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    if cleanup_fails:
        def read_only(_path: object) -> None:
            raise OSError(errno_mod.EROFS, "Read-only file system")
        monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(OSError) as err:
        write_atomic(target, b"new")
    assert err.value.errno == errno_mod.ENOSPC
    assert target.read_bytes() == b"previous"
    if not cleanup_fails:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_fsync_dir_refuses_what_is_not_a_directory(tmp_path: Path) -> None:
    """Rule: fsync_dir flushes a directory, and says so when handed a file."""
    from agent.durable import fsync_dir

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")
    fsync_dir(tmp_path)


def test_makedirs_durable_makes_private_directories_and_tolerates_a_racing_creator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: station directories are made rwxr-x--- (0750) unless asked otherwise, and a
    directory another thread creates at the same moment is no error."""
    old = os.umask(0o022)
    try:
        made = makedirs_durable(tmp_path / "data" / "vault")
        assert made == tmp_path / "data" / "vault"
        assert (tmp_path / "data").stat().st_mode & 0o777 == 0o750
        assert made.stat().st_mode & 0o777 == 0o750
        makedirs_durable(tmp_path / "keys", mode=0o700)
        assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
        real_mkdir = os.mkdir

        def raced(path: object, mode: int = 0o777, **kwargs: object) -> None:
            real_mkdir(path, mode)  # type: ignore[arg-type]  # the other thread won
            raise FileExistsError(17, "File exists")

        monkeypatch.setattr(os, "mkdir", raced)
        assert makedirs_durable(tmp_path / "raced").is_dir()
    finally:
        os.umask(old)


def test_removing_stale_temps_tolerates_one_removed_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a stale temp file removed by someone else meanwhile is no error."""
    (tmp_path / ".a.tmp-1-x").write_bytes(b"")
    real_unlink = os.unlink

    def gone(path: object, *args: object, **kwargs: object) -> None:
        real_unlink(path)  # type: ignore[arg-type]
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "unlink", gone)
    assert remove_stale_temps(tmp_path) == [".a.tmp-1-x"]
