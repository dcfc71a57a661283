"""Names from devices and the file-system walls around a volume (drivers.paths, drivers.volume)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from agent.errors import DeviceError, DeviceGoneError
from drivers.base import Recording
from drivers.paths import decode_name, guarded_stream, open_inside, os_error, unsafe_reason
from drivers.volume import VolumeDevice, walk
from tests.support.names import name_bytes

GBK_NAME = "执法记录_0001.MP4"
GBK_BYTES = GBK_NAME.encode("gbk")


class Plain(VolumeDevice):
    """A VolumeDevice with no identity of its own, to test the shared behaviour."""


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    (root / "DCIM" / "100MEDIA").mkdir(parents=True)
    (root / "DCIM" / "100MEDIA" / "A_0001.MP4").write_bytes(b"clip-one")
    (root / "DCIM" / "100MEDIA" / "B_0002.avi").write_bytes(b"clip-two-bytes")
    (root / "DCIM" / "EMPTY.MP4").write_bytes(b"")
    (root / "notes.txt").write_text("not a clip")
    return root


# -- decode_name / unsafe_reason ------------------------------------------------------------

def test_decode_utf8_gbk_and_undecodable() -> None:
    assert decode_name("录像.mp4".encode()) == ("录像.mp4", ())
    assert decode_name(GBK_BYTES) == (GBK_NAME, ("name.gbk",))
    text, flags = decode_name(b"\xff\xfe\xff.mp4")
    assert flags == ("name.undecodable",)
    assert text.endswith(".mp4") and "\ufffd" in text


@pytest.mark.parametrize(("path", "reason"), [
    ("", "empty path"),
    ("/etc/passwd", "absolute path"),
    ("../outside.mp4", "'..' path component"),
    ("DCIM/../../x.mp4", "'..' path component"),
    ("DCIM/./x.mp4", "'.' path component"),
    ("DCIM//x.mp4", "empty path component"),
    ("a\x00b.mp4", "NUL character in name"),
    ("a\\..\\b.mp4", "backslash in name"),
    ("a\nb.mp4", "control character in name"),
])
def test_unsafe_paths_are_named(path: str, reason: str) -> None:
    assert unsafe_reason(path) == reason


def test_safe_paths_pass() -> None:
    assert unsafe_reason("DCIM/100MEDIA/A_0001.MP4") is None
    assert unsafe_reason("录像/..hidden.mp4") is None  # '..' inside a name is fine


# -- open_inside ------------------------------------------------------------------------------

def test_open_inside_reads_the_file(volume: Path) -> None:
    with open_inside(volume, "DCIM/100MEDIA/B_0002.avi") as f:
        assert f.read() == b"clip-two-bytes"


@pytest.mark.parametrize("bad", ["../vol/notes.txt", "/etc/passwd", "DCIM/../notes.txt", ""])
def test_open_inside_refuses_escapes(volume: Path, bad: str) -> None:
    with pytest.raises(DeviceError, match="refusing path"):
        open_inside(volume, bad)


def test_open_inside_refuses_raw_escapes(volume: Path) -> None:
    with pytest.raises(DeviceError, match=r"'..' component"):
        open_inside(volume, b"DCIM/../notes.txt")


def test_open_inside_refuses_symlinks_anywhere(volume: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.MP4"
    secret.write_bytes(b"outside the volume")
    (volume / "link.MP4").symlink_to(secret)
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    (outside_dir / "x.MP4").write_bytes(b"outside too")
    (volume / "DCIM" / "linkdir").symlink_to(outside_dir)
    with pytest.raises(DeviceError, match=r"link.MP4.*it is a symlink"):
        open_inside(volume, "link.MP4")
    with pytest.raises(DeviceError, match="a directory on the path is a symlink"):
        open_inside(volume, "DCIM/linkdir/x.MP4")


def test_open_inside_refuses_fifo_without_blocking(volume: Path) -> None:
    os.mkfifo(volume / "pipe.MP4")
    with pytest.raises(DeviceError, match=r"pipe.MP4.*not a regular file"):
        open_inside(volume, "pipe.MP4")


def test_open_inside_refuses_directories(volume: Path) -> None:
    with pytest.raises(DeviceError, match="not a regular file"):
        open_inside(volume, "DCIM")


def test_missing_file_is_device_error_missing_root_is_gone(volume: Path, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="not found") as exc_info:
        open_inside(volume, "DCIM/NOPE.MP4")
    assert not isinstance(exc_info.value, DeviceGoneError)
    with pytest.raises(DeviceGoneError, match="is gone"):
        open_inside(tmp_path / "unplugged", "DCIM/A.MP4")


def test_read_errors_are_converted(tmp_path: Path) -> None:
    # /proc/self/mem at offset 0 (unmapped) fails with EIO, as a pulled USB stick does.
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    with guarded_stream(fd, "mem") as stream, pytest.raises(DeviceGoneError, match="mem"):
        stream.read(16)
    # A failure that is not a vanished medium stays a plain DeviceError.
    (tmp_path / "f").write_bytes(b"x" * 10)
    stream = open_inside(tmp_path, "f")
    os.close(stream.fileno())
    with pytest.raises(DeviceError) as exc_info:
        stream.read()
    # Closed now, while its descriptor number is free: left to the garbage collector, the
    # close would hit whatever later test reuses the number.
    stream.close()
    assert not isinstance(exc_info.value, DeviceGoneError)
    assert isinstance(os_error(OSError(errno.ENODEV, "gone"), "x"), DeviceGoneError)


# -- walk ---------------------------------------------------------------------------------------

def test_walk_lists_recordings_sorted_and_reports_the_rest(volume: Path) -> None:
    listing = walk(volume, {"mp4", "AVI"})
    assert [(r.path, r.size) for r in listing.recordings] == [
        ("DCIM/100MEDIA/A_0001.MP4", 8),
        ("DCIM/100MEDIA/B_0002.avi", 14),
        ("DCIM/EMPTY.MP4", 0),  # zero-length files are listed (and later flagged), not dropped
    ]
    assert [(s.path, s.reason) for s in listing.skipped] == [("notes.txt", "not a recording type")]
    assert listing.recordings[0].mtime == os.stat(volume / "DCIM/100MEDIA/A_0001.MP4").st_mtime


def test_walk_skips_symlinks_and_special_files(volume: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SECRET.MP4").write_bytes(b"must never be read")
    (volume / "DCIM" / "escape").symlink_to(outside)
    (volume / "DCIM" / "ESCAPE.MP4").symlink_to(outside / "SECRET.MP4")
    os.mkfifo(volume / "DCIM" / "FIFO.MP4")
    listing = walk(volume, {"mp4"})
    skipped = {s.path: s.reason for s in listing.skipped}
    assert skipped["DCIM/escape"] == "symlink, not followed"
    assert skipped["DCIM/ESCAPE.MP4"] == "symlink, not followed"
    assert skipped["DCIM/FIFO.MP4"] == "special file"
    assert all("SECRET" not in r.path and "escape" not in r.path.lower()
               for r in listing.recordings)


def test_walk_decodes_gbk_names_and_device_opens_them(volume: Path) -> None:
    raw_dir = os.fsencode(volume / "DCIM") + b"/" + "证据".encode("gbk")
    os.mkdir(raw_dir)
    with open(raw_dir + b"/" + GBK_BYTES, "wb") as f:
        f.write(b"gbk-named clip")
    device = Plain(volume, {"mp4"})
    listing = device.recordings()
    rec = next(r for r in listing.recordings if r.name == GBK_NAME)
    assert rec.path == f"DCIM/证据/{GBK_NAME}"
    assert rec.name_flags == ("name.gbk",)
    with device.open(rec) as stream:
        assert stream.read() == b"gbk-named clip"
    assert device.stat(rec) == (14, os.stat(raw_dir + b"/" + GBK_BYTES).st_mtime)


def _make(directory: Path | bytes, raw: bytes, content: bytes | None = None) -> None:
    with open(os.fsencode(directory) + b"/" + raw, "wb") as f:
        f.write(raw if content is None else content)


def test_every_name_a_file_system_allows_is_listed_and_its_bytes_kept(tmp_path: Path) -> None:
    names = [bytes([b]) + b".mp4" for b in range(1, 256) if b != ord("/")]
    names += [b"\xff\xfex.mp4", b"\xfe\xffx.mp4", "录像%.mp4".encode(), GBK_BYTES,
              "录像\n.mp4".encode("gbk"), b"a\\b\\..\\c.mp4", b"%41.mp4"]
    for raw in names:
        _make(tmp_path, raw)
    device = Plain(tmp_path, {"mp4"})
    listing = device.recordings()
    assert listing.skipped == []
    recs = listing.recordings
    assert len(recs) == len(names) == len({r.path for r in recs})
    for rec in recs:
        assert unsafe_reason(rec.path) is None, rec.path
        with device.open(rec) as stream:
            raw = stream.read()
        assert name_bytes(rec.path, rec.name_flags) == raw, (rec.path, rec.name_flags)


def test_unsafe_and_undecodable_names_are_escaped(tmp_path: Path) -> None:
    for raw in (b"bad\\name.mp4", b"tab\tname.mp4", b"new\nline.mp4", b"100%.mp4",
                b"\xff\xfex.mp4", b"ok.mp4"):
        _make(tmp_path, raw)
    listing = walk(tmp_path, {"mp4"})
    assert {r.path: r.name_flags for r in listing.recordings} == {
        "%FF%FEx.mp4": ("name.undecodable", "name.escaped"),
        "100%25.mp4": ("name.escaped",),
        "bad%5Cname.mp4": ("name.escaped",),
        "new%0Aline.mp4": ("name.escaped",),
        "ok.mp4": (),
        "tab%09name.mp4": ("name.escaped",),
    }


def test_walk_keeps_names_that_decode_alike_apart(tmp_path: Path) -> None:
    # The same text from UTF-8 bytes and from GBK bytes: the later one (by raw bytes)
    # is stored with its bytes escaped.
    for raw in ("录像.mp4".encode(), "录像.mp4".encode("gbk")):
        _make(tmp_path, raw)
    device = Plain(tmp_path, {"mp4"})
    recs = device.recordings().recordings
    assert [(r.path, r.name_flags) for r in recs] == [
        ("录像.mp4", ("name.gbk",)),  # GBK bytes sort first: decoded
        ("%E5%BD%95%E5%83%8F.mp4", ("name.collision", "name.escaped")),
    ]
    for rec in recs:
        with device.open(rec) as stream:
            assert name_bytes(rec.path, rec.name_flags) == stream.read()


def test_a_name_is_decoded_in_the_encoding_of_its_directory(tmp_path: Path) -> None:
    gbk_dir = os.fsencode(tmp_path) + b"/" + "证据".encode("gbk")
    os.mkdir(gbk_dir)
    _make(gbk_dir, "录像.mp4".encode())  # UTF-8 inside a GBK directory
    _make(gbk_dir, GBK_BYTES)
    device = Plain(tmp_path, {"mp4"})
    recs = device.recordings().recordings
    assert len(recs) == 2
    for rec in recs:
        assert "name.gbk" in rec.name_flags
        with device.open(rec) as stream:
            raw_name = stream.read()
        assert name_bytes(rec.path, rec.name_flags) == "证据".encode("gbk") + b"/" + raw_name


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_walk_reports_unreadable_directories(volume: Path) -> None:
    locked = volume / "DCIM" / "LOCKED"
    locked.mkdir()
    (locked / "X.MP4").write_bytes(b"x")
    locked.chmod(0)
    try:
        listing = walk(volume, {"mp4"})
    finally:
        locked.chmod(0o700)
    assert any(s.path == "DCIM/LOCKED" and s.reason.startswith("unreadable directory")
               for s in listing.skipped)


def test_walk_ignores_named_identity_files_at_the_root_only(tmp_path: Path) -> None:
    (tmp_path / "ID.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ID.json").write_text("{}")
    listing = walk(tmp_path, {"mp4"}, ignore=("ID.json",))
    assert [s.path for s in listing.skipped] == ["sub/ID.json"]


# -- VolumeDevice ----------------------------------------------------------------------------

def test_release_unlinks_the_file_only(volume: Path, tmp_path: Path) -> None:
    device = Plain(volume, {"mp4"})
    rec = device.recordings().recordings[0]
    sha = hashlib.sha256((volume / rec.path).read_bytes()).hexdigest()
    device.release(rec, sha256=sha)
    assert not (volume / rec.path).exists()
    with pytest.raises(DeviceError, match="not in its listing"):
        device.release(rec, sha256=sha)
    # A path that is a symlink on the device is never a recording, so never deleted.
    target = tmp_path / "keep.MP4"
    target.write_bytes(b"keep me")
    (volume / "LINK.MP4").symlink_to(target)
    with pytest.raises(DeviceError, match="not in its listing"):
        device.release(Recording(path="LINK.MP4", size=7, mtime=0.0),
                       sha256=hashlib.sha256(b"keep me").hexdigest())
    assert target.read_bytes() == b"keep me"


def test_stat_sees_changes_and_open_after_unplug_is_gone(volume: Path, tmp_path: Path) -> None:
    device = Plain(volume, {"mp4"})
    rec = device.recordings().recordings[0]
    (volume / rec.path).write_bytes(b"grown: more bytes")
    assert device.stat(rec)[0] == 17
    assert device.present()
    volume.rename(tmp_path / "unplugged")
    assert not device.present()
    with pytest.raises(DeviceGoneError):
        device.open(rec)
    with pytest.raises(DeviceGoneError):
        device.recordings()


def test_write_atomic_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    from agent.durable import remove_stale_temps, write_atomic

    camera_dir, victim = tmp_path / "camera", tmp_path / "etc-shadow"
    camera_dir.mkdir()
    victim.write_bytes(b"precious")
    (camera_dir / "BWC_DEVICE.json").symlink_to(victim)
    for pid_guess in range(os.getpid() - 2, os.getpid() + 3):  # the old, predictable names
        (camera_dir / f".BWC_DEVICE.json.tmp-{pid_guess}").symlink_to(victim)
    write_atomic(camera_dir / "BWC_DEVICE.json", b'{"serial": "X"}')
    assert victim.read_bytes() == b"precious"
    target = camera_dir / "BWC_DEVICE.json"
    assert not target.is_symlink() and target.read_bytes() == b'{"serial": "X"}'
    remove_stale_temps(camera_dir)  # unlinks leftovers; a link goes, never its target
    assert victim.read_bytes() == b"precious"


def test_undecodable_names_stay_distinct_for_the_store() -> None:
    from drivers.paths import printable_name

    assert printable_name("执法仪".encode("gbk")) == "执法仪"
    assert printable_name(b"CAM_1") == "CAM_1"
    a, b = printable_name(b"\xff\xfe"), printable_name(b"\xfe\xff")
    assert a != b and a.endswith("[fffe]") and b.endswith("[feff]")
