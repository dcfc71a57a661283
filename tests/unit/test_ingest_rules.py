"""The single-pass copy at its edges: which side a failure is blamed on, what is left behind,
the direct-I/O path and its fallback, cancellation and progress.

The failures are injected where the system would produce them (a read or write that
returns an errno, a file system that refuses O_DIRECT with EINVAL); the bytes, digests
and files are real.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Cancelled, DeviceError, DeviceGoneError, StoreError
from agent.ingest import copy_to_vault

CHUNK = 64 * 1024


class _Failing(io.RawIOBase):
    """A device stream that fails with ``error`` after ``after`` bytes."""

    def __init__(self, data: bytes, after: int, error: BaseException) -> None:
        self.data, self.after, self.error, self.pos = data, after, error, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.after:
            raise self.error
        chunk = self.data[self.pos:min(self.pos + n, self.after)]
        self.pos += len(chunk)
        return chunk


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1,
                                  3 * CHUNK + 4096 + 17])
def test_every_size_is_copied_whole_through_the_direct_path(tmp_path: Path, size: int,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Rule: the vault copy holds exactly the device's bytes, whatever the file's size
    against the 4 KiB blocks of direct I/O, and is opened for direct I/O when it can be."""
    flags: list[int] = []
    real_open = os.open

    def spy(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".part"):
            flags.append(flag)
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    data = os.urandom(size)
    temp = tmp_path / "clip.part"
    result = copy_to_vault(io.BytesIO(data), temp, chunk_size=CHUNK, queue_chunks=2)
    assert (result.sha256, result.size) == (hashlib.sha256(data).hexdigest(), size)
    assert temp.read_bytes() == data
    assert flags and flags[0] & os.O_DIRECT
    assert temp.stat().st_mode & 0o777 == 0o600


def test_without_direct_io_the_copy_is_buffered_and_still_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: on a file system that refuses O_DIRECT (EINVAL) the copy is written through
    the page cache; a chunk size that is not whole 4 KiB blocks is copied whole too (its
    blocks are whole pages, so direct I/O is tried all the same)."""
    flags: list[int] = []
    real_open = os.open

    def refusing(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".part"):
            flags.append(flag)
            if flag & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    data = os.urandom(100_001)
    temp = tmp_path / "a.part"
    assert copy_to_vault(io.BytesIO(data), temp, chunk_size=CHUNK, queue_chunks=2).size == 100_001
    assert temp.read_bytes() == data
    assert [bool(f & os.O_DIRECT) for f in flags] == [True, False]
    flags.clear()
    odd = tmp_path / "b.part"
    copy_to_vault(io.BytesIO(data), odd, chunk_size=CHUNK + 1, queue_chunks=2)
    assert odd.read_bytes() == data
    assert [bool(f & os.O_DIRECT) for f in flags] == [True, False]


def test_a_vault_that_cannot_create_the_copy_says_so(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a temp file that cannot be created is the station's failure (StoreError), named."""
    real_open = os.open

    def denied(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".part"):
            raise OSError(errno.EACCES, "Permission denied")
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(StoreError) as err:
        copy_to_vault(io.BytesIO(b"x"), tmp_path / "c.part", chunk_size=CHUNK, queue_chunks=2)
    assert str(err.value) == f"cannot create {tmp_path / 'c.part'}: Permission denied"


def test_a_device_read_error_is_the_devices_and_leaves_nothing(tmp_path: Path) -> None:
    """Rule: a read that fails on the camera is a DeviceError (the clip is read again or
    quarantined), never the vault's, and the partial copy is removed."""
    data = os.urandom(3 * CHUNK)
    stream = _Failing(data, CHUNK + 5, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(DeviceError) as err:
        copy_to_vault(stream, tmp_path / "d.part", chunk_size=CHUNK, queue_chunks=2)
    assert not isinstance(err.value, DeviceGoneError)
    assert str(err.value) == "read failed: Input/output error"
    assert _leftovers(tmp_path) == []
    gone = _Failing(data, CHUNK, DeviceGoneError("camera unplugged"))
    with pytest.raises(DeviceGoneError, match="camera unplugged"):
        copy_to_vault(gone, tmp_path / "e.part", chunk_size=CHUNK, queue_chunks=2)
    assert _leftovers(tmp_path) == []


def test_a_vault_write_error_is_the_stations_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a write that fails on the station's disk (full) is a StoreError naming the copy
    and the cause, never blamed on the camera, and the partial copy is removed."""
    def full(_fd: int, _data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError) as err:
        copy_to_vault(io.BytesIO(os.urandom(2 * CHUNK)), tmp_path / "f.part",
                      chunk_size=CHUNK, queue_chunks=2)
    assert str(err.value) == "writing f.part into the vault failed: No space left on device"
    assert _leftovers(tmp_path) == []


def test_a_hashing_failure_is_raised_and_leaves_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: if the digest cannot be computed the copy is not kept."""
    from agent import ingest

    class Broken:
        def update(self, _chunk: bytes) -> None:
            raise MemoryError("no memory for the hash")

    monkeypatch.setattr(ingest.hashlib, "sha256", Broken)
    with pytest.raises(MemoryError):
        copy_to_vault(io.BytesIO(b"x" * 10), tmp_path / "g.part", chunk_size=CHUNK,
                      queue_chunks=2)
    assert _leftovers(tmp_path) == []


def test_a_stopping_station_cancels_the_copy_and_leaves_nothing(tmp_path: Path) -> None:
    """Rule: when the station stops, a copy in progress ends (Cancelled) without a partial."""
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        if done >= 2 * CHUNK:
            cancel.set()

    with pytest.raises(Cancelled):
        copy_to_vault(io.BytesIO(os.urandom(10 * CHUNK)), tmp_path / "h.part",
                      chunk_size=CHUNK, queue_chunks=2, cancel=cancel, progress=progress)
    assert seen == [CHUNK, 2 * CHUNK]
    assert _leftovers(tmp_path) == []


def test_progress_reports_the_bytes_read_so_far(tmp_path: Path) -> None:
    """Rule: the station's screen gets the running total after every block read."""
    seen: list[int] = []
    copy_to_vault(io.BytesIO(b"z" * (2 * CHUNK + 10)), tmp_path / "i.part", chunk_size=CHUNK,
                  queue_chunks=2, progress=seen.append)
    assert seen == [CHUNK, 2 * CHUNK, 2 * CHUNK + 10]


def test_the_copy_leaves_no_page_cache_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: after the copy is fsynced its cached pages are dropped, so the verify pass that
    follows reads the disk."""
    order: list[str] = []
    real_fsync, real_fadvise = os.fsync, os.posix_fadvise

    def fsync(fd: int) -> None:
        order.append("fsync")
        real_fsync(fd)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        order.append(f"fadvise {offset} {length} {advice}")
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    copy_to_vault(io.BytesIO(b"q" * 5000), tmp_path / "j.part", chunk_size=CHUNK,
                  queue_chunks=2)
    assert order == ["fsync", f"fadvise 0 0 {os.POSIX_FADV_DONTNEED}"]


def test_a_failed_fsync_of_the_copy_fails_the_copy(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a copy whose final fsync fails is not durable, so it is not a copy: StoreError,
    and the partial file is removed."""
    def failing(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(StoreError) as err:
        copy_to_vault(io.BytesIO(b"x" * 5000), tmp_path / "k.part", chunk_size=CHUNK,
                      queue_chunks=2)
    assert str(err.value) == "writing k.part into the vault failed: Input/output error"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("direct", [True, False])
def test_short_writes_are_continued_until_the_copy_is_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """Rule: a write the kernel takes only in part is continued; the copy is whole, with
    the vault's private mode, on the direct path and on the buffered one."""
    real_write, real_open = os.write, os.open

    def partial(fd: int, data: Any) -> int:
        return real_write(fd, data[:4096])  # a view: stays page aligned for O_DIRECT

    def opening(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if not direct and str(path).endswith(".part") and flag & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "write", partial)
    monkeypatch.setattr(os, "open", opening)
    data = os.urandom(3 * CHUNK + 1234)
    temp = tmp_path / "l.part"
    copy_to_vault(io.BytesIO(data), temp, chunk_size=CHUNK, queue_chunks=2)
    assert temp.read_bytes() == data
    assert temp.stat().st_mode & 0o777 == 0o600


def test_a_failing_vault_stops_reading_the_camera_at_once(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: once the vault cannot take the copy, the camera is not read any further (its
    bytes would go nowhere), and the failure is the vault's, even when the partial copy
    was already removed by someone else."""
    temp = tmp_path / "m.part"

    def full(_fd: int, _data: Any) -> int:
        temp.unlink(missing_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    stream = _Failing(os.urandom(100 * CHUNK), 100 * CHUNK, AssertionError("not reached"))
    with pytest.raises(StoreError, match="No space left on device"):
        copy_to_vault(stream, temp, chunk_size=CHUNK, queue_chunks=2)
    assert stream.pos <= 8 * CHUNK, f"read {stream.pos // CHUNK} chunks after the vault failed"


def test_a_cancelled_copy_says_why(tmp_path: Path) -> None:
    """Rule: the copy a stopping station cancels says so (it is copied again next dock)."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled) as err:
        copy_to_vault(io.BytesIO(b"x"), tmp_path / "n.part", chunk_size=CHUNK, queue_chunks=2,
                      cancel=cancel)
    assert str(err.value) == "copy cancelled: the agent is stopping"


class _ReadOnly:
    """A device stream with read() only (no readinto), as some drivers' streams are."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.inner.read(n)


class _NoReadinto(io.BytesIO):
    def readinto(self, _buffer: Any) -> int:
        raise io.UnsupportedOperation("readinto")


@pytest.mark.parametrize("make", [_ReadOnly, _NoReadinto])
def test_a_stream_without_readinto_is_copied_whole(tmp_path: Path, make: Any) -> None:
    """Rule: a camera stream that only has read() (or refuses readinto) is copied byte for
    byte all the same."""
    data = os.urandom(3 * CHUNK + 17)
    temp = tmp_path / "r.part"
    result = copy_to_vault(make(data), temp, chunk_size=CHUNK, queue_chunks=2)
    assert (result.sha256, result.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert temp.read_bytes() == data


def test_a_read_error_keeps_the_cameras_error_as_its_cause(tmp_path: Path) -> None:
    """Rule: a failed read says what the camera's driver reported: the system's error is
    kept as the cause of the DeviceError (the log shows both)."""
    cause = OSError(errno.EIO, "Input/output error")
    with pytest.raises(DeviceError) as err:
        copy_to_vault(_Failing(os.urandom(2 * CHUNK), CHUNK, cause), tmp_path / "c.part",
                      chunk_size=CHUNK, queue_chunks=2)
    assert err.value.__cause__ is cause


def test_an_unexpected_failure_of_the_stream_is_never_a_copy(tmp_path: Path) -> None:
    """Rule: a stream failing in a way nobody expected (a driver defect) fails the copy
    with that error and leaves nothing: a partial copy is never taken for a whole one."""
    defect = ValueError("driver defect")
    with pytest.raises(ValueError) as err:
        copy_to_vault(_Failing(os.urandom(2 * CHUNK), CHUNK, defect), tmp_path / "v.part",
                      chunk_size=CHUNK, queue_chunks=2)
    assert err.value is defect
    assert _leftovers(tmp_path) == []
