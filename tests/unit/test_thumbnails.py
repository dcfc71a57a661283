"""The thumbnails beside the vault: kept for each clip a station shows to its officers, private,
never part of the evidence, gone with the clip's purge, and read back only as one small JPEG.

Clips come from simulated cameras (mp4v MP4 and MJPG AVI written by OpenCV) docked at a real
station; the thumbnail is compared with the first frame OpenCV itself reads from the vault copy.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.config import Config
from agent.export import export_bundle, select_clips
from agent.store import Store
from agent.sync.retention import purge
from agent.thumbnails import Thumbnails, wanted
from agent.vault import Vault
from scripts.devplatform.officers import OfficerAuthority
from tests.support.stations import camera, running_station

SCREEN = """
[custody]
credential_key_file = "{key}"

[web]
port = 0

[retention]
release = "never"
keep_days = 0
"""


@pytest.fixture
def screen_config(station_config: Callable[..., Config], tmp_path: Path) -> Config:
    """A station whose officers sign in at its screen: it keeps thumbnails."""
    authority = OfficerAuthority(tmp_path / "platform")
    return station_config(SCREEN.format(key=authority.pub_path))


def _clips(config: Config) -> list[sqlite3.Row]:
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    try:
        return list(store.query("SELECT * FROM clips ORDER BY name"))
    finally:
        store.close()


def _first_frame(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok
    return np.asarray(frame)


def test_each_clip_of_a_station_with_officer_sign_in_has_its_first_frame_kept_private(
        screen_config: Config) -> None:
    config = screen_config
    assert wanted(config)
    camera(config, clips=2, width=320, height=240, formats=("mp4", "avi"))
    with running_station(config) as station:
        assert station.run_once().ok
    thumbs = Thumbnails(config.data_dir)
    assert stat.S_IMODE(os.stat(thumbs.root).st_mode) == 0o700
    clips = _clips(config)
    assert sorted(c["name"][-3:] for c in clips) == ["AVI", "MP4"]
    vault = Vault(config.data_dir / "vault")
    for clip in clips:
        path = thumbs.path(clip["clip_id"])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        data = thumbs.read(clip["clip_id"])
        assert data is not None and data == path.read_bytes()
        small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert small.shape == (180, 240, 3)
        reference = cv2.resize(_first_frame(vault.path_for(clip["sha256"])), (240, 180),
                               interpolation=cv2.INTER_AREA)
        assert float(np.abs(reference.astype(int) - small.astype(int)).mean()) < 8
        # Not evidence: neither in the manifest nor among the clip's custody entries.
        assert clip["manifest"] is not None and "thumb" not in clip["manifest"]
    assert sorted(p.name for p in thumbs.root.iterdir()) == sorted(
        f"{c['clip_id']}.jpg" for c in clips)


def test_an_export_bundle_carries_no_thumbnail(screen_config: Config, tmp_path: Path) -> None:
    config = screen_config
    camera(config, clips=1)
    with running_station(config) as station:
        assert station.run_once().ok
        assert station.store is not None and station.vault is not None
        rows = select_clips(station.store, all_clips=True)
        export_bundle(config, station.store, station.vault, rows, tmp_path / "bundle")
    (clip,) = _clips(config)
    picture = Thumbnails(config.data_dir).read(clip["clip_id"])
    assert picture is not None
    bundled = [p for p in (tmp_path / "bundle").rglob("*") if p.is_file()]
    assert bundled and all(picture not in p.read_bytes() for p in bundled)
    assert not any("thumb" in p.as_posix() for p in bundled)


def test_a_station_without_officer_sign_in_at_a_screen_keeps_none(
        station_config: Callable[..., Config], tmp_path: Path) -> None:
    authority = OfficerAuthority(tmp_path / "platform")
    for extra in ("", "[web]\nport = 0\n",
                  f'[custody]\ncredential_key_file = "{authority.pub_path}"\n'):
        config = station_config(extra)
        assert not wanted(config)
    camera(config, clips=1)
    with running_station(config) as station:
        assert station.run_once().ok
    assert not (config.data_dir / "thumbs").exists()


def test_a_purged_clip_loses_its_thumbnail_and_the_others_keep_theirs(
        screen_config: Config) -> None:
    config = screen_config
    camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        first, second = (r["clip_id"] for r in store.query("SELECT clip_id FROM clips "
                                                            "ORDER BY name"))
        thumbs = Thumbnails(config.data_dir)
        assert thumbs.has(first) and thumbs.has(second)
        db = sqlite3.connect(config.data_dir / "state.db")
        db.execute("UPDATE clips SET state = 'acknowledged', ack = '{\"signed\": true}', "
                   "acknowledged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE clip_id = ?",
                   (first,))
        db.commit()
        db.close()
        assert purge(config, store, Vault(config.data_dir / "vault")) == [first]
        assert not thumbs.has(first) and thumbs.read(first) is None
        assert thumbs.has(second)


# --- the files themselves ----------------------------------------------------------------

CLIP = "0190f0c1-0000-7000-8000-000000000001"


def _jpeg(width: int = 160, height: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return bytes(buf.tobytes())


def test_a_duplicate_probed_before_its_verify_ends_keeps_no_thumbnail(
        screen_config: Config) -> None:
    """Rule: a thumbnail is kept only for a clip recorded copied; a duplicate (whose purge
    would never reach it) or a copy that fails keeps none, whichever check ends first."""
    import shutil
    import threading

    cam = camera(screen_config, clips=1, width=320, height=240)
    (original,) = [p for p in (cam / "DCIM").rglob("*") if p.is_file()]
    shutil.copy2(original, original.with_name("COPY_" + original.name))  # the same bytes
    with running_station(screen_config) as station:
        assert station.offloader is not None
        checker = station.offloader.copier.checker
        probed: dict[str, threading.Event] = {}
        real_probe, real_record = checker.probe, checker._record_sha256

        def probe(path: Path, clip_id: str, name: str) -> Any:
            try:
                return real_probe(path, clip_id, name)
            finally:
                probed.setdefault(clip_id, threading.Event()).set()

        def record(clip: Any, verified: bool) -> Any:
            # A busy verify pool: each clip's probe (and its thumbnail) is done first.
            assert probed.setdefault(clip.clip_id, threading.Event()).wait(60)
            return real_record(clip, verified)

        checker.probe = probe
        checker._record_sha256 = record  # type: ignore[method-assign]
        assert station.run_once().ok
    states = {row["clip_id"]: row["state"] for row in _clips(screen_config)}
    assert sorted(states.values()) == ["duplicate", "sealed"] and len(probed) == 2
    kept = {p.stem for p in Thumbnails(screen_config.data_dir).root.iterdir()}
    assert kept == {c for c, state in states.items() if state == "sealed"}


def test_a_thumbnail_is_kept_under_its_clip_id_only(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path)
    for bad in ("../state.db", "0190f0c1", CLIP.upper(), CLIP + ".jpg", "", "a/b"):
        with pytest.raises(ValueError, match="not a clip id"):
            thumbs.path(bad)
        assert thumbs.read(bad) is None and not thumbs.has(bad)
        assert thumbs.save(bad, _jpeg()) is False
    assert thumbs.save(CLIP, b"<html>not a picture</html>") is False
    assert thumbs.save(CLIP, _jpeg(640, 360)) is False  # larger than a thumbnail
    assert not thumbs.root.exists() or list(thumbs.root.iterdir()) == []
    assert thumbs.save(CLIP, _jpeg()) is True and thumbs.read(CLIP) == _jpeg()
    thumbs.discard(CLIP)
    thumbs.discard(CLIP)  # idempotent
    assert thumbs.read(CLIP) is None


def test_what_is_not_a_thumbnail_in_its_place_is_never_served(tmp_path: Path) -> None:
    thumbs = Thumbnails(tmp_path)
    assert thumbs.save(CLIP, _jpeg())
    path = thumbs.path(CLIP)
    evidence = tmp_path / "evidence.mp4"
    evidence.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    path.unlink()
    path.symlink_to(evidence)  # a planted link to another file: not followed
    assert thumbs.read(CLIP) is None
    path.unlink()
    path.write_bytes(_jpeg() + bytes(60_000))  # too large to be one
    assert thumbs.read(CLIP) is None
    path.unlink()
    path.mkdir()  # not a regular file
    assert thumbs.read(CLIP) is None
