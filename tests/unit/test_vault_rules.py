"""The vault's rules at the edges: an object that exists already, a damaged one, reading the
disk rather than the page cache, what a crash leaves in incoming/, and every failure named.

The cache rules are seen through the calls the vault makes (the flags of its opens, its
posix_fadvise), since both ways of reading return the same bytes; a file system without
O_DIRECT is simulated by refusing O_DIRECT with EINVAL, as such a file system does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import IntegrityError, StoreError
from agent.vault import VERIFY_BLOCK, Vault, disk_usage, hash_file


def _put(vault: Vault, data: bytes, name: str = "clip") -> str:
    temp = vault.temp_path(name)
    temp.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    vault.commit(temp, digest)
    return digest


class _Calls:
    """The flags of every os.open of ``path`` and every posix_fadvise advice, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path, *,
                 direct_refused: bool = False) -> None:
        self.opens: list[int] = []
        self.advice: list[int] = []
        self.ranges: list[tuple[int, int, int]] = []  # (offset, length, advice)
        real_open, real_fadvise = os.open, os.posix_fadvise

        def spy_open(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if os.fspath(name) == os.fspath(path):
                self.opens.append(flags)
                if direct_refused and flags & os.O_DIRECT:
                    raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(name, flags, *args, **kwargs)

        def spy_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
            self.advice.append(advice)
            self.ranges.append((offset, length, advice))
            real_fadvise(fd, offset, length, advice)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "posix_fadvise", spy_fadvise)


def test_committing_bytes_the_vault_holds_keeps_the_object_and_drops_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the same bytes committed again (another clip, an interrupted run) leave the
    stored object as it is, after reading it back from the disk (not the page cache), and
    remove the new copy."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"the same recording")
    before = vault.path_for(digest).stat()
    temp = vault.temp_path("second")
    temp.write_bytes(b"the same recording")
    repaired: list[Path] = []
    calls = _Calls(monkeypatch, vault.path_for(digest))
    assert vault.commit(temp, digest, on_repair=repaired.append) == vault.path_for(digest)
    assert calls.opens and all(flags & os.O_DIRECT for flags in calls.opens), calls.opens
    assert not temp.exists() and repaired == []
    after = vault.path_for(digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (tmp_path / "vault" / "corrupt").exists()


def test_a_damaged_object_is_replaced_by_the_fresh_copy_and_kept_aside(tmp_path: Path) -> None:
    """Rule: when a stored object no longer holds its bytes, the fresh copy replaces it and
    the damaged file is kept under corrupt/ (never deleted: an auditor may ask)."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"good bytes of the recording")
    final = vault.path_for(digest)
    os.chmod(final, 0o644)
    final.write_bytes(b"bit rot of the recording!!")
    temp = vault.temp_path("again")
    temp.write_bytes(b"good bytes of the recording")
    repaired: list[Path] = []
    vault.commit(temp, digest, on_repair=repaired.append)
    assert final.read_bytes() == b"good bytes of the recording"
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    (aside,) = repaired
    assert aside.parent == tmp_path / "vault" / "corrupt"
    assert aside.name.startswith(digest + ".")
    assert aside.read_bytes() == b"bit rot of the recording!!"
    assert vault.verify(digest) == len(b"good bytes of the recording")


def test_an_unreadable_object_counts_as_damaged(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a stored object that cannot be read back (a failing disk) is replaced by the
    fresh copy, like a damaged one, and kept aside."""
    from agent import vault as vault_mod

    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"recording")
    real = vault_mod.hash_file

    def unreadable(path: Path, **kwargs: Any) -> tuple[str, int]:
        if path == vault.path_for(digest):
            raise StoreError(f"cannot read {path}: Input/output error")
        return real(path, **kwargs)

    monkeypatch.setattr(vault_mod, "hash_file", unreadable)
    temp = vault.temp_path("again")
    temp.write_bytes(b"recording")
    repaired: list[Path] = []
    vault.commit(temp, digest, on_repair=repaired.append)
    assert len(repaired) == 1 and repaired[0].read_bytes() == b"recording"
    assert not temp.exists()


def test_verify_reads_the_disk_not_the_page_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the verify pass proves what the disk holds: it reads with O_DIRECT."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, os.urandom(3 * 4096 + 5))
    calls = _Calls(monkeypatch, vault.path_for(digest))
    assert vault.verify(digest) == 3 * 4096 + 5
    assert calls.opens and all(flags & os.O_DIRECT for flags in calls.opens), calls.opens


def test_without_o_direct_verify_drops_the_cached_pages_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: on a file system without O_DIRECT, the file's cached pages are dropped before
    the verify pass reads it (and after), so it still reads the disk."""
    vault = Vault(tmp_path / "vault")
    data = os.urandom(10_000)
    digest = _put(vault, data)
    calls = _Calls(monkeypatch, vault.path_for(digest), direct_refused=True)
    assert vault.verify(digest) == len(data)
    assert calls.opens[0] & os.O_DIRECT and not calls.opens[-1] & os.O_DIRECT
    # The whole file (offset 0, length 0: to its end), before and after the read.
    assert calls.ranges[0] == (0, 0, os.POSIX_FADV_DONTNEED)
    assert calls.ranges[-1] == (0, 0, os.POSIX_FADV_DONTNEED)


def test_hashing_for_a_listing_may_use_the_page_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: hash_file without drop_cache reads through the page cache, dropping nothing."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 9000)
    calls = _Calls(monkeypatch, path)
    assert hash_file(path) == (hashlib.sha256(b"x" * 9000).hexdigest(), 9000)
    assert hash_file(path, block=VERIFY_BLOCK) == (hashlib.sha256(b"x" * 9000).hexdigest(), 9000)
    assert not any(flags & os.O_DIRECT for flags in calls.opens)
    assert os.POSIX_FADV_DONTNEED not in calls.advice


def test_any_block_size_reads_the_disk_directly_and_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the verify pass reads with O_DIRECT whatever block size is asked for (blocks
    are whole pages), and hashes every byte."""
    path = tmp_path / "f"
    data = os.urandom(20_000)
    path.write_bytes(data)
    calls = _Calls(monkeypatch, path)
    for block in (4096 * 3 + 1, 4096 * 3):
        assert hash_file(path, drop_cache=True, block=block) == (
            hashlib.sha256(data).hexdigest(), 20_000)
        assert calls.opens[-1] & os.O_DIRECT


def test_failures_of_the_vault_disk_are_named(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a vault operation that fails says which file and what the system said."""
    vault = Vault(tmp_path / "vault")
    missing = "ab" * 32
    with pytest.raises(StoreError) as err:
        vault.verify(missing)
    assert str(err.value) == (f"cannot open {vault.path_for(missing)}: No such file or "
                              "directory")
    with pytest.raises(StoreError) as err:
        hash_file(tmp_path / "nothing")
    assert str(err.value) == f"cannot open {tmp_path / 'nothing'}: No such file or directory"
    with pytest.raises(StoreError) as err:
        vault.commit(vault.temp_path("never-written"), missing)
    assert str(err.value) == ("cannot move never-written.part into the vault: No such file or "
                              "directory")
    digest = _put(vault, b"to purge")

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(StoreError) as err:
        vault.remove(digest)
    assert str(err.value) == f"cannot remove vault object {digest}: Operation not permitted"


def test_a_read_error_while_verifying_is_named(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a disk read error during the verify pass is a StoreError naming the object."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"z" * 5000)

    def failing(*_args: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(StoreError) as err:
        vault.verify(digest)
    assert str(err.value) == f"cannot read {vault.path_for(digest)}: Input/output error"
    monkeypatch.setattr(os, "read", failing)
    with pytest.raises(StoreError) as err:
        hash_file(vault.path_for(digest))
    assert str(err.value) == f"cannot read {vault.path_for(digest)}: Input/output error"


def test_a_damaged_object_fails_verification_naming_both_digests(tmp_path: Path) -> None:
    """Rule: an object whose bytes changed is an IntegrityError naming what it should be and
    what it is."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"original")
    path = vault.path_for(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"changed!")
    with pytest.raises(IntegrityError) as err:
        vault.verify(digest)
    assert str(err.value) == (f"vault object {digest} reads back as "
                              f"{hashlib.sha256(b'changed!').hexdigest()}")


def test_restart_removes_every_partial_copy_without_following_links(tmp_path: Path) -> None:
    """Rule: what a crash left in incoming/ (files, directories, links) is removed at start,
    and a link there is removed itself: what it points to is never touched."""
    vault = Vault(tmp_path / "vault")
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "evidence.mp4").write_bytes(b"not the vault's")
    (vault.incoming / "a.part").write_bytes(b"half")
    (vault.incoming / "odd").mkdir()
    (vault.incoming / "odd" / "inside").write_bytes(b"x")
    (vault.incoming / "link").symlink_to(outside / "keep")
    assert vault.reclaim_incoming() == ["a.part", "link", "odd"]
    assert list(vault.incoming.iterdir()) == []
    assert (outside / "keep" / "evidence.mp4").read_bytes() == b"not the vault's"
    assert vault.reclaim_incoming() == []


def test_disk_usage_reports_the_file_systems_free_and_total_bytes(tmp_path: Path) -> None:
    """Rule: the station reports free and total bytes of the vault's disk as statvfs has them."""
    st = os.statvfs(tmp_path)
    usage = disk_usage(tmp_path)
    assert usage["total_bytes"] == st.f_blocks * st.f_frsize
    assert abs(usage["free_bytes"] - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert Vault(tmp_path / "vault").free_bytes() > 0


@pytest.mark.parametrize("drop_cache", [True, False])
def test_a_file_longer_than_the_read_ahead_is_hashed_whole(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           drop_cache: bool) -> None:
    """Rule: the digest and size of a file many blocks long (more blocks than are read
    ahead, so each buffer is reused) are those of every byte, direct or buffered."""
    from agent.vault import READ_AHEAD_BLOCKS

    data = os.urandom((3 * READ_AHEAD_BLOCKS + 1) * 4096 + 7)
    path = tmp_path / "object"
    path.write_bytes(data)
    calls = _Calls(monkeypatch, path)
    assert hash_file(path, drop_cache=drop_cache, block=4096) == (
        hashlib.sha256(data).hexdigest(), len(data))
    assert bool(calls.opens[-1] & os.O_DIRECT) == drop_cache


def test_a_vault_that_cannot_be_created_says_where_and_why(tmp_path: Path) -> None:
    """Rule: a vault directory that cannot be made (a file in the way) is refused naming
    the place and the system's reason."""
    (tmp_path / "blocked").write_bytes(b"")
    with pytest.raises(StoreError) as err:
        Vault(tmp_path / "blocked" / "vault")
    assert str(err.value) == (f"cannot create the vault under {tmp_path / 'blocked' / 'vault'}"
                              ": Not a directory")


BLOCK = 64 * 1024  # the budget's smallest block (blockbudget.MIN_BLOCK)


def _budget(depth: int = 4) -> Any:
    from agent.blockbudget import BlockBudget

    return BlockBudget(BLOCK * depth * 4, max_block=BLOCK, depth=depth)


def test_the_vaults_reads_take_blocks_from_its_budget_and_give_them_all_back(
        tmp_path: Path) -> None:
    """Rule: verifying an object and checking one already held read with blocks of the
    vault's one budget (which bounds the memory of every camera's copy and verify
    together), and every block is given back."""
    budget = _budget()
    vault = Vault(tmp_path / "vault", budget=budget)
    data = os.urandom(10 * BLOCK + 5)
    digest = _put(vault, data)
    assert vault.verify(digest) == len(data)
    assert budget.peak > 0 and budget.held == 0
    again = _budget()
    vault.budget = again
    _put(vault, data, name="again")  # the object is held: the commit reads it back
    assert again.peak > 0 and again.held == 0


def test_a_read_error_mid_file_gives_every_block_back(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a read error part way through a verify is named, and every block the verify
    took (those hashed and the one being filled) goes back to the budget: a failing disk
    cannot starve the other cameras of memory."""
    budget = _budget()
    vault = Vault(tmp_path / "vault", budget=budget)
    digest = _put(vault, os.urandom(32 * BLOCK))
    real = os.preadv
    assert budget.block_size() == BLOCK  # 32 reads: the error comes with blocks read ahead
    reads: list[int] = []

    def failing_late(fd: int, buffers: Any, offset: int) -> int:
        reads.append(offset)
        if len(reads) > 6:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing_late)
    with pytest.raises(StoreError, match="Input/output error"):
        vault.verify(digest)
    assert budget.held == 0


def test_short_reads_are_continued_until_the_block_is_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a read that returns fewer bytes than asked (a disk or file system may) is
    continued at the right offset: the digest is that of every byte, in order."""
    data = os.urandom(10 * 4096 + 123)
    path = tmp_path / "object"
    path.write_bytes(data)
    real = os.preadv

    def short(fd: int, buffers: Any, offset: int) -> int:
        (view,) = buffers
        with memoryview(view)[:1000] as part:  # at most 1000 bytes a call
            return real(fd, [part], offset)

    monkeypatch.setattr(os, "preadv", short)
    assert hash_file(path, drop_cache=False, block=4096) == (
        hashlib.sha256(data).hexdigest(), len(data))


def test_no_child_process_inherits_an_open_vault_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the vault opens objects close-on-exec, so the media probe's child processes
    (started while other clips are read) never hold an evidence file open."""
    vault = Vault(tmp_path / "vault")
    digest = _put(vault, b"q" * 9000)
    calls = _Calls(monkeypatch, vault.path_for(digest))
    vault.verify(digest)
    hash_file(vault.path_for(digest))
    assert len(calls.opens) == 2
    assert all(flags & os.O_CLOEXEC for flags in calls.opens)
