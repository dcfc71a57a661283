"""Rules of the verifier's small parts an auditor meets through every finding: what it takes
for a bundle, how it reads a file below a bundle or data directory (no link followed, no
FIFO waited on, reads bounded also for a file that grows, read errors named, clips hashed
whole, an interruption let through), and the words of the ``log-link`` findings that tie a
clip's manifest to its ``clip.sealed`` entry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import random
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.verify import _is_bundle
from agent.verify.checks import seal_link_problems
from agent.verify.files import (
    _HASH_BLOCK,
    LIMITS,
    MiB,
    Unreadable,
    _read_fd,
    hash_beneath,
    hash_fd,
    hash_file,
    open_beneath,
    open_file,
    read_beneath,
    read_file,
)

ROOT = Path(__file__).resolve().parents[2]

M1, M2 = "a" * 64, "b" * 64
C1, C2 = "c" * 64, "d" * 64


def _sealed(seq: int, **body: object) -> dict[str, object]:
    return {"kind": "clip.sealed", "seq": seq, "body": body}


def test_a_sealed_entry_naming_another_manifest_or_other_bytes_is_named_word_for_word() -> None:
    """Rule: a clip.sealed entry must name this manifest's SHA-256 and the clip's; each
    difference is one log-link finding saying the entry's seq and both digests."""
    assert seal_link_problems([_sealed(7, manifest_sha256=M1, sha256=C1)], M2, C2) == [
        f"log-link: clip.sealed (seq 7) records manifest SHA-256 {M1}, this manifest's is {M2}",
        f"log-link: clip.sealed (seq 7) records clip SHA-256 {C1}, the manifest says {C2}",
    ]


@pytest.mark.parametrize(("body", "claimed"), [
    ({"manifest_sha256": M1, "sha256": C1}, C1),    # the same bytes
    ({"manifest_sha256": M1}, C1),                  # an entry that does not say (older format)
    ({"manifest_sha256": M1, "sha256": C2}, None),  # a manifest that does not say
])
def test_a_sealed_entry_agreeing_or_silent_on_the_bytes_is_no_finding(
        body: dict[str, object], claimed: str | None) -> None:
    """Rule: no log-link finding when the entry and the manifest agree on the clip's
    SHA-256, or when either does not state it."""
    assert seal_link_problems([_sealed(3, **body)], M1, claimed) == []


def test_a_clip_without_a_sealed_entry_naming_a_manifest_is_named() -> None:
    """Rule: only a clip.sealed entry with a manifest_sha256 links a manifest."""
    entries = [{"kind": "clip.copied", "seq": 1, "body": {"manifest_sha256": M1}},
               {"kind": "clip.sealed", "seq": 2, "body": {"sha256": C1}}]
    assert seal_link_problems(entries, M1, C1) == [
        "log-link: no clip.sealed entry with a manifest_sha256 for this clip"]


@pytest.mark.parametrize("marker", ["bagit.txt", "data", "custody"])
def test_a_directory_with_any_part_of_a_bundle_is_verified_as_a_bundle(
        tmp_path: Path, marker: str) -> None:
    """Rule: a directory holding bagit.txt, data/ or custody/ is read as a bundle (and a
    damaged one is reported as a damaged bundle, not as something else)."""
    (tmp_path / marker).mkdir()
    assert _is_bundle(tmp_path)
    assert not _is_bundle(tmp_path / marker)


@pytest.mark.parametrize("rel", ["", "a//b", "./a", "a/.", "a/../b", "..", "a/"])
def test_a_path_below_a_bundle_must_be_plain_and_relative(tmp_path: Path, rel: str) -> None:
    """Rule: a path read below a bundle or data directory is refused, naming it, when it
    has an empty, '.' or '..' part."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_bytes(b"x")
    with pytest.raises(Unreadable) as refused:
        open_beneath(tmp_path, rel)
    assert str(refused.value) == f"{rel} is not a plain relative path"


def test_reading_below_a_missing_directory_names_the_directory(tmp_path: Path) -> None:
    """Rule: the directory a bundle's file is read below must open; if it cannot, the
    finding names it and why."""
    with pytest.raises(Unreadable) as refused:
        open_beneath(tmp_path / "gone", "a")
    assert str(refused.value) == (f"cannot open the directory {tmp_path / 'gone'}: "
                                  "No such file or directory")


def test_each_way_of_reading_names_the_file_it_could_not_read(tmp_path: Path) -> None:
    """Rule: a file that is missing, too large or linked is refused naming that file
    (its path below the bundle, or its own path)."""
    (tmp_path / "big").write_bytes(b"x" * 2048)
    os.symlink(tmp_path / "big", tmp_path / "link")
    with pytest.raises(Unreadable, match=r"^missing\.json is missing$"):
        read_beneath(tmp_path, "missing.json", 1024)
    with pytest.raises(Unreadable) as refused:
        read_beneath(tmp_path, "big", 1024)
    assert str(refused.value).startswith("big is larger than this verifier reads")
    with pytest.raises(Unreadable) as refused:
        read_file(tmp_path / "big", 1024)
    assert str(refused.value).startswith(f"{tmp_path / 'big'} is larger than this verifier")
    with pytest.raises(Unreadable, match=r"^link is, or lies below, a symbolic link"):
        hash_beneath(tmp_path, "link")
    with pytest.raises(Unreadable) as refused:
        read_file(tmp_path / "link", 1024)
    assert str(refused.value) == (f"{tmp_path / 'link'} is, or lies below, a symbolic link "
                                  "(not followed)")
    assert hash_beneath(tmp_path, "big")[1] == 2048


# --- the directory a file is read below, and the path on the way ------------------------------

def test_the_directory_a_file_is_read_below_must_be_a_directory(tmp_path: Path) -> None:
    """Rule: a bundle or data directory that is a regular file is refused as a directory
    that cannot be opened, naming it, before any name below it is looked up."""
    (tmp_path / "bundle").write_bytes(b"not a directory")
    with pytest.raises(Unreadable) as refused:
        open_beneath(tmp_path / "bundle", "bagit.txt")
    assert str(refused.value) == (f"cannot open the directory {tmp_path / 'bundle'}: "
                                  "Not a directory")


def test_a_fifo_where_the_directory_should_be_is_refused_without_waiting(
        tmp_path: Path) -> None:
    """Rule: a FIFO given as the bundle or data directory is refused at once as not a
    directory; opening it does not wait for a writer."""
    os.mkfifo(tmp_path / "bundle")
    done = threading.Event()

    def writer() -> None:  # ends a wait for a writer, should the open wait (then fail)
        while not done.wait(0.2):
            with contextlib.suppress(OSError):  # ENXIO: nobody is opening it for reading
                os.close(os.open(tmp_path / "bundle", os.O_WRONLY | os.O_NONBLOCK))

    unblocker = threading.Thread(target=writer)
    unblocker.start()
    try:
        with pytest.raises(Unreadable) as refused:
            open_beneath(tmp_path / "bundle", "bagit.txt")
    finally:
        done.set()
        unblocker.join()
    assert str(refused.value) == (f"cannot open the directory {tmp_path / 'bundle'}: "
                                  "Not a directory")


@pytest.mark.parametrize(("rel", "finding"), [
    ("linked/clip.mp4", "linked/clip.mp4 is, or lies below, a symbolic link (not followed)"),
    ("data/linked/clip.mp4",
     "data/linked/clip.mp4 is, or lies below, a symbolic link (not followed)"),
    ("gone/clip.mp4", "gone/clip.mp4 is missing"),
    ("data/gone/clip.mp4", "data/gone/clip.mp4 is missing"),
])
def test_a_link_or_a_gap_on_the_way_is_named_by_the_whole_path(
        tmp_path: Path, rel: str, finding: str) -> None:
    """Rule: a directory on the way to a file that is a symbolic link (not followed) or
    missing is refused naming the whole path the auditor looks for, not the part."""
    (tmp_path / "data" / "real").mkdir(parents=True)
    (tmp_path / "data" / "real" / "clip.mp4").write_bytes(b"clip")
    (tmp_path / "linked").symlink_to(tmp_path / "data" / "real")
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "data" / "real")
    with pytest.raises(Unreadable) as refused:
        read_beneath(tmp_path, rel, LIMITS["small"])
    assert str(refused.value) == finding


def test_open_file_follows_a_link_only_when_asked(tmp_path: Path) -> None:
    """Rule: open_file refuses a symbolic link at the end of the path unless the caller says
    the user named it (follow=True); then it opens the file the link leads to."""
    (tmp_path / "real").write_bytes(b"real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Unreadable) as refused:
        open_file(tmp_path / "link")
    assert str(refused.value) == (f"{tmp_path / 'link'} is, or lies below, a symbolic link "
                                  "(not followed)")
    fd = open_file(tmp_path / "link", follow=True)
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "real").stat().st_ino
    finally:
        os.close(fd)


# --- bounded reads --------------------------------------------------------------------------

def _bytes(n: int) -> bytes:
    return random.Random(n).randbytes(n)


@pytest.mark.parametrize("limit", [1000, LIMITS["small"], 3 * MiB])
def test_a_file_of_exactly_the_limit_is_read_whole_and_one_byte_more_is_refused(
        tmp_path: Path, limit: int) -> None:
    """Rule: the bound is inclusive: a file of exactly the limit is read byte for byte (also
    when that takes several reads), one byte more is refused as too large."""
    data = _bytes(limit + 1)
    (tmp_path / "at").write_bytes(data[:limit])
    (tmp_path / "over").write_bytes(data)
    assert read_beneath(tmp_path, "at", limit) == data[:limit]
    assert read_file(tmp_path / "at", limit) == data[:limit]
    with pytest.raises(Unreadable, match=r"^over is larger than this verifier reads \("):
        read_beneath(tmp_path, "over", limit)


def test_a_file_of_several_reads_is_read_byte_for_byte(tmp_path: Path) -> None:
    """Rule: a file below the limit that takes several reads (a BagIt manifest over 1 MiB)
    comes back exactly as it is on disk."""
    data = _bytes(5 * MiB // 2)
    (tmp_path / "manifest-sha256.txt").write_bytes(data)
    assert read_beneath(tmp_path, "manifest-sha256.txt", LIMITS["tag-manifest"]) == data


@pytest.mark.parametrize(("kind", "documented"), [
    ("small", "reads at most {} MiB for a certificate"),
    ("tag-manifest", "{} MiB for a BagIt manifest"),
    ("log", "{} MiB for `entries.jsonl`"),
])
def test_a_too_large_file_is_refused_naming_its_limit_in_mib(
        tmp_path: Path, kind: str, documented: str) -> None:
    """Rule: the size refusal states the limit docs/FORMATS.md gives for that kind of file,
    in whole MiB ("(1 MiB)", not "(1.0 MiB)")."""
    with (tmp_path / "big").open("wb") as f:
        f.truncate(LIMITS[kind] + 1)  # sparse: refused by its size, never read
    with pytest.raises(Unreadable) as refused:
        read_beneath(tmp_path, "big", LIMITS[kind])
    assert str(refused.value) == (f"big is larger than this verifier reads "
                                  f"({LIMITS[kind] // MiB} MiB)")
    formats = " ".join((ROOT / "docs" / "FORMATS.md").read_text().split())
    assert documented.format(LIMITS[kind] // MiB) in formats


def _unread(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


class _Feeder:
    """Writes pieces into a pipe, each only once the one before was read to its end.

    Each piece (at most PIPE_BUF bytes) is written at once, so every read of the pipe
    returns at most what is left of one piece: short reads, the same on every run, like a
    file that grows while it is read.  The pipe ends (EOF) once the last piece was read.
    """

    def __init__(self, pieces: list[bytes]) -> None:
        self.r, self.w = os.pipe()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(pieces,))
        self.thread.start()

    def _drained(self) -> bool:
        while _unread(self.r):
            if self.stop.wait(0.001):
                return False
        return True

    def _run(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            if not self._drained():
                return
            os.write(self.w, piece)
        if self._drained():
            os.close(self.w)
            self.w = -1

    def left(self) -> int:
        """Stops feeding; the bytes written but not read."""
        self.stop.set()
        self.thread.join()
        left = _unread(self.r)
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        return left


def test_a_file_growing_while_it_is_read_is_refused_after_one_byte_over_the_limit() -> None:
    """Rule: whatever fstat said, the verifier takes at most limit + 1 bytes (the one byte to
    know it is over) from a file that keeps giving, in however many short reads, and then
    refuses it as too large."""
    # A pipe stands in for the growing file: fstat says 0 bytes, the reads keep giving.
    feeder = _Feeder([b"a" * 600, b"b" * 600, b"c" * 600])
    try:
        with pytest.raises(Unreadable) as refused:
            _read_fd(feeder.r, 1000, "entries.jsonl")
    finally:
        left = feeder.left()
    assert str(refused.value).startswith("entries.jsonl is larger than this verifier reads (")
    assert left == 1200 - 1001  # the second piece's last 199 bytes; the third never written


@pytest.mark.parametrize("sizes", [[600, 300], [600, 400], [1, 998, 1]])
def test_a_file_within_the_limit_in_short_reads_is_read_whole(sizes: list[int]) -> None:
    """Rule: a file of at most the limit that arrives in short reads is read byte for byte
    up to its end."""
    pieces = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    feeder = _Feeder(pieces)
    try:
        assert _read_fd(feeder.r, 1000, "entries.jsonl") == b"".join(pieces)
    finally:
        assert feeder.left() == 0


# --- I/O errors -----------------------------------------------------------------------------

# /proc/self/mem is a regular file whose read at offset 0 fails with EIO (nothing is mapped
# there): a disk that cannot be read, without a failing disk.
PROC, MEM = Path("/proc/self"), "mem"


def test_a_read_error_is_named_with_the_file_and_the_system_s_reason() -> None:
    """Rule: a file that opens but cannot be read is refused naming the file (its path
    below the bundle, or its own path) and the system's reason, by every way of reading."""
    eio = os.strerror(errno.EIO)
    for read, finding in [
        (lambda: read_beneath(PROC, MEM, LIMITS["small"]), f"cannot read mem: {eio}"),
        (lambda: read_file(PROC / MEM, LIMITS["small"]), f"cannot read /proc/self/mem: {eio}"),
        (lambda: hash_beneath(PROC, MEM), f"cannot read mem: {eio}"),
        (lambda: hash_file(PROC / MEM), f"cannot read /proc/self/mem: {eio}"),
    ]:
        with pytest.raises(Unreadable) as refused:
            read()
        assert str(refused.value) == finding


# --- hashing --------------------------------------------------------------------------------

def test_a_clip_of_several_read_blocks_is_hashed_whole(tmp_path: Path) -> None:
    """Rule: the SHA-256 and size of a clip larger than one read block are those of every
    byte on disk."""
    data = _bytes(2 * _HASH_BLOCK + 123)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip.mp4").write_bytes(data)
    assert hash_beneath(tmp_path, "data/clip.mp4") == (hashlib.sha256(data).hexdigest(),
                                                       len(data))
    assert hash_file(tmp_path / "data" / "clip.mp4") == (hashlib.sha256(data).hexdigest(),
                                                         len(data))


def test_hash_fd_hashes_every_byte_of_a_descriptor_that_takes_no_read_ahead_advice() -> None:
    """Rule: hash_fd hashes any readable descriptor to its end, also a pipe: its bytes come
    in short reads, and the kernel refuses the read-ahead advice (ESPIPE), which is only
    advice."""
    data = _bytes(300_000)
    r, w = os.pipe()

    def write() -> None:
        try:
            os.write(w, data)
        except BrokenPipeError:  # hash_fd failed and the test closed the pipe
            pass
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert hash_fd(r, "pipe") == (hashlib.sha256(data).hexdigest(), len(data))
    finally:
        os.close(r)
        writer.join()


class _Interrupted(Exception):
    """What the test's signal handler raises, as Python's raises KeyboardInterrupt."""


class _Interrupter:
    """Signals the main thread ``signals`` times, 50 ms apart, once hash_fd's reader runs
    (and waits in its read of the empty pipe ``r``, ``w``); then, if asked, closes ``w`` so
    that the read ends (EOF)."""

    def __init__(self, signals: int, *, then_close: bool) -> None:
        self.r, self.w = os.pipe()
        self.before = set(threading.enumerate())
        self.done = threading.Event()
        main = threading.main_thread().ident
        assert main is not None

        def run() -> None:
            while not self.started():
                if self.done.wait(0.001):
                    return  # hash_fd ended before it started a reader
            for _ in range(signals):
                time.sleep(0.05)
                signal.pthread_kill(main, signal.SIGALRM)
            if then_close:
                time.sleep(0.1)
                self.close_w()

        self.thread = threading.Thread(target=run)
        self.before.add(self.thread)
        self.thread.start()

    def started(self) -> set[threading.Thread]:
        """The threads started since (hash_fd's reader)."""
        return set(threading.enumerate()) - self.before

    def close_w(self) -> None:
        w, self.w = self.w, -1
        if w >= 0:
            os.close(w)

    def close(self) -> None:
        """Ends the signals and the read; waits for the reader."""
        self.done.set()
        self.thread.join()
        self.close_w()
        for thread in self.started():
            thread.join()
        os.close(self.r)


@pytest.fixture()
def interruptible() -> Iterator[None]:
    """SIGALRM raises _Interrupted in the main thread (the test's Ctrl-C)."""
    assert threading.current_thread() is threading.main_thread()

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("interruptible")
def test_an_interrupted_hash_ends_with_the_interruption_once_its_reader_ended() -> None:
    """Rule: an interruption (Ctrl-C) while hash_fd waits for the next block comes out of
    hash_fd as it came, not as another error, and only once the reader thread has ended."""
    interrupter = _Interrupter(1, then_close=True)
    try:
        with pytest.raises(_Interrupted):
            hash_fd(interrupter.r, "clip.mp4")
        assert interrupter.started() == set()
    finally:
        interrupter.close()


@pytest.mark.usefixtures("interruptible")
def test_a_reader_an_interrupted_hash_leaves_behind_does_not_hold_up_the_exit() -> None:
    """Rule: a second interruption ends hash_fd while its reader still waits in a read that
    never returns (a hung device); that reader is a daemon thread, which Python's exit does
    not wait for, so the verifier still exits."""
    interrupter = _Interrupter(2, then_close=False)
    try:
        with pytest.raises(_Interrupted):
            hash_fd(interrupter.r, "clip.mp4")
        assert [thread.daemon for thread in interrupter.started()] == [True]
    finally:
        interrupter.close()
