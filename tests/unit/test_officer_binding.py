"""Binding clips to officer credentials at the dock: every outcome flagged and alerted, none refused."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.store import ClipState, Store
from agent.sync.inbound import Inbound
from agent.sync.retention import release_acknowledged
from scripts.devplatform.officers import OfficerAuthority, revocation
from tests.support.stations import camera, running_station, sim_devices

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def authority(tmp_path: Path) -> OfficerAuthority:
    return OfficerAuthority(tmp_path / "platform")


@pytest.fixture
def officer_station(station_config: Callable[..., Config], authority: OfficerAuthority,
                    tmp_path: Path) -> Callable[..., tuple[Config, Path]]:
    """A station trusting ``authority``'s credential key; returns (config, config path)."""
    def make(extra: str = "") -> tuple[Config, Path]:
        config = station_config(f'[custody]\ncredential_key_file = "{authority.pub_path}"\n'
                                + extra)
        return config, tmp_path / "station.toml"
    return make


def import_roster(config_path: Path, message: dict[str, Any], tmp_path: Path, *,
                  update: bool = False) -> int:
    path = tmp_path / f"roster-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(message, ensure_ascii=False), encoding="utf-8")
    return main(["officers", "import", "--config", str(config_path),
                 "--update" if update else "--snapshot", str(path)])


def manifest_of(row: Any) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(dsse.b64decode(json.loads(row["manifest"])["payload"]))
    return payload


def alerts(store: Store) -> list[dict[str, Any]]:
    events = [json.loads(r["payload"]) for r in store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    return [e["data"] for e in events if e["type"] == "alert"]


# Camera serial -> (officer on the camera, expected status, the flag besides
# officer.unverified); one camera per credential outcome.
OUTCOMES = {
    "SIM0001": ("000001", "valid", None),
    "SIM0002": ("000002", "bad-signature", "officer.bad_signature"),
    "SIM0003": ("000003", "expired", "officer.expired"),
    "SIM0004": ("000004", "not-yet-valid", "officer.not_yet_valid"),
    "SIM0005": ("000005", "revoked", "officer.revoked"),
    "SIM0006": ("000006", "unknown-officer", "officer.unknown"),
    "SIM0007": ("000007", "camera-mismatch", "officer.mismatch"),
}


def test_each_credential_outcome_is_flagged_and_alerted_never_refused(
        officer_station: Callable[..., tuple[Config, Path]], authority: OfficerAuthority,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path = officer_station()
    creds = {
        "000001": authority.credential("000001", "张三", cameras=["SIM0001"]),
        # Listed by the signed roster, but signed by a key the station does not trust.
        "000002": authority.credential("000002", "李四", signer=StationKey.generate()),
        "000003": authority.credential("000003", "王五", not_before=NOW - 400 * DAY,
                                       not_after=NOW - DAY),
        "000004": authority.credential("000004", "赵六", not_before=NOW + DAY),
        "000005": authority.credential("000005", "钱七"),
        "000007": authority.credential("000007", "孙八"),
        # Camera SIM0007 is assigned to officer 000008, not to 000007 who docked it.
        "000008": authority.credential("000008", "周九", cameras=["SIM0007"]),
    }
    snapshot = authority.snapshot(1, list(creds.values()),
                                  revoked=[revocation(creds["000005"], "card lost")])
    assert import_roster(config_path, snapshot, tmp_path) == 0
    for serial, (officer, _, _) in OUTCOMES.items():
        camera(config, clips=1, serial=serial, officer_id=officer)
    with running_station(config) as station:
        summary = station.run_once()
        assert summary.ok, summary.failures
        store = station.store
        assert store is not None
        rows = {r["device_serial"]: r for r in store.clips()}
        raised = alerts(store)

    assert len(rows) == len(OUTCOMES)
    for serial, (officer, status, flag) in OUTCOMES.items():
        row = rows[serial]
        assert row["state"] == "sealed", f"{serial}: a clip is never refused"
        manifest = manifest_of(row)
        assert manifest["officer"]["id"] == officer
        assert manifest["officer"]["status"] == status
        assert manifest["officer"]["verified"] is (status == "valid")
        assert manifest["officer"]["roster_version"] == 1
        assert row["officer_status"] == status
        mine = [a for a in raised if a.get("clip_id") == row["clip_id"]]
        if flag is None:
            assert not any(f.startswith("officer.") for f in manifest["flags"])
            assert manifest["officer"]["credential_id"] == json.loads(
                dsse.b64decode(creds[officer]["payload"]))["credential_id"]
            assert mine == []
        else:
            assert {"officer.unverified", flag} <= set(manifest["flags"]), manifest["flags"]
            assert json.loads(row["flags"]) == manifest["flags"]
            assert [a["code"] for a in mine] == [flag]
            assert mine[0]["outcome"] == status and officer in mine[0]["message"]
    assert "camera SIM0007 is assigned to officer 000008" in next(
        a for a in raised if a.get("serial") == "SIM0007")["message"]
    assert "card lost" in next(a for a in raised if a.get("serial") == "SIM0005")["message"]

    # What IT staff see.
    assert main(["status", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "officers: roster version 1 (7 credentials, 1 revoked)" in out
    for serial, (officer, status, flag) in OUTCOMES.items():
        line = f"officer {officer}"
        shown = [ln for ln in out.splitlines() if "UNVERIFIED" in ln and line in ln]
        assert bool(shown) == (flag is not None), (serial, out)
        if shown:
            assert f"camera {serial}: {status}, 1 clip(s)" in shown[0]
    assert main(["status", "--config", str(config_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["officers"]
    assert {(u["officer_id"], u["status"]) for u in info["unverified"]} == {
        (officer, status) for officer, status, flag in OUTCOMES.values() if flag}


def test_a_roster_that_arrives_later_verifies_earlier_clips_and_holds_release(
        officer_station: Callable[..., tuple[Config, Path]], authority: OfficerAuthority,
        tmp_path: Path) -> None:
    config, config_path = officer_station("[officers]\nhold_release_until_verified = true\n")
    cam = camera(config, clips=2, serial="SIM0010", officer_id="000010")
    platform_key = StationKey.generate()
    with running_station(config) as station:
        assert station.run_once().ok
        store = station.store
        assert store is not None
        rows = store.clips()
        assert {r["officer_status"] for r in rows} == {"no-roster"}
        assert all({"officer.unverified", "officer.no_roster"} <= set(manifest_of(r)["flags"])
                   for r in rows)
        assert [a["code"] for a in alerts(store)] == ["officer.no_roster"] * 2
        # The platform acknowledges both (a real signed ack through the real handler).
        with store.transaction() as tx:
            for row in rows:
                tx.transition(row["clip_id"], ClipState.UPLOADING)
                tx.transition(row["clip_id"], ClipState.UPLOADED)
        inbound = Inbound(config, store, {platform_key.keyid: platform_key.public_key},
                          respond=lambda *a: None, commands={}, on_acknowledged=lambda c: None)
        for row in rows:
            assert inbound.handle_ack(_ack(platform_key, row["clip_id"], row["sha256"]))
        device = sim_devices(station)[0]
        # Acknowledged, but whose it is is still open: it stays on the camera.
        assert release_acknowledged(config, store, device, device.identify()) == []
        assert len([p for p in cam.rglob("*") if p.suffix in (".MP4", ".AVI")]) == 2

        credential = authority.credential("000010", "吴十")
        assert import_roster(config_path, authority.snapshot(3, [credential]), tmp_path) == 0
        rows = store.clips()
        assert {r["officer_status"] for r in rows} == {"valid"}
        assert sorted(release_acknowledged(config, store, device, device.identify())) == \
            sorted(r["clip_id"] for r in rows)
        assert [p for p in cam.rglob("*") if p.suffix in (".MP4", ".AVI")] == []
        verified = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'officer.verified'")]
    assert len(verified) == 2 and {v["roster_version"] for v in verified} == {3}
    assert {v["was"] for v in verified} == {"no-roster"}
    # The sealed manifests keep what the station knew when it sealed them.
    assert all(manifest_of(r)["officer"]["verified"] is False for r in rows)


def _ack(key: StationKey, clip_id: str, sha256: str) -> bytes:
    payload = {"clip_id": clip_id, "sha256": sha256, "station_id": "ST-0001",
               "stored_at": "2026-11-28T00:00:00.000Z", "location": "s3://evidence/x"}
    return json.dumps(dsse.sign_envelope(dsse.ACK, canonicalize(payload), [key])).encode()


def test_roster_messages_refused_and_updates_applied(
        officer_station: Callable[..., tuple[Config, Path]], authority: OfficerAuthority,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path = officer_station()
    one = authority.credential("000001", "张三")
    two = authority.credential("000002", "李四")
    # Signed by another key: refused, with an alert.
    forged = authority.snapshot(1, [one], signer=StationKey.generate())
    assert import_roster(config_path, forged, tmp_path) == 1
    assert "no signature by a trusted key verifies" in capsys.readouterr().err
    assert import_roster(config_path, authority.snapshot(2, [one]), tmp_path) == 0
    # An update from another base is refused; the right one applies.
    assert import_roster(config_path, authority.update(5, 4, add=[two]), tmp_path,
                         update=True) == 1
    assert import_roster(config_path, authority.update(3, 2, add=[two],
                                                       revoke=[revocation(one, "retired")]),
                         tmp_path, update=True) == 0
    # An older snapshot does not roll the roster back.
    assert import_roster(config_path, authority.snapshot(1, [one]), tmp_path) == 1
    capsys.readouterr()
    assert main(["officers", "roster", "--config", str(config_path), "--json"]) == 0
    now = json.loads(capsys.readouterr().out)
    assert now["version"] == 3
    assert {(c["officer_id"], bool(c["revoked"])) for c in now["credentials"]} == {
        ("000001", True), ("000002", False)}
    # What the station believed at version 2 is still there to see.
    assert main(["officers", "roster", "--config", str(config_path), "--version", "2",
                 "--json"]) == 0
    then = json.loads(capsys.readouterr().out)
    assert [(c["officer_id"], c["revoked"]) for c in then["credentials"]] == [("000001", None)]
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    refused = [json.loads(r["body"])["reason"] for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'roster.refused' ORDER BY seq")]
    assert len(refused) == 3
    assert "does not follow the version held (2)" in refused[1]
    assert "older than the version held (3)" in refused[2]
    accepted = [json.loads(r["body"]) for r in store.query(
        "SELECT body FROM custody_log WHERE kind = 'roster.accepted' ORDER BY seq")]
    assert [(a["kind"], a["version"]) for a in accepted] == [("snapshot", 2), ("update", 3)]
    codes = [a["code"] for a in alerts(store)]
    assert codes == ["roster.refused"] * 3
