"""Deleting evidence: only after a valid platform ack — every path that deletes is walked here.

There are exactly two ways bytes of a clip are deleted: release from the
camera (``Device.release``) and purge from the vault (``Vault.remove``).  A
static scan pins down every call site; the dynamic tests put a clip in every
state and show that neither path deletes anything without a valid ack.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey, keyid_of
from agent.errors import AgentError
from agent.store import STATES, Store
from agent.sync.inbound import Inbound
from agent.sync.mqtt import InboundMessage
from agent.sync.retention import purge, release_acknowledged
from agent.timeutil import rfc3339
from agent.vault import Vault
from tests.support.stations import camera, running_station, sim_devices

ROOT = Path(__file__).resolve().parents[2]


def _calls(name: str) -> set[str]:
    """Every ``<something>.<name>(arg)`` call in agent/ and drivers/: 'file:function'.

    One positional argument: ``Device.release(recording)`` and ``Vault.remove(sha256)``
    (OpenCV's argument-less ``release()`` of a capture handle is not a deletion).
    """
    found = set()
    for path in sorted([*ROOT.glob("agent/**/*.py"), *ROOT.glob("drivers/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == name and len(node.args) == 1):
                    found.add(f"{path.relative_to(ROOT).as_posix()}:{func.name}")
    return found


def test_the_only_deleting_call_sites_are_the_guarded_ones() -> None:
    assert _calls("release") == {
        "agent/sync/retention.py:_release_one",  # after ack, re-hashed on the camera
        "drivers/gat947.py:release",  # passes Device.release on to the camera's volume
    }
    assert _calls("remove") == {
        "agent/sync/retention.py:_purge_one",      # released/acknowledged with an ack only
        "agent/sync/retention.py:sweep_purged",    # objects of already purged clips
        "agent/clipcheck.py:_read_back",           # a copy that failed verification, never
                                                   # an object that existed before
    }


@pytest.fixture
def sealed(station_config: Callable[..., Config]) -> tuple[Config, Path]:
    config = station_config("[retention]\nkeep_days = 0\nlow_water_mb = 100000000\n")
    cam = camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
    return config, cam


def _files(cam: Path) -> list[Path]:
    return sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file())


def _vault(config: Config) -> list[Path]:
    return sorted(p for p in (config.data_dir / "vault" / "sha256").rglob("*") if p.is_file())


def _force_state(config: Config, state: str, ack: str | None = None) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = ?, ack = ?, acknowledged_at = "
               "'2020-01-01T00:00:00.000Z'", (state, ack))
    db.commit()
    db.close()


@pytest.mark.parametrize("state", [s for s in STATES if s not in ("acknowledged", "released",
                                                                   "purged")])
def test_no_state_before_acknowledged_deletes_anything(sealed: tuple[Config, Path],
                                                       state: str) -> None:
    config, cam = sealed
    _force_state(config, state)
    camera_files, vault_files = _files(cam), _vault(config)
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault = Vault(config.data_dir / "vault")
    with running_station(config) as station:
        device = sim_devices(station)[0]
        assert release_acknowledged(config, store, device, device.identify()) == []
    assert purge(config, store, vault) == []
    assert _files(cam) == camera_files
    assert _vault(config) == vault_files


def test_acknowledged_without_an_ack_record_is_never_purged(sealed: tuple[Config, Path]) -> None:
    config, _cam = sealed
    _force_state(config, "released", ack=None)
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    vault_files = _vault(config)
    with pytest.raises(AgentError, match="refusing to purge"):
        purge(config, store, Vault(config.data_dir / "vault"))
    assert _vault(config) == vault_files


def _ack(key: StationKey, clip_id: str, sha256: str, station: str = "ST-0001") -> bytes:
    payload = {"clip_id": clip_id, "sha256": sha256, "station_id": station,
               "stored_at": "2026-11-28T00:00:00.000Z", "location": "s3://evidence/x"}
    return json.dumps(dsse.sign_envelope(dsse.ACK, canonicalize(payload), [key])).encode()


def _status_command(key: StationKey, station_id: str, command_id: str, *,
                    reply_to: str | None = None) -> InboundMessage:
    """A signed ``status`` command, valid for ten minutes, as the broker delivers it."""
    issued = dt.datetime.now(dt.UTC)
    payload = {"id": command_id, "name": "status", "station_id": station_id,
               "issued_at": rfc3339(issued),
               "expires_at": rfc3339(issued + dt.timedelta(minutes=10)), "args": {},
               "reply_to": reply_to or f"bwc/v1/stations/{station_id}/reply/ops",
               "correlation_id": command_id}
    return InboundMessage(
        topic=f"bwc/v1/stations/{station_id}/cmd/status", name="status",
        payload=json.dumps(dsse.sign_envelope(dsse.COMMAND, canonicalize(payload),
                                              [key])).encode())


def _events(store: Store) -> list[dict[str, Any]]:
    """The platform events in the outbox, oldest first."""
    return [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY rowid")]


def test_only_a_valid_ack_leads_to_release_and_purge(sealed: tuple[Config, Path]) -> None:
    config, cam = sealed
    platform_key, stranger = StationKey.generate(), StationKey.generate()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'uploaded'")
    db.commit()
    released: list[str] = []
    inbound = Inbound(config, store, {keyid_of(platform_key.public_key): platform_key.public_key},
                      respond=lambda *a: None, commands={}, on_acknowledged=released.append)
    rows = store.clips()
    first, second = rows[0], rows[1]
    # Refused: wrong key, wrong digest, wrong station, unknown clip, not JSON.
    assert inbound.handle_ack(_ack(stranger, first["clip_id"], first["sha256"])) is None
    assert inbound.handle_ack(_ack(platform_key, first["clip_id"], "0" * 64)) is None
    assert inbound.handle_ack(_ack(platform_key, first["clip_id"], first["sha256"],
                                   station="ST-9999")) is None
    assert inbound.handle_ack(_ack(platform_key, "no-such-clip", first["sha256"])) is None
    assert inbound.handle_ack(b"not json") is None
    reasons = [json.loads(r["body"])["reason"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'ack.refused' ORDER BY seq")]
    assert len(reasons) == 5
    assert "unknown keyid" in reasons[0] or "signature" in reasons[0]
    assert "does not match the sealed digest" in reasons[1]
    assert "ST-9999" in reasons[2]
    assert "unknown clip" in reasons[3]
    assert "not JSON" in reasons[4]
    assert released == [] and {r["state"] for r in store.clips()} == {"uploaded"}
    # Accepted: the first clip only.
    assert inbound.handle_ack(_ack(platform_key, first["clip_id"], first["sha256"])) == \
        first["clip_id"]
    assert released == [first["clip_id"]]
    assert inbound.handle_ack(_ack(platform_key, first["clip_id"], first["sha256"])) is None
    with running_station(config) as station:
        device = sim_devices(station)[0]
        assert release_acknowledged(config, store, device, device.identify()) == \
            [first["clip_id"]]
    names = [p.name for p in _files(cam)]
    assert first["name"] not in names and second["name"] in names
    vault = Vault(config.data_dir / "vault")
    assert purge(config, store, vault) == [first["clip_id"]]
    assert not vault.has(first["sha256"]) and vault.has(second["sha256"])
    assert store.clip(first["clip_id"])["state"] == "purged"
    assert store.clip(second["clip_id"])["state"] == "uploaded"


def test_an_ack_is_settled_only_once_applied_even_when_the_store_fails(
        sealed: tuple[Config, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import StoreError

    config, _cam = sealed
    platform_key = StationKey.generate()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'uploaded'")
    db.commit()
    clip = store.clips()[0]
    settled: list[InboundMessage] = []
    inbound = Inbound(config, store, {keyid_of(platform_key.public_key): platform_key.public_key},
                      respond=lambda *a: None, commands={}, on_acknowledged=lambda _c: None,
                      settle=settled.append)
    real = store.transaction
    failures = iter([StoreError("database is locked (a CLI was writing)")] * 2)

    def flaky() -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real()

    monkeypatch.setattr(store, "transaction", flaky)
    monkeypatch.setattr("agent.sync.inbound.min", lambda *_a: 0.01, raising=False)
    message = InboundMessage(topic=f"bwc/v1/stations/{config.station.id}/ack", name="ack",
                             payload=_ack(platform_key, clip["clip_id"], clip["sha256"]),
                             response_topic=None, correlation_data=None)
    inbound.start()
    inbound.deliver(message)
    inbound.queue.join()  # handled (or given up) before the agent stops
    inbound.stop()
    assert settled == [message]
    assert next(failures, None) is None, "both failures were met and retried"
    assert store.clip(clip["clip_id"])["state"] == "acknowledged"


def test_purge_leaves_a_clip_alone_while_its_camera_copy_is_being_released(
        sealed: tuple[Config, Path]) -> None:
    config, cam = sealed  # keep_days = 0 and a huge low-water mark: purge wants everything
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    _acknowledge_all(config)
    vault = Vault(config.data_dir / "vault")
    purged_meanwhile: list[list[str]] = []
    with running_station(config) as station:
        device = sim_devices(station)[0]
        real_release = device.release

        def slow_release(rec: Any, **checks: Any) -> None:
            # The housekeeping timer purges while this dock worker deletes from the camera.
            purged_meanwhile.append(purge(config, store, vault))
            real_release(rec, **checks)

        device.release = slow_release  # type: ignore[method-assign]
        released = release_acknowledged(config, store, device, device.identify())
    assert len(released) == 2 and _files(cam) == []
    # Each purge during a release skipped the clip being released (only the other one went).
    assert all(row["clip_id"] not in batch
               for row, batch in zip(sorted(store.clips(), key=lambda r: r["clip_id"]),
                                     purged_meanwhile, strict=True))
    assert {r["state"] for r in store.clips()} <= {"released", "purged"}
    assert sorted(purge(config, store, vault) + [c for b in purged_meanwhile for c in b]) == \
        sorted(r["clip_id"] for r in store.clips())
    assert {r["state"] for r in store.clips()} == {"purged"}
    kinds = [r["kind"] for r in store.query("SELECT kind FROM custody_log ORDER BY seq")]
    # The clip purged while it waited for its camera is still released from it.
    assert (kinds.count("clip.released"), kinds.count("release.after_purge")) == (1, 1)
    events = _events(store)
    assert len([e for e in events if e["type"] == "clip.released"]) == 2


def test_an_ack_that_overtakes_the_last_patch_response_still_reports_the_upload(
        sealed: tuple[Config, Path]) -> None:
    config, _cam = sealed
    platform_key = StationKey.generate()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    _force_state(config, "uploading")
    clip = store.clips()[0]
    inbound = Inbound(config, store, {keyid_of(platform_key.public_key): platform_key.public_key},
                      respond=lambda *a: None, commands={}, on_acknowledged=lambda _c: None)
    assert inbound.handle_ack(_ack(platform_key, clip["clip_id"], clip["sha256"])) == \
        clip["clip_id"]
    events = _events(store)
    mine = [e["type"] for e in events if e["data"].get("clip_id") == clip["clip_id"]]
    assert mine[-2:] == ["clip.uploaded", "clip.acknowledged"]


def test_release_refuses_a_camera_file_that_changed(sealed: tuple[Config, Path]) -> None:
    config, cam = sealed
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    row = store.clips()[0]
    _force_state(config, "acknowledged", ack="{}")
    target = next(p for p in _files(cam) if p.name == row["name"])
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF  # same size, same mtime, different bytes
    target.write_bytes(bytes(data))
    import os
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with running_station(config) as station:
        device = sim_devices(station)[0]
        released = release_acknowledged(config, store, device, device.identify())
    assert row["clip_id"] not in released
    assert target.exists()
    skipped = [json.loads(r["body"])["reason"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'release.skipped' AND clip_id = ?",
        (row["clip_id"],))]
    assert skipped and "not the acknowledged" in skipped[0]
    assert hashlib.sha256(bytes(data)).hexdigest() in skipped[0]


def test_disk_full_stops_ingest_keeps_recordings_and_alerts(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nmin_free_mb = 1000000000\n")
    cam = camera(config, clips=2)
    before = _files(cam)
    with running_station(config) as station:
        summary = station.run_once()
        report = summary.reports[0]
        store = station.store
        assert store is not None
        assert not summary.ok
        assert report.errors and report.errors[0].startswith("disk full:")
        assert "ingest.min_free_mb" in report.errors[0]
        assert {r["state"] for r in store.clips()} == {"discovered"}
        alert = store.query_one("SELECT body FROM custody_log WHERE kind = 'alert'")
        assert alert is not None and json.loads(alert["body"])["code"] == "disk.full"
    assert _files(cam) == before
    assert _vault(config) == []


def _acknowledge_all(config: Config) -> None:
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'acknowledged', ack = '{\"signed\": true}', "
               "acknowledged_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
    db.commit()
    db.close()


def test_release_never_keeps_the_camera_and_purges_acknowledged(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[retention]\nrelease = \"never\"\nkeep_days = 0\n")
    cam = camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
        device = sim_devices(station)[0]
        _acknowledge_all(config)
        store = station.store
        assert store is not None
        assert release_acknowledged(config, store, device, device.identify()) == []
        purged = purge(config, store, Vault(config.data_dir / "vault"))
        assert len(purged) == 2
        reasons = {json.loads(r["body"])["reason"] for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.purged'")}
    assert reasons == {"retention of 0 days passed"}
    assert len(_files(cam)) == 2, "release = never leaves the camera untouched"
    assert _vault(config) == []


def test_low_water_purges_oldest_acknowledged_before_retention(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[retention]\nrelease = \"never\"\nkeep_days = 365\n"
                            "low_water_mb = 100000000\n")
    camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        vault = Vault(config.data_dir / "vault")
        assert purge(config, store, vault) == [], "nothing acknowledged: nothing purged"
        _acknowledge_all(config)
        assert len(purge(config, store, vault)) == 2
        reasons = {json.loads(r["body"])["reason"] for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'clip.purged'")}
    assert reasons == {"free space under the low-water mark (100000000 MB)"}


def test_agent_refuses_a_key_readable_by_others(station_config: Callable[..., Config],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from agent.cli.main import main

    config = station_config()
    assert main(["keys", "init", "--config", str(config.source)]) == 0
    key = config.data_dir / "keys" / "station.key"
    os.chmod(key, 0o644)
    capsys.readouterr()
    assert main(["run", "--once", "--config", str(config.source)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and "chmod 600" in err
    os.chmod(key, 0o600)
    other = StationKey.generate()
    other.save(key)  # a key that does not match the certificate
    assert main(["run", "--once", "--config", str(config.source)]) == 2
    assert "does not match" in capsys.readouterr().err


def test_a_lost_certificate_is_not_silently_replaced_once_clips_are_signed(
        sealed: tuple[Config, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    config, _cam = sealed
    cert = config.data_dir / "keys" / "station.pem"
    cert.unlink()
    capsys.readouterr()
    assert main(["run", "--once", "--config", str(config.source)]) == 2
    err = capsys.readouterr().err
    assert f"station certificate {cert} is missing, but this station has already signed " \
        "clips; restore it" in err
    assert not cert.exists()


def test_an_io_error_on_the_camera_is_not_taken_for_a_finished_release(
        sealed: tuple[Config, Path]) -> None:
    import errno

    from agent.errors import DeviceError, DeviceGoneError

    config, cam = sealed
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    row = store.clips()[0]
    _force_state(config, "acknowledged", ack="{}")
    with store.transaction() as tx:  # a release was started before a crash
        tx.log("release.started", row["clip_id"], {"device_serial": "SIM0001",
                                                   "path": row["path"]})
    with running_station(config) as station:
        device = sim_devices(station)[0]

        def failing_stat(rec: Any) -> tuple[int, float]:
            try:
                raise OSError(errno.EIO, "Input/output error")
            except OSError as exc:
                raise DeviceError(f"stat {rec.path!r}: I/O error") from exc

        device.stat = failing_stat  # type: ignore[method-assign]
        released = release_acknowledged(config, store, device, device.identify())
        assert released == []

        def camera_gone(rec: Any) -> tuple[int, float]:
            # The volume root vanished (unplugged): ENOENT, but about the camera.
            try:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            except OSError as exc:
                raise DeviceGoneError("camera unplugged (volume root gone)") from exc

        device.stat = camera_gone  # type: ignore[method-assign]
        released = release_acknowledged(config, store, device, device.identify())
    assert released == []
    assert store.clip(row["clip_id"])["state"] == "acknowledged"
    skipped = [json.loads(r["body"])["reason"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'release.skipped'")]
    assert any("could not be checked on the camera" in s for s in skipped)
    assert row["name"] in {p.name for p in _files(cam)}


def test_a_command_the_broker_delivers_again_is_answered_again_not_run_again(
        sealed: tuple[Config, Path]) -> None:

    config, _cam = sealed
    platform_key = StationKey.generate()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    answers: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []

    def status(args: dict[str, Any]) -> dict[str, Any]:
        runs.append(args)
        return {"run": len(runs)}

    inbound = Inbound(config, store, {keyid_of(platform_key.public_key): platform_key.public_key},
                      respond=lambda _t, _c, body: answers.append(json.loads(body)),
                      commands={"status": status}, on_acknowledged=lambda _c: None)
    sent = _status_command(platform_key, config.station.id, "c0ffee00-0001")

    def message(*, dup: bool) -> InboundMessage:
        return dataclasses.replace(sent, dup=dup)

    first = inbound.handle_command(message(dup=False))
    again = inbound.handle_command(message(dup=True))  # the broker's resend
    assert first["ok"] and again == first and len(runs) == 1
    replay = inbound.handle_command(message(dup=False))  # somebody publishes it again
    assert not replay["ok"] and "already received (replay)" in replay["error"]
    assert len(runs) == 1 and [a["ok"] for a in answers] == [True, True, False]
    kinds = [r["kind"] for r in store.query("SELECT kind FROM custody_log ORDER BY seq")]
    assert kinds[-3:] == ["command.accepted", "command.redelivered", "command.refused"]
    events = _events(store)
    alerts = [e["data"]["code"] for e in events if e["type"] == "alert"]
    assert alerts == ["command.refused"]  # the resend is no alert, the replay is

    # Seen ids outlive their expiry by a day: a clock set back cannot reopen the window.
    def seen_after(expired_for: dt.timedelta, command_id: str) -> bool:
        with store.transaction() as tx:
            tx.execute("UPDATE seen_commands SET expires_at = ? WHERE id = 'c0ffee00-0001'",
                       (rfc3339(dt.datetime.now(dt.UTC) - expired_for),))
        inbound.handle_command(_status_command(platform_key, config.station.id, command_id))
        return store.query_one("SELECT 1 FROM seen_commands WHERE id = 'c0ffee00-0001'") \
            is not None

    assert seen_after(dt.timedelta(hours=2), "c0ffee00-0002")
    assert not seen_after(dt.timedelta(hours=25), "c0ffee00-0003")


def test_a_command_whose_answer_cannot_be_sent_is_handled_once(
        sealed: tuple[Config, Path]) -> None:
    from agent.errors import TransportError

    config, _cam = sealed
    platform_key = StationKey.generate()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    sent: list[str] = []
    settled: list[InboundMessage] = []

    def respond(topic: str, _c: bytes | None, _body: bytes) -> None:
        sent.append(topic)
        raise TransportError("MQTT: invalid topic for publishing")

    inbound = Inbound(config, store, {keyid_of(platform_key.public_key): platform_key.public_key},
                      respond=respond, commands={"status": lambda _a: {}},
                      on_acknowledged=lambda _c: None, settle=settled.append)
    prefix = f"bwc/v1/stations/{config.station.id}/reply/"

    def command(command_id: str, reply_to: str) -> InboundMessage:
        return _status_command(platform_key, config.station.id, command_id, reply_to=reply_to)

    # A wildcard is a filter, not a topic: refused, and never published to.
    refused = inbound.handle_command(command("c-1", prefix + "#"))
    assert not refused["ok"] and "is not a topic under" in refused["error"]
    assert sent == []
    # An answer the link cannot send does not make the command run or alert again.
    inbound.start()
    inbound.deliver(command("c-2", prefix + "ops"))
    inbound.queue.join()
    inbound.stop()
    assert sent == [prefix + "ops"] and len(settled) == 1
    accepted = store.query("SELECT kind FROM custody_log WHERE kind LIKE 'command.%'")
    assert [r["kind"] for r in accepted] == ["command.refused", "command.accepted"]
