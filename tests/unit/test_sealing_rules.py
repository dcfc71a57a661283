"""Sealing and checkpoints, field by field: what the station signs is what the store holds.

One station is offloaded for the module (tests/support/templates.py); each test takes a
copy, puts clips back to ``copied`` where it needs to, and seals them with the station's
own Custody, then reads back the signed manifest, the log entry, the event and the
checkpoint, and checks each against the clip row and an independent Merkle root.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import Config
from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.custody.manifest import SCHEMA, build_manifest
from agent.custody.sealer import Custody, identity_problem, key_paths
from agent.store import Store
from agent.timeutil import rfc3339
from agent.vault import Vault
from tests.conftest import write_station_config
from tests.support.stations import camera, running_station
from tests.support.templates import built_once


def _build(base: Path) -> None:
    config = config_mod.load(write_station_config(base))
    camera(config, clips=3, serial="SIMSEAL", officer_id="012345")
    with running_station(config) as station:
        assert station.run_once().ok


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once("sealing-rules", tmp_path_factory, _build)


@pytest.fixture
def custody(template: Path, tmp_path: Path) -> Iterator[tuple[Config, Store, Custody, list[str]]]:
    import shutil

    shutil.copytree(template / "data", tmp_path / "data")
    shutil.copytree(template / "sim", tmp_path / "sim")
    config = config_mod.load(write_station_config(tmp_path))
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    ids = [r["clip_id"] for r in store.query("SELECT clip_id FROM clips ORDER BY clip_id")]
    keeper = Custody(config, store, Vault(config.data_dir / "vault"))
    keeper.start()
    yield config, store, keeper, ids
    keeper.stop()
    store.close()


def _unseal(config: Config, *clip_ids: str) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    for clip_id in clip_ids:
        db.execute("UPDATE clips SET state = 'copied', manifest = NULL, sealed_at = NULL "
                   "WHERE clip_id = ?", (clip_id,))
    db.commit()
    db.close()


def _station_key(config: Config) -> StationKey:
    return StationKey.load(key_paths(config)[0])


def test_a_sealed_manifest_is_the_clip_row_signed_by_the_station(
        custody: tuple[Config, Store, Custody, list[str]]) -> None:
    """Rule: sealing signs exactly the clip as recorded (file, digest, device, station, ingest),
    stores that envelope, logs its digest, and announces it; nothing else is sealed."""
    config, store, keeper, ids = custody
    _unseal(config, ids[0])
    other_before = store.clip(ids[1])["manifest"]
    events_before = store.query_one("SELECT MAX(id) AS n FROM outbox")["n"]
    log_before = store.log_size()
    envelope = keeper.seal(ids[0])
    assert envelope is not None
    key = _station_key(config)
    payload = dsse.verify_envelope(envelope, {key.keyid: key.public_key},
                                   expected_type=dsse.MANIFEST)
    row = store.clip(ids[0])
    assert row["state"] == "sealed" and json.loads(row["manifest"]) == envelope
    assert row["sealed_at"] is not None
    manifest = json.loads(payload)
    assert payload == canonicalize(manifest)
    assert manifest["schema"] == SCHEMA == "bwc.manifest/v1"
    assert manifest["clip_id"] == ids[0]
    assert manifest["file"] == {"name": row["name"], "path": row["path"], "size": row["size"],
                                "mtime": rfc3339(row["mtime_ms"] / 1000),
                                "digests": {"sha256": row["sha256"]}}
    assert manifest["device"]["serial"] == "SIMSEAL"
    assert manifest["station"] == {"id": "ST-0001", "key_id": key.keyid}
    assert manifest["ingest"] == {"docked_at": row["docked_at"], "copied_at": row["copied_at"],
                                  "verified": True}
    assert manifest["media"] == json.loads(row["media"])
    # What sealing worked out (officer binding, corrected times, flags) is what the row says.
    assert manifest["flags"] == json.loads(row["flags"]) and manifest["flags"]
    assert manifest["officer"]["id"] == "012345"
    assert manifest["officer"]["credential_id"] == row["credential_id"]
    assert manifest["officer"]["status"] == row["officer_status"]
    assert manifest["officer"]["roster_version"] == row["roster_version"]
    assert manifest["officer"]["verified"] is False
    assert (manifest["recorded"]["start"], manifest["recorded"]["end"]) == (row["start_at"],
                                                                            row["end_at"])
    assert {"camera_start", "camera_end", "time_source"} <= set(manifest["recorded"])
    entries = store.query("SELECT kind, body FROM custody_log WHERE seq > ?", (log_before,))
    assert entries[0]["kind"] == "clip.sealed"
    body = json.loads(entries[0]["body"])
    assert body["sha256"] == row["sha256"]
    assert body["manifest_sha256"] == hashlib.sha256(payload).hexdigest()
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' AND id > ? ORDER BY id",
        (events_before,))]
    assert events[0]["type"] == "clip.sealed"
    assert events[0]["data"] == {"clip_id": ids[0], "sha256": row["sha256"],
                                 "size": row["size"], "important": bool(row["important"]),
                                 "manifest": envelope}
    assert store.clip(ids[1])["manifest"] == other_before
    assert keeper.seal(ids[0]) is None, "a sealed clip is never sealed again"


def test_the_manifest_of_a_bare_row_says_the_officer_is_unverified(
        custody: tuple[Config, Store, Custody, list[str]]) -> None:
    """Rule: without a credential check the manifest names the camera's officer, unverified,
    the camera's recording times, and the row's flags."""
    _config, store, _keeper, ids = custody
    row = store.clip(ids[0])
    manifest = build_manifest(row, station_id="ST-0009", key_id="k" * 64)
    assert manifest["officer"] == {"id": row["officer_id"] or None,
                                   "name": row["officer_name"] or None,
                                   "unit_code": row["unit_code"] or None,
                                   "unit_name": row["unit_name"] or None,
                                   "credential_id": None, "verified": False}
    assert manifest["recorded"] == {"start": row["recorded_start"], "end": row["recorded_end"],
                                    "important": bool(row["important"])}
    assert manifest["flags"] == json.loads(row["flags"])
    assert manifest["case_id"] == row["case_id"]
    assert manifest["station"] == {"id": "ST-0009", "key_id": "k" * 64}
    assert manifest["device"] == {"serial": row["device_serial"], "vendor": row["device_vendor"],
                                  "model": row["device_model"],
                                  "firmware": row["device_firmware"],
                                  "clock_offset_s": row["clock_offset_s"]}
    assert build_manifest(row, station_id="S", key_id="k", flags=[])["flags"] == []
    assert manifest["file"]["digests"] == {"sha256": row["sha256"]}
    bare = {**dict(row), "media": None, "officer_id": "", "officer_name": ""}
    manifest = build_manifest(bare, station_id="S", key_id="k")  # type: ignore[arg-type]
    assert manifest["media"] is None
    assert (manifest["officer"]["id"], manifest["officer"]["name"]) == (None, None)
    assert manifest["clip_id"] == row["clip_id"] and manifest["file"]["name"] == row["name"]


def _checkpoints(store: Store) -> list[Any]:
    return store.query("SELECT size, root, at, envelope FROM checkpoints ORDER BY size")


def test_a_checkpoint_signs_the_root_of_the_whole_log_only_when_it_grew(
        custody: tuple[Config, Store, Custody, list[str]]) -> None:
    """Rule: a checkpoint is the station's signature over the Merkle root of every log entry
    so far; none is made while the log has not grown since the last one."""
    config, store, keeper, _ids = custody
    keeper.checkpoint()
    assert keeper.checkpoint() is None, "the log has not grown"
    count = len(_checkpoints(store))
    with store.transaction() as tx:
        tx.log("test.entry", None, {"n": 1})
    envelope = keeper.checkpoint()
    assert envelope is not None
    key = _station_key(config)
    body = json.loads(dsse.verify_envelope(envelope, {key.keyid: key.public_key},
                                           expected_type=dsse.CHECKPOINT))
    size = store.log_size()
    leaves = [bytes(r["leaf"]) for r in store.query("SELECT leaf FROM custody_log ORDER BY seq")]
    assert len(leaves) == size
    assert body["station_id"] == "ST-0001" and body["size"] == size
    assert body["root"] == merkle.root(leaves).hex()
    rows = _checkpoints(store)
    assert len(rows) == count + 1
    assert (rows[-1]["size"], rows[-1]["root"], rows[-1]["at"]) == (size, body["root"],
                                                                     body["at"])
    assert json.loads(rows[-1]["envelope"]) == envelope
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    assert [e["data"] for e in events if e["type"] == "log.checkpoint"][-1] == \
        {"checkpoint": envelope, **body}
    assert keeper.checkpoint() is None


def test_sealing_what_was_left_copied_seals_each_and_checkpoints_once(
        custody: tuple[Config, Store, Custody, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: at start and on the timer, every clip left copied is sealed; one that fails
    does not hold back the others, and one checkpoint covers them."""
    from agent.errors import StoreError

    config, store, keeper, ids = custody
    _unseal(config, *ids)
    real_seal = keeper.seal

    def seal(clip_id: str) -> Any:
        if clip_id in (ids[0], ids[1]):
            raise StoreError("database is locked")
        return real_seal(clip_id)

    monkeypatch.setattr(keeper, "seal", seal)
    before = len(_checkpoints(store))
    assert keeper.seal_pending() == 1
    assert [store.clip(i)["state"] for i in ids] == ["copied", "copied", "sealed"]
    assert len(_checkpoints(store)) == before + 1
    assert _checkpoints(store)[-1]["size"] == store.log_size()
    monkeypatch.setattr(keeper, "seal", real_seal)
    assert keeper.seal_pending() == 2
    assert keeper.seal_pending() == 0
    assert len(_checkpoints(store)) == before + 2


def test_a_missing_key_or_certificate_is_replaced_only_before_the_station_signed(
        tmp_path: Path) -> None:
    """Rule: a new station makes its key and certificate; once it has signed, a missing key
    or certificate stops it with a message saying what to restore."""
    key, cert = tmp_path / "station.key", tmp_path / "station.pem"
    assert identity_problem(key, cert, has_signed=False) is None
    cert.write_text("x")
    assert identity_problem(key, cert, has_signed=False) == (
        f"station key {key} is missing, but this station has already signed (certificate "
        f"{cert} exists or clips are sealed); restore the key from the backup of the keys "
        "directory — a new key cannot vouch for what the old one signed")
    cert.unlink()
    assert identity_problem(key, cert, has_signed=True) is not None
    key.write_text("x")
    assert identity_problem(key, cert, has_signed=False) is None
    assert identity_problem(key, cert, has_signed=True) == (
        f"station certificate {cert} is missing, but this station has already signed clips; "
        "restore it from the backup of the keys directory (or have the platform CA issue a "
        "new one for the same key)")
    cert.write_text("x")
    assert identity_problem(key, cert, has_signed=True) is None


def test_a_station_that_has_signed_refuses_to_start_without_its_key_or_certificate(
        template: Path, tmp_path: Path) -> None:
    """Rule: once a station has signed, a missing key or certificate stops the start with
    the message saying what to restore; nothing new is made in their place."""
    import shutil

    from agent.errors import ConfigError

    for lost in ("station.key", "station.pem"):
        base = tmp_path / lost
        shutil.copytree(template / "data", base / "data")
        (base / "sim").mkdir()
        config = config_mod.load(write_station_config(base))
        key_path, cert_path = key_paths(config)
        (config.data_dir / "keys" / lost).unlink()
        store = Store(config.data_dir / "state.db", station_id=config.station.id)
        keeper = Custody(config, store, Vault(config.data_dir / "vault"))
        with pytest.raises(ConfigError) as err:
            keeper.start()
        assert str(err.value) == identity_problem(key_path, cert_path, has_signed=True)
        assert not (config.data_dir / "keys" / lost).exists()
        store.close()


def test_a_new_station_makes_its_identity_and_a_certificate_for_a_kept_key(
        tmp_path: Path) -> None:
    """Rule: a station that has signed nothing makes its key and certificate at the first
    start; a key whose certificate is missing keeps its identity and gets a certificate
    naming this station."""
    from agent.custody.keys import certificate_station_id, keyid_of, load_certificate

    config = config_mod.load(write_station_config(tmp_path))
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    keeper = Custody(config, store, Vault(config.data_dir / "vault"))
    keeper.start()
    keeper.stop()
    key_path, cert_path = key_paths(config)
    assert key_path.stat().st_mode & 0o777 == 0o600
    keyid = StationKey.load(key_path).keyid
    cert_path.unlink()
    keeper = Custody(config, store, Vault(config.data_dir / "vault"))
    keeper.start()
    assert keeper.key_id == keyid
    cert = load_certificate(cert_path)
    assert keyid_of(cert.public_key()) == keyid  # type: ignore[arg-type]
    assert certificate_station_id(cert) == "ST-0001"
    keeper.stop()
    store.close()


def test_the_checkpoint_timer_seals_what_was_left_and_survives_a_failure(
        template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: every checkpoint interval the station seals clips left copied (a busy store
    in their dock session) and signs a checkpoint; a failing round is tried again at the
    next one, the timer goes on."""
    import dataclasses
    import shutil
    import time

    from agent.errors import StoreFullError

    shutil.copytree(template / "data", tmp_path / "data")
    (tmp_path / "sim").mkdir()
    config = config_mod.load(write_station_config(tmp_path))
    config = dataclasses.replace(config, custody=dataclasses.replace(
        config.custody, checkpoint_interval_s=0.05))  # type: ignore[arg-type]
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    ids = [r["clip_id"] for r in store.query("SELECT clip_id FROM clips ORDER BY clip_id")]
    _unseal(config, ids[0])
    keeper = Custody(config, store, Vault(config.data_dir / "vault"))
    real = keeper.seal_pending
    rounds: list[int] = []

    def flaky() -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise StoreFullError("database or disk is full")
        return real()

    monkeypatch.setattr(keeper, "seal_pending", flaky)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while store.clip(ids[0])["state"] != "sealed" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        keeper.stop()
    assert store.clip(ids[0])["state"] == "sealed"
    assert len(rounds) >= 2
    newest = _checkpoints(store)[-1]
    assert newest["size"] == store.log_size()
    store.close()


def test_the_checkpoint_timer_never_keeps_the_agent_up_and_stopping_waits_for_it(
        custody: tuple[Config, Store, Custody, list[str]]) -> None:
    """Rule: the checkpoint timer runs beside the agent without keeping it alive, and
    stopping waits for it to end before the final checkpoint is signed."""
    _config, _store, keeper, _ids = custody
    timer = keeper._timer
    assert timer is not None and timer.daemon and timer.is_alive()
    keeper.stop()
    assert not timer.is_alive()


def test_stopping_waits_at_most_ten_seconds_for_the_timer_then_signs_the_last_checkpoint(
        custody: tuple[Config, Store, Custody, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a checkpoint timer stuck in a round delays the stop by 10 s at most; the
    final checkpoint is signed all the same."""
    _config, store, keeper, _ids = custody

    class Stuck:
        timeouts: list[float | None] = []

        def join(self, timeout: float | None = None) -> None:
            self.timeouts.append(timeout)

    real = keeper._timer
    stuck = Stuck()
    monkeypatch.setattr(keeper, "_timer", stuck)
    with store.transaction() as tx:
        tx.log("note", None, {"why": "the log grew"})
    keeper._stop.set()
    assert real is not None
    real.join(timeout=10)
    keeper.stop()
    assert stuck.timeouts == [10]
    (size,) = [r["size"] for r in store.query("SELECT MAX(size) AS size FROM checkpoints")]
    assert size == store.log_size()
