"""Single-pass copy into the vault: bytes, digest, durability, and cleanup on failure."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from agent.errors import DeviceGoneError, IntegrityError, StoreError
from agent.ingest import copy_to_vault
from agent.vault import Vault, hash_file


class _DyingStream(io.RawIOBase):
    """A device stream that disappears after ``limit`` bytes, as an unplugged camera does."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit, self.pos = data, limit, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.limit:
            raise DeviceGoneError("device /dev/sdz1 vanished")
        chunk = self.data[self.pos:min(self.pos + n, self.limit)]
        self.pos += len(chunk)
        return chunk


def test_copy_hashes_and_writes_in_one_pass(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("clip-1")
    result = copy_to_vault(io.BytesIO(data), temp, chunk_size=64 * 1024, queue_chunks=4)
    digest = hashlib.sha256(data).hexdigest()
    assert result.sha256 == digest
    assert result.size == len(data)
    final = vault.commit(temp, digest)
    assert final == tmp_path / "vault" / "sha256" / digest[:2] / digest[2:4] / digest
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    assert not temp.exists()
    assert vault.verify(digest) == len(data)


def test_zero_length_copy(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("empty")
    result = copy_to_vault(io.BytesIO(b""), temp, chunk_size=65536, queue_chunks=2)
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert result.size == 0


def test_device_gone_mid_copy_leaves_no_partial_file(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("clip-2")
    with pytest.raises(DeviceGoneError, match="vanished"):
        copy_to_vault(_DyingStream(os.urandom(300_000), 200_000), temp, chunk_size=65536,
                      queue_chunks=2)
    assert not temp.exists()
    assert list((tmp_path / "vault" / "incoming").iterdir()) == []


def test_existing_temp_is_never_overwritten(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path("clip-3")
    temp.write_bytes(b"x")
    with pytest.raises(StoreError, match="cannot create"):
        copy_to_vault(io.BytesIO(b"abc"), temp, chunk_size=65536, queue_chunks=2)


def test_verify_detects_a_corrupted_vault_object(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    data = b"evidence" * 1000
    digest = hashlib.sha256(data).hexdigest()
    temp = vault.temp_path("c")
    temp.write_bytes(data)
    final = vault.commit(temp, digest)
    os.chmod(final, 0o644)
    with open(final, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    with pytest.raises(IntegrityError, match=f"vault object {digest} reads back as"):
        vault.verify(digest)


def test_commit_of_existing_object_drops_the_temp(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    data = b"same bytes"
    digest = hashlib.sha256(data).hexdigest()
    for name in ("a", "b"):
        temp = vault.temp_path(name)
        temp.write_bytes(data)
        vault.commit(temp, digest)
    assert list(vault.incoming.iterdir()) == []
    assert hash_file(vault.path_for(digest)) == (digest, len(data))


def test_reclaim_removes_partial_copies(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    (vault.incoming / "x.part").write_bytes(b"partial")
    assert vault.reclaim_incoming() == ["x.part"]
    assert list(vault.incoming.iterdir()) == []


def test_vault_refuses_names_that_are_not_digests(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    with pytest.raises(StoreError, match="not a SHA-256 hex digest"):
        vault.path_for("../../etc/passwd")


class _Trickle(io.RawIOBase):
    """A device stream that returns fewer bytes than asked, in uneven pieces."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.turn = data, 0, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.turn += 1
        size = min(n, (self.turn * 7919) % 70000 + 1)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 65535, 65536, 65537,
                                  3 * 65536 + 123, 1_000_003])
def test_direct_write_path_keeps_every_byte(tmp_path: Path, size: int) -> None:
    from agent import ingest

    data = os.urandom(size)
    vault = Vault(tmp_path / "vault")
    temp = vault.temp_path(f"c{size}")
    fd, direct = ingest._open_temp(temp)
    os.close(fd)
    temp.unlink()
    result = copy_to_vault(_Trickle(data), temp, chunk_size=65536, queue_chunks=3)
    assert result.size == size
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert temp.read_bytes() == data
    if not direct:
        pytest.skip("no O_DIRECT on this file system: the buffered path was tested")


@pytest.mark.parametrize("size", [0, 1, 4096, 4097, 4 * 1024 * 1024, 4 * 1024 * 1024 + 7,
                                  9 * 1024 * 1024 + 4095])
def test_verify_reads_from_disk_and_hashes_every_byte(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "clip.bin"
    path.write_bytes(data)
    assert hash_file(path, drop_cache=True) == (hashlib.sha256(data).hexdigest(), size)
    assert hash_file(path) == (hashlib.sha256(data).hexdigest(), size)


def test_commit_replaces_an_existing_object_that_cannot_be_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.vault as vault_mod

    vault = Vault(tmp_path / "vault")
    data = b"evidence bytes"
    digest = hashlib.sha256(data).hexdigest()
    first = vault.temp_path("a")
    first.write_bytes(data)
    stored = vault.commit(first, digest)
    real = vault_mod.hash_file

    def eio(path: Path, **kwargs: object) -> tuple[str, int]:
        if path == stored:
            raise StoreError(f"cannot read {path}: Input/output error")
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vault_mod, "hash_file", eio)
    second = vault.temp_path("b")
    second.write_bytes(data)
    asides: list[Path] = []
    assert vault.commit(second, digest, on_repair=asides.append) == stored
    (aside,) = asides
    assert aside.parent == tmp_path / "vault" / "corrupt" and aside.name.startswith(digest)
    assert stored.read_bytes() == data and not second.exists()
