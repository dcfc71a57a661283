"""Purging the vault: the exact rules of retention.keep_days, low_water_mb and the camera wait.

One station is offloaded and sealed once for the module; each test works on a
copy of its data directory, moves clips to the state it needs with their
acknowledgement times set to the millisecond, and calls purge() at chosen
instants, with the free space of the vault's disk fixed where it matters.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import Config
from agent.store import Store
from agent.sync.retention import (
    cameras_holding,
    purge,
    release_acknowledged,
    releases_due,
    sweep_purged,
)
from agent.timeutil import parse_rfc3339
from agent.vault import Vault
from tests.conftest import write_station_config
from tests.support.stations import camera, running_station, sim_devices

ACKED_AT = "2026-01-01T00:00:00.000Z"
T = parse_rfc3339(ACKED_AT).timestamp()
DAY = 86400.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sealed")
    config = config_mod.load(write_station_config(base))
    camera(config, clips=3)
    with running_station(config) as station:
        assert station.run_once().ok
    return base


class FreeSpace(Vault):
    """The station's vault on a disk with ``free`` bytes free (one value per call, the last
    repeated): the rules below depend on the free space, not on this machine's disk."""

    def __init__(self, root: Path, *free: int) -> None:
        super().__init__(root)
        self.free = list(free)
        self.calls = 0

    def free_bytes(self) -> int:
        self.calls += 1
        return self.free.pop(0) if len(self.free) > 1 else self.free[0]


@pytest.fixture
def station(template: Path, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    shutil.copytree(template / "data", tmp_path / "data")
    shutil.copytree(template / "sim", tmp_path / "sim")
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    ids = [r[0] for r in db.execute("SELECT clip_id FROM clips ORDER BY clip_id")]
    db.close()
    yield tmp_path, ids


def _config(base: Path, retention: str) -> Config:
    return config_mod.load(write_station_config(base, "[retention]\n" + retention))


def _set(config: Config, clip_id: str, state: str, acknowledged_at: str = ACKED_AT) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = ?, ack = '{\"signed\": true}', acknowledged_at = ? "
               "WHERE clip_id = ?", (state, acknowledged_at, clip_id))
    db.commit()
    db.close()


def _purge_reasons(store: Store) -> dict[str, str]:
    return {r["clip_id"]: json.loads(r["body"])["reason"] for r in store.query(
        "SELECT clip_id, body FROM custody_log WHERE kind = 'clip.purged'")}


def test_retention_ends_exactly_keep_days_after_the_acknowledgement(
        station: tuple[Path, list[str]]) -> None:
    """Rule: a vault copy is kept keep_days after its ack, to the millisecond, then purged."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 2\nlow_water_mb = 0\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    digest = store.clip(ids[0])["sha256"]
    assert purge(config, store, vault, at=T + 2 * DAY - 0.001) == []
    assert vault.has(digest) and store.clip(ids[0])["state"] == "acknowledged"
    assert purge(config, store, vault, at=T + 2 * DAY) == [ids[0]]
    assert not vault.has(digest) and store.clip(ids[0])["state"] == "purged"
    assert _purge_reasons(store) == {ids[0]: "retention of 2 days passed"}
    assert {store.clip(i)["state"] for i in ids[1:]} == {"sealed"}, "only acknowledged clips"


def test_fractional_keep_days_count_in_hours(station: tuple[Path, list[str]]) -> None:
    """Rule: keep_days = 0.5 keeps an acknowledged copy twelve hours."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 0.5\nlow_water_mb = 0\n')
    _set(config, ids[0], "released")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    assert purge(config, store, vault, at=T + 12 * 3600 - 1) == []
    assert purge(config, store, vault, at=T + 12 * 3600) == [ids[0]]
    assert _purge_reasons(store) == {ids[0]: "retention of 0.5 days passed"}


def test_low_water_mb_is_mebibytes_and_only_below_the_mark_purges(
        station: tuple[Path, list[str]]) -> None:
    """Rule: low_water_mb = N purges early only while less than N MiB are free."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 3650\nlow_water_mb = 100\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    at_mark = FreeSpace(config.data_dir / "vault", 100 * MIB)
    assert purge(config, store, at_mark, at=T + DAY) == [], "exactly at the mark: kept"
    assert at_mark.calls == 1
    config = _config(base, 'release = "never"\nkeep_days = 3650\nlow_water_mb = 101\n')
    assert purge(config, store, at_mark, at=T + DAY) == [ids[0]]
    assert _purge_reasons(store) == {
        ids[0]: "free space under the low-water mark (101 MB)"}
    assert not at_mark.has(store.clip(ids[0])["sha256"])


def test_under_pressure_the_oldest_acknowledgement_goes_first_and_only_while_needed(
        station: tuple[Path, list[str]]) -> None:
    """Rule: disk pressure purges the oldest acknowledged copy first, and stops once free."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 3650\nlow_water_mb = 100\n')
    _set(config, ids[0], "acknowledged", "2026-01-03T00:00:00.000Z")
    _set(config, ids[1], "acknowledged", "2026-01-01T00:00:00.000Z")
    _set(config, ids[2], "released", "2026-01-02T00:00:00.000Z")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    # Under the mark for the first clip looked at, free again after its purge.
    vault = FreeSpace(config.data_dir / "vault", 99 * MIB, 200 * MIB)
    assert purge(config, store, vault, at=T + DAY) == [ids[1]]
    vault = FreeSpace(config.data_dir / "vault", 99 * MIB, 99 * MIB, 200 * MIB)
    assert purge(config, store, vault, at=T + DAY) == [ids[2], ids[0]]


def test_with_release_after_ack_a_copy_waits_for_its_camera_unless_the_disk_is_short(
        station: tuple[Path, list[str]]) -> None:
    """Rule: with release = after-ack, an acknowledged clip not yet deleted from its camera
    keeps its vault copy past keep_days; only low-water pressure purges it before."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\nkeep_days = 1\nlow_water_mb = 100\n')
    _set(config, ids[0], "acknowledged")
    _set(config, ids[1], "released")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    roomy = FreeSpace(config.data_dir / "vault", 500 * MIB)
    assert purge(config, store, roomy, at=T + 30 * DAY) == [ids[1]]
    assert store.clip(ids[0])["state"] == "acknowledged"
    assert roomy.has(store.clip(ids[0])["sha256"])
    short = FreeSpace(config.data_dir / "vault", 10 * MIB)
    assert purge(config, store, short, at=T + 30 * DAY) == [ids[0]]
    assert _purge_reasons(store) == {
        ids[1]: "retention of 1 days passed",
        ids[0]: "free space under the low-water mark (100 MB)"}


def test_a_vault_object_another_live_clip_holds_is_kept_when_one_clip_is_purged(
        station: tuple[Path, list[str]]) -> None:
    """Rule: purging one clip never takes the bytes another live clip still needs."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 0\nlow_water_mb = 0\n')
    db = sqlite3.connect(config.data_dir / "state.db")
    digest = db.execute("SELECT sha256 FROM clips WHERE clip_id = ?", (ids[0],)).fetchone()[0]
    db.execute("UPDATE clips SET sha256 = ? WHERE clip_id = ?", (digest, ids[1]))
    db.commit()
    db.close()
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    assert purge(config, store, vault, at=T + DAY) == [ids[0]]
    assert vault.has(digest), "clip 2 (sealed) still needs these bytes"
    _set(config, ids[1], "acknowledged")
    assert purge(config, store, vault, at=T + DAY) == [ids[1]]
    assert not vault.has(digest)


def test_a_purged_clip_whose_object_a_crash_left_behind_is_swept_at_start(
        station: tuple[Path, list[str]]) -> None:
    """Rule: a crash between a purge's record and its deletion leaves an object the next
    start removes, unless a live clip still holds the same bytes."""
    base, ids = station
    config = _config(base, "")
    vault = Vault(config.data_dir / "vault")
    db = sqlite3.connect(config.data_dir / "state.db")
    digests = [db.execute("SELECT sha256 FROM clips WHERE clip_id = ?", (i,)).fetchone()[0]
               for i in ids]
    db.execute("UPDATE clips SET state = 'purged' WHERE clip_id IN (?, ?)", (ids[0], ids[1]))
    db.execute("UPDATE clips SET sha256 = ? WHERE clip_id = ?", (digests[1], ids[2]))
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    assert sweep_purged(store, vault) == 1
    assert not vault.has(digests[0])
    assert vault.has(digests[1]), "clip 3 (sealed) holds these bytes too"
    assert sweep_purged(store, vault) == 0


def _release_due_state(config: Config, clip_id: str, failures: int, retry_at: float) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'acknowledged', ack = '{}', acknowledged_at = ?, "
               "release_failures = ?, release_retry_at = ? WHERE clip_id = ?",
               (ACKED_AT, failures, retry_at, clip_id))
    db.commit()
    db.close()


def test_a_failed_release_is_due_again_only_once_its_back_off_has_passed(
        station: tuple[Path, list[str]]) -> None:
    """Rule: a camera whose release failed is tried again when its retry time has come,
    not before; a camera with no failed release is never "due"."""
    base, ids = station
    config = _config(base, "")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    serial = store.clip(ids[0])["device_serial"]
    _release_due_state(config, ids[0], failures=0, retry_at=T)
    assert not releases_due(store, serial, at=T + DAY), "no failure: nothing to retry"
    _release_due_state(config, ids[0], failures=2, retry_at=T + 120)
    assert not releases_due(store, serial, at=T + 119.999)
    assert releases_due(store, serial, at=T + 120)
    assert not releases_due(store, "ANOTHER-CAMERA", at=T + DAY)


def test_the_cameras_holding_a_clip_are_its_own_and_those_of_unreleased_duplicates(
        station: tuple[Path, list[str]]) -> None:
    """Rule: an acknowledged clip's bytes are on its camera and on every camera holding an
    unreleased duplicate of it; a released duplicate's camera no longer counts."""
    base, ids = station
    config = _config(base, "")
    db = sqlite3.connect(config.data_dir / "state.db")
    own = db.execute("SELECT device_serial FROM clips WHERE clip_id = ?", (ids[0],)).fetchone()[0]
    db.execute("UPDATE clips SET state = 'duplicate', duplicate_of = ?, device_serial = 'CAM-B' "
               "WHERE clip_id = ?", (ids[0], ids[1]))
    db.execute("UPDATE clips SET state = 'duplicate', duplicate_of = ?, device_serial = 'CAM-C', "
               "released_at = ? WHERE clip_id = ?", (ids[0], ACKED_AT, ids[2]))
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    assert cameras_holding(store, ids[0]) == sorted([own, "CAM-B"])
    assert cameras_holding(store, ids[2]) == ["CAM-C"]


def _release_kinds(store: Store, clip_id: str) -> list[str]:
    return [r["kind"] for r in store.query(
        "SELECT kind FROM custody_log WHERE clip_id = ? AND kind LIKE 'release.%' ORDER BY seq",
        (clip_id,))]


@pytest.mark.parametrize("last", ["release.started", "release.failed"])
def test_a_release_cut_short_by_a_crash_is_recorded_only_if_it_had_started(
        station: tuple[Path, list[str]], last: str) -> None:
    """Rule: a camera file missing after a crash counts as released only when the log says
    its deletion had started (release.started, nothing after it); otherwise its absence
    proves nothing and the clip stays acknowledged."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    row = store.clip(ids[0])
    with store.transaction() as tx:
        tx.log("release.started", ids[0], {"device_serial": row["device_serial"],
                                           "path": row["path"]})
        if last == "release.failed":
            tx.log("release.failed", ids[0], {"reason": "read-only card"})
    (camera_file,) = [p for p in (base / "sim").rglob(Path(row["path"]).name)]
    camera_file.unlink()  # the deletion happened; the crash came before its record
    with running_station(config) as running:
        device = sim_devices(running)[0]
        released = release_acknowledged(config, store, device, device.identify(),
                                        retry_failed=True)
    if last == "release.started":
        assert released == [ids[0]]
        assert store.clip(ids[0])["state"] == "released"
        body = json.loads(store.query_one(
            "SELECT body FROM custody_log WHERE clip_id = ? AND kind = 'clip.released'",
            (ids[0],))["body"])
        assert body["recovered"] is True and body["sha256"] == row["sha256"]
    else:
        assert released == []
        assert store.clip(ids[0])["state"] == "acknowledged"
        assert _release_kinds(store, ids[0])[-1] == "release.skipped"


def test_a_purge_is_logged_and_announced_with_its_digest_and_reason(
        station: tuple[Path, list[str]]) -> None:
    """Rule: every purge is a custody log entry and a clip.purged event naming the clip,
    its SHA-256 and why, and the clip records when it was purged."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 1\nlow_water_mb = 0\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    digest = store.clip(ids[0])["sha256"]
    assert purge(config, store, Vault(config.data_dir / "vault"), at=T + DAY) == [ids[0]]
    entry = store.query_one("SELECT body FROM custody_log WHERE kind = 'clip.purged'")
    assert entry is not None
    assert json.loads(entry["body"]) == {"from": "acknowledged", "to": "purged",
                                         "sha256": digest,
                                         "reason": "retention of 1 days passed"}
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    purged = [e for e in events if e["type"] == "clip.purged"]
    assert [e["data"] for e in purged] == [
        {"clip_id": ids[0], "sha256": digest, "reason": "retention of 1 days passed"}]
    assert parse_rfc3339(store.clip(ids[0])["purged_at"]).timestamp() > T


def test_a_failing_release_backs_off_from_a_minute_doubling_up_to_an_hour() -> None:
    """Rule: a release that keeps failing is tried after 1, 2, 4, ... minutes, never less
    often than hourly."""
    from agent.sync.retention import retry_delay

    assert [retry_delay(n) for n in range(0, 9)] == [
        60.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]


def test_each_kind_of_release_is_recorded_with_what_was_deleted_and_clears_its_error(
        station: tuple[Path, list[str]]) -> None:
    """Rule: every deletion from a camera is recorded — the clip released (an acknowledged
    clip), release.after_purge (a clip purged while it waited for its camera), or
    release.duplicate (a second copy of acknowledged bytes) — each with the camera, the path
    and the SHA-256 deleted, a clip.released event, the time, and the last error cleared."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    db = sqlite3.connect(config.data_dir / "state.db")
    rows = {r[0]: r for r in db.execute("SELECT clip_id, path, sha256 FROM clips")}
    first, second, third = (rows[i] for i in ids)
    # The third recording holds the first one's bytes: a duplicate of it.
    third_file = next((base / "sim").rglob(Path(third[1]).name))
    first_file = next((base / "sim").rglob(Path(first[1]).name))
    third_file.write_bytes(first_file.read_bytes())
    st = third_file.stat()
    db.execute("UPDATE clips SET state = 'duplicate', duplicate_of = ?, sha256 = ?, size = ?, "
               "mtime_ms = ? WHERE clip_id = ?",
               (ids[0], first[2], st.st_size, round(st.st_mtime * 1000), ids[2]))
    db.execute("UPDATE clips SET state = 'acknowledged', ack = '{}', acknowledged_at = ? "
               "WHERE clip_id = ?", (ACKED_AT, ids[0]))
    db.execute("UPDATE clips SET state = 'purged', ack = '{}', acknowledged_at = ? "
               "WHERE clip_id = ?", (ACKED_AT, ids[1]))
    db.execute("UPDATE clips SET release_failures = 1, release_error = 'read-only card', "
               "release_retry_at = 0")
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    with running_station(config) as running:
        device = sim_devices(running)[0]
        serial = device.identify().serial
        released = release_acknowledged(config, store, device, device.identify())
    assert sorted(released) == sorted(ids)
    assert [store.clip(i)["state"] for i in ids] == ["released", "purged", "duplicate"]
    for clip_id in ids:
        clip = store.clip(clip_id)
        assert clip["released_at"] is not None and clip["release_error"] is None, clip_id
        assert parse_rfc3339(clip["released_at"]).timestamp() > T
    bodies = {r["clip_id"]: (r["kind"], json.loads(r["body"])) for r in store.query(
        "SELECT clip_id, kind, body FROM custody_log WHERE kind IN ('clip.released', "
        "'release.after_purge', 'release.duplicate')")}
    assert bodies == {
        ids[0]: ("clip.released", {"from": "acknowledged", "to": "released",
                                   "device_serial": serial, "path": first[1],
                                   "sha256": first[2]}),
        ids[1]: ("release.after_purge", {"device_serial": serial, "path": second[1],
                                         "sha256": second[2], "after_purge": True}),
        ids[2]: ("release.duplicate", {"device_serial": serial, "path": third[1],
                                       "sha256": first[2], "duplicate_of": ids[0]})}
    events = {e["data"]["clip_id"]: e["data"] for e in (json.loads(r["payload"]) for r in
              store.query("SELECT payload FROM outbox WHERE topic LIKE '%/events'"))
              if e["type"] == "clip.released"}
    assert events == {
        ids[0]: {"clip_id": ids[0], "device_serial": serial, "path": first[1],
                 "sha256": first[2]},
        ids[1]: {"clip_id": ids[1], "device_serial": serial, "path": second[1],
                 "sha256": second[2], "after_purge": True},
        ids[2]: {"clip_id": ids[2], "device_serial": serial, "path": third[1],
                 "sha256": first[2], "duplicate_of": ids[0]}}
    assert not first_file.exists() and not third_file.exists()
    started = {r["clip_id"]: json.loads(r["body"]) for r in store.query(
        "SELECT clip_id, body FROM custody_log WHERE kind = 'release.started'")}
    assert started == {ids[0]: {"device_serial": serial, "path": first[1]},
                       ids[1]: {"device_serial": serial, "path": second[1]},
                       ids[2]: {"device_serial": serial, "path": third[1]}}


@pytest.mark.parametrize(("error", "after_start", "kind", "alert"), [
    ("gone", False, "release.skipped", False),     # the camera was unplugged
    ("changed", False, "release.skipped", False),  # another file under the name now
    ("missing", False, "release.skipped", False),  # deleted meanwhile
    ("changed", True, "release.failed", True),     # swapped between check and delete
    ("io", False, "release.skipped", True),        # a read-only or failing card
])
def test_a_release_failure_alerts_only_when_a_person_must_look(
        station: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, error: str,
        after_start: bool, kind: str, alert: bool) -> None:
    """Rule: a release that fails while the camera is there and could not be checked or
    deleted (or failed once the deletion had started) raises one release.failed alert; a
    camera unplugged, or a file gone or replaced before the deletion, does not."""
    from agent.errors import (
        DeviceError,
        DeviceGoneError,
        RecordingChangedError,
        RecordingMissingError,
    )

    errors = {"gone": DeviceGoneError, "changed": RecordingChangedError,
              "missing": RecordingMissingError, "io": DeviceError}
    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    with running_station(config) as running:
        device = sim_devices(running)[0]

        def failing(_rec: Any, *, sha256: str, before_delete: Any = None) -> None:
            if after_start:
                before_delete()
            raise errors[error](f"{error} on the camera")

        monkeypatch.setattr(device, "release", failing)
        assert release_acknowledged(config, store, device, device.identify()) == []
    assert store.clip(ids[0])["state"] == "acknowledged"
    kinds = [r["kind"] for r in store.query(
        "SELECT kind FROM custody_log WHERE clip_id = ? AND kind LIKE 'release.%' ORDER BY seq",
        (ids[0],))]
    assert kinds == (["release.started", kind] if after_start else [kind])
    alerts = [json.loads(r["body"])["code"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert alerts == (["release.failed"] if alert else [])
    clip = store.clip(ids[0])
    assert (clip["release_failures"], clip["release_error"]) == (1, f"{error} on the camera")


@pytest.mark.parametrize("case", ["deleted", "grew", "touched", "io", "unplugged"])
def test_before_hashing_a_changed_or_missing_camera_file_is_skipped_saying_why(
        station: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Rule: a camera file that is gone, or whose size or modification time differ from the
    copy's, is never deleted, nor even handed to the camera's delete (which would hash
    it); the reason is recorded, and only a camera that cannot be read (not one
    unplugged) raises an alert."""
    from agent.errors import DeviceError, DeviceGoneError

    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    row = store.clip(ids[0])
    camera_file = next((base / "sim").rglob(Path(row["path"]).name))
    with running_station(config) as running:
        device = sim_devices(running)[0]
        device.recordings()
        if case == "deleted":
            camera_file.unlink()
        elif case == "grew":
            with camera_file.open("ab") as f:
                f.write(b"\0")
            os.utime(camera_file, ns=(row["mtime_ms"] * 1_000_000,) * 2)
        elif case == "touched":
            os.utime(camera_file, ns=((row["mtime_ms"] + 5000) * 1_000_000,) * 2)
        else:
            error = DeviceError if case == "io" else DeviceGoneError

            def stat(_rec: Any) -> Any:
                raise error("the card does not answer")

            monkeypatch.setattr(device, "stat", stat)
        asked: list[Any] = []
        monkeypatch.setattr(device, "release", lambda rec, **_kw: asked.append(rec))
        assert release_acknowledged(config, store, device, device.identify()) == []
    assert asked == []  # refused by its name's stat, before the camera is asked to delete
    reason = store.clip(ids[0])["release_error"]
    size = row["size"]
    expected = {
        "deleted": "not on the camera any more (",
        "grew": f"changed on the camera since it was copied (size {size} -> {size + 1})",
        "touched": f"changed on the camera since it was copied (size {size} -> {size})",
        "io": "could not be checked on the camera: the card does not answer",
        "unplugged": "could not be checked on the camera: the card does not answer"}[case]
    assert reason.startswith(expected), reason
    assert store.clip(ids[0])["state"] == "acknowledged"
    if case != "deleted":
        assert camera_file.exists()
    alerts = [json.loads(r["body"])["code"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'alert'")]
    assert alerts == (["release.failed"] if case == "io" else [])
    assert [r["kind"] for r in store.query(
        "SELECT kind FROM custody_log WHERE clip_id = ? AND kind LIKE 'release.%'",
        (ids[0],))] == ["release.skipped"]


def test_a_new_dock_retries_a_failed_release_at_once_the_timer_waits_its_turn(
        station: tuple[Path, list[str]]) -> None:
    """Rule: while a failed release waits for its back-off, the periodic retry leaves it;
    docking the camera again tries it at once (the card may have been fixed)."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    _release_due_state(config, ids[0], failures=1, retry_at=4102444800.0)  # in 2100
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    with running_station(config) as running:
        device = sim_devices(running)[0]
        assert release_acknowledged(config, store, device, device.identify()) == []
        assert store.clip(ids[0])["state"] == "acknowledged"
        assert release_acknowledged(config, store, device, device.identify(),
                                    retry_failed=True) == [ids[0]]
    assert store.clip(ids[0])["state"] == "released"


def test_a_clip_being_released_elsewhere_is_skipped_and_the_clips_after_it_still_go(
        station: tuple[Path, list[str]]) -> None:
    """Rule: a clip whose release another dock worker has under way is neither released
    again nor purged meanwhile; the clips after it are released and purged as usual."""
    from agent.sync import retention

    base, ids = station
    config = _config(base, 'release = "after-ack"\nkeep_days = 0\n')
    _set(config, ids[0], "acknowledged", "2025-12-31T00:00:00.000Z")  # purged first
    _set(config, ids[1], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    retention._RELEASING.add(ids[0])
    try:
        with running_station(config) as running:
            device = sim_devices(running)[0]
            assert release_acknowledged(config, store, device, device.identify()) == [ids[1]]
        assert store.clip(ids[1])["state"] == "released"
        # Due by retention (the camera wait aside): the one being released is left alone.
        never = _config(base, 'release = "never"\nkeep_days = 0\n')
        assert purge(never, store, Vault(config.data_dir / "vault"), at=T + DAY) == [ids[1]]
    finally:
        retention._RELEASING.discard(ids[0])
    assert store.clip(ids[0])["state"] == "acknowledged"


def test_a_clip_held_for_its_officer_does_not_hold_back_the_clips_after_it(
        station: tuple[Path, list[str]]) -> None:
    """Rule: a clip kept on its camera (officer not verified) stays, and the later
    acknowledged clips of that camera are still released."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\n[officers]\n'
                           'hold_release_until_verified = true\n')
    for clip_id in ids[:2]:
        _set(config, clip_id, "acknowledged")
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET officer_status = 'valid' WHERE clip_id = ?", (ids[1],))
    db.execute("UPDATE clips SET officer_status = NULL WHERE clip_id = ?", (ids[0],))
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    with running_station(config) as running:
        device = sim_devices(running)[0]
        assert release_acknowledged(config, store, device, device.identify()) == [ids[1]]
    assert store.clip(ids[0])["state"] == "acknowledged"


def test_a_clip_is_not_purged_while_its_camera_copy_is_being_deleted(
        station: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: while a clip's file is being deleted from its camera, a purge running at the
    same moment leaves its vault copy alone (purged after the release is recorded)."""
    base, ids = station
    config = _config(base, 'release = "after-ack"\nkeep_days = 0\n')
    _set(config, ids[0], "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    # The purge's own view: no camera wait, retention over (the clip is due).
    never = _config(base, 'release = "never"\nkeep_days = 0\n')
    during: list[list[str]] = []
    with running_station(config) as running:
        device = sim_devices(running)[0]
        release = device.release

        def purging_meanwhile(rec: Any, **kwargs: Any) -> Any:
            during.append(purge(never, store, vault, at=T + DAY))
            return release(rec, **kwargs)

        monkeypatch.setattr(device, "release", purging_meanwhile)
        assert release_acknowledged(config, store, device, device.identify()) == [ids[0]]
    assert during == [[]]
    assert store.clip(ids[0])["state"] == "released"


def test_a_clip_is_purged_only_when_acknowledged_with_its_signed_ack_kept(
        station: tuple[Path, list[str]]) -> None:
    """Rule: the vault copy of a clip whose ack is not on record is never purged, even
    when its row says acknowledged; the refusal names the clip and its state."""
    from agent.errors import AgentError
    from agent.sync.retention import _purge_one

    base, ids = station
    config = _config(base, 'keep_days = 0\n')
    _set(config, ids[0], "acknowledged")
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET ack = NULL WHERE clip_id = ?", (ids[0],))
    db.execute("UPDATE clips SET state = 'uploaded', ack = '{}' WHERE clip_id = ?", (ids[1],))
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    for clip_id, state in ((ids[0], "acknowledged"), (ids[1], "uploaded")):
        clip = store.clip(clip_id)
        with pytest.raises(AgentError) as err:
            _purge_one(store, vault, clip_id, clip["sha256"], "test")
        assert str(err.value) == f"refusing to purge clip {clip_id} in state {state}"
        assert store.clip(clip_id)["state"] == state
        assert vault.path_for(clip["sha256"]).exists()


def test_the_sweep_at_start_removes_and_counts_every_orphan_object(
        station: tuple[Path, list[str]]) -> None:
    """Rule: every vault object a crash left behind a purge is removed at the next start,
    and the count reported is the number removed."""
    base, _ids = station
    config = _config(base, "")
    vault = Vault(config.data_dir / "vault")
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'purged'")
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    assert sweep_purged(store, vault) == 3
    assert not any(vault.has(c["sha256"]) for c in store.clips())


def test_purge_and_the_release_back_off_go_by_the_clock_when_no_time_is_given(
        station: tuple[Path, list[str]]) -> None:
    """Rule: the housekeeping timer's purge and a dock's check of due releases use the
    current time: a clip acknowledged long ago is purged, a back-off long past is due."""
    base, ids = station
    config = _config(base, 'release = "never"\nkeep_days = 1\n')
    _set(config, ids[0], "acknowledged")
    _release_due_state(config, ids[1], failures=1, retry_at=T)
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    serial = store.clip(ids[1])["device_serial"]
    assert releases_due(store, serial) is True
    assert ids[0] in purge(config, store, Vault(config.data_dir / "vault"))


@pytest.mark.parametrize("count", [1, 2])
def test_a_failing_release_alerts_saying_how_many_clips_stay_and_when_it_is_tried_again(
        station: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Rule: the alert of a camera whose clips cannot be deleted says how many clips stay
    on it, why, and when they are tried again (in a minute, then at most hourly)."""
    from agent.errors import DeviceError

    base, ids = station
    config = _config(base, 'release = "after-ack"\n')
    for clip_id in ids[:count]:
        _set(config, clip_id, "acknowledged")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    with running_station(config) as running:
        device = sim_devices(running)[0]
        serial = device.identify().serial

        def stat(_rec: Any) -> Any:
            raise DeviceError("the card does not answer")

        monkeypatch.setattr(device, "stat", stat)
        assert release_acknowledged(config, store, device, device.identify()) == []
    (alert,) = [json.loads(r["body"]) for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'alert'")]
    clips = "1 clip" if count == 1 else "2 clips"
    assert alert["message"] == (
        f"{clips} acknowledged by the platform could not be deleted from camera {serial}: "
        "could not be checked on the camera: the card does not answer; they stay on the "
        "camera and are tried again in 60 s, then less often (at most every 60 min), and at "
        "every dock")
