"""A real station against the development platform: mosquitto (TLS), HTTPS tus, signed acks.

Every fault of the sync issue is a test here: wrong acks, forged and replayed
commands, a broker that goes away mid-run, an upload server answering 500s,
and the agent killed mid-upload.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.cli.main import main as cli_main
from agent.config import Config
from agent.custody.keys import StationKey
from agent.station import Station
from drivers.simcam import make_camera
from scripts.devplatform.stand import DevStand
from tests.support.stations import running_station

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def _station(stand: DevStand, tmp_path: Path, station_id: str = "ST-0001", *, extra: str = "",
             platform_extra: str = "retry_max_s = 1\n") -> Config:
    path = stand.station(tmp_path / station_id, station_id, extra=extra,
                         platform_extra=platform_extra)
    return config_mod.load(path)


def _camera(config: Config, clips: int = 3, **kwargs: Any) -> Path:
    return make_camera(config.devices["simulated"].root, clips=clips, seconds=0.5, width=160,
                       height=120, fps=10.0, **kwargs)


def _recordings(cam: Path) -> list[Path]:
    return sorted(p for p in (cam / "DCIM").rglob("*") if p.is_file())


def _states(config: Config) -> dict[str, str]:
    db = sqlite3.connect(config.data_dir / "state.db")
    return {r[0]: r[1] for r in db.execute("SELECT clip_id, state FROM clips")}


def _log_kinds(config: Config, kind: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(config.data_dir / "state.db")
    return [json.loads(r[0]) for r in db.execute(
        "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]


def test_offload_upload_ack_release(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    cam = _camera(config, clips=3)
    sources = {p.name: p.read_bytes() for p in _recordings(cam)}
    with running_station(config) as station:
        summary = station.run_once(platform_timeout_s=30)
        assert summary.ok, summary.failures
    assert set(_states(config).values()) == {"released"}
    assert _recordings(cam) == [], "acknowledged clips are deleted from the camera"
    verdicts = stand.platform.verdicts()
    assert [v["verdict"] for v in verdicts] == ["accepted"] * 3
    # The platform holds the same bytes the camera had.
    stored = {json.loads(json.dumps(v))["sha256"] for v in verdicts}
    import hashlib
    assert stored == {hashlib.sha256(b).hexdigest() for b in sources.values()}
    types = [e["type"] for e in stand.platform.events("ST-0001")]
    for kind in ("device.docked", "clip.sealed", "clip.uploaded", "clip.acknowledged",
                 "clip.released", "log.checkpoint"):
        assert kind in types, f"{kind} missing from {types}"
    assert types.count("clip.released") == 3
    identity = stand.platform.stations()["ST-0001"]
    assert identity


def test_wrong_acks_are_refused_and_nothing_is_released(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    cam = _camera(config, clips=2)
    stand.platform.sign_acks_with = StationKey.generate()  # a key the station does not trust
    with running_station(config) as station:
        summary = station.run_once(platform_timeout_s=3)
        assert not summary.ok
        stand.platform.sign_acks_with = None
        stand.platform.ack_sha_override = "0" * 64
        # The platform re-checks and re-acks on a new upload event; replay its acks by hand.
        for verdict in stand.platform.verdicts():
            stand.platform._send_ack(verdict["clip_id"])
        stand.platform.flush()
        deadline = time.monotonic() + 10
        while len(_log_kinds(config, "ack.refused")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    refusals = _log_kinds(config, "ack.refused")
    assert len(refusals) == 4, refusals
    # The two acks signed by an unknown key: the first in full, the second counted in a
    # summary (written when the station stopped); each wrong digest names its own clip.
    (forged, repeated) = [r for r in refusals if r["code"] == "signature"]
    assert "keyid is not among" in forged["reason"] and len(forged["payload_sha256"]) == 64
    assert repeated["repeated"] == 1 and "reason" not in repeated
    digests = [r for r in refusals if r["code"] == "digest"]
    assert len(digests) == 2
    assert all("does not match the sealed digest" in r["reason"] for r in digests)
    assert set(_states(config).values()) == {"uploaded"}
    assert len(_recordings(cam)) == 2, "no clip may leave the camera without a valid ack"
    alerts = [e for e in stand.platform.events("ST-0001") if e["type"] == "alert"]
    assert sum(a["data"]["code"] == "ack.refused" for a in alerts) == 3
    db = sqlite3.connect(config.data_dir / "state.db")
    queued = [json.loads(r[0])["data"] for r in db.execute(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' AND delivered_at IS NULL")]
    assert [a.get("repeated") for a in queued if a.get("code") == "ack.refused"] == [1]


def test_commands_tag_and_refusals(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    _camera(config, clips=1)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        stand.platform.wait_for(lambda: all(s == "released" for s in _states(config).values())
                                and _states(config), timeout=30, what="clip released")
        clip_id = next(iter(_states(config)))
        response = stand.platform.send_command("ST-0001", "tag",
                                               {"case_id": "CASE-2026-0042", "clips": [clip_id]})
        assert response["ok"] is True and response["result"]["tagged"] == [clip_id]
        tags = _log_kinds(config, "clip.tagged")
        assert tags[-1]["case_id"] == "CASE-2026-0042" and tags[-1]["source"] == "platform-command"
        status = stand.platform.send_command("ST-0001", "status", {})
        assert status["ok"] and status["result"]["station_id"] == "ST-0001"
        # The same figures as the station's screen: the camera, its clip acknowledged.
        (dock,) = status["result"]["docks"]
        assert (dock["state"], dock["safe_to_undock"], dock["recordings"]) == ("safe", True, 1)

        # Replayed: the very same signed envelope again.
        envelope = stand.platform.command_envelope("ST-0001", "tag", {"case_id": "X-1",
                                                                      "clips": [clip_id]})
        first = stand.platform.send_envelope("ST-0001", "tag", envelope)
        replay = stand.platform.send_envelope("ST-0001", "tag", envelope)
        assert first["ok"] is True
        assert replay["ok"] is False and "replay" in replay["error"]
        # Forged: signed by a key the station does not trust.
        forged = stand.platform.command_envelope("ST-0001", "tag", {"case_id": "X-2",
                                                                    "clips": [clip_id]},
                                                 signer=StationKey.generate())
        refused = stand.platform.send_envelope("ST-0001", "tag", forged)
        assert refused["ok"] is False
        # Expired.
        expired = stand.platform.command_envelope("ST-0001", "status", {}, expires_in=-5)
        late = stand.platform.send_envelope("ST-0001", "status", expired)
        assert late["ok"] is False and "expired" in late["error"]
    finally:
        station.stop()
    refused_log = [r["reason"] for r in _log_kinds(config, "command.refused")]
    assert len(refused_log) == 3, refused_log
    assert [t["case_id"] for t in _log_kinds(config, "clip.tagged")] == ["CASE-2026-0042", "X-1"]


def test_broker_down_then_up_loses_no_event(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    _camera(config, clips=3)
    stand.stop_broker()
    station = Station(config)
    station.start(watch=True)
    try:
        # Offload and seal with no broker: events wait in the outbox.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = _states(config)
            if len(states) == 3 and all(s not in {"discovered", "copied"} for s in states.values()):
                break
            time.sleep(0.05)
        db = sqlite3.connect(config.data_dir / "state.db")
        waiting = db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]
        assert waiting > 0
        stand.start_broker()
        stand.platform.wait_for(lambda: set(_states(config).values()) == {"released"},
                                timeout=60, what="all clips released after the broker came back")
        assert station.sync is not None
        deadline = time.monotonic() + 10
        while station.sync.outbox.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert station.sync.outbox.backlog() == 0
        db = sqlite3.connect(config.data_dir / "state.db")
        sent = {json.loads(r[0])["id"] for r in db.execute(
            "SELECT payload FROM outbox WHERE topic LIKE '%/events'")}
    finally:
        station.stop()
    # One device.docked, then sealed, uploaded, acknowledged, released per clip.
    assert len(sent) >= 1 + 3 * 4
    stand.platform.flush()
    received = {e["id"] for e in stand.platform.events("ST-0001")}
    assert sent - received == set(), "every event reaches the platform"


def test_upload_server_errors_back_off_then_succeed(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    _camera(config, clips=2)
    stand.platform.tus.fail_next = 4
    with running_station(config) as station:
        summary = station.run_once(platform_timeout_s=30)
        assert summary.ok, summary.failures
    assert set(_states(config).values()) == {"released"}
    assert stand.platform.tus.fail_next == 0
    db = sqlite3.connect(config.data_dir / "state.db")
    attempts = sum(r[0] for r in db.execute("SELECT upload_attempts FROM clips"))
    assert attempts >= 2, "the failures were retried"


def test_uploads_wait_as_long_as_the_platforms_retry_after(stand: DevStand,
                                                           tmp_path: Path) -> None:
    # retry_max_s = 1: the back-off alone would come back within a second, and the
    # second clip would go at once.  One upload at a time, so the 503 comes first.
    config = _station(stand, tmp_path,
                      platform_extra="retry_max_s = 1\nupload_concurrency = 1\n")
    _camera(config, clips=2)
    tus = stand.platform.tus
    tus.fail_next, tus.fail_status, tus.fail_retry_after = 1, 503, "3600"
    try:
        with running_station(config) as station:
            summary = station.run_once(platform_timeout_s=3)
            assert station.sync is not None
            waiting = station.sync.uploader._not_before - time.time()
    finally:
        tus.fail_next, tus.fail_status, tus.fail_retry_after = 0, 500, None
    assert not summary.ok
    assert 3600 - 10 <= waiting <= 3600
    db = sqlite3.connect(config.data_dir / "state.db")
    rows = db.execute("SELECT state, upload_attempts FROM clips ORDER BY upload_attempts").fetchall()
    # One request in all: neither the refused clip nor the other one was sent again.
    assert rows == [("sealed", 0), ("uploading", 1)]
    # A restart of the agent is the operator's override: the wait is not persisted.
    with running_station(config) as station:
        assert station.run_once(platform_timeout_s=30).ok
    assert set(_states(config).values()) == {"released"}


def test_a_tls_client_key_readable_by_others_is_refused(stand: DevStand,
                                                        tmp_path: Path) -> None:
    import os

    from agent.errors import ConfigError

    config = _station(stand, tmp_path)
    assert config.platform is not None and config.platform.key_file is not None
    os.chmod(config.platform.key_file, 0o644)
    with (pytest.raises(ConfigError, match=r"platform.key_file: .* is readable by group or "
                                           r"others \(mode 0644\); run chmod 600"),
          running_station(config)):
        pass


def test_requeue_sends_a_refused_clip_again(stand: DevStand, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = _station(stand, tmp_path)
    _camera(config, clips=1)
    tus = stand.platform.tus
    tus.fail_next, tus.fail_status = 1, 413  # a 4xx that will never succeed: quarantined
    try:
        with running_station(config) as station:
            assert not station.run_once(platform_timeout_s=10).ok
    finally:
        tus.fail_next, tus.fail_status = 0, 500
    (clip_id, state), = _states(config).items()
    assert state == "quarantined"
    config_path = str(config.source)

    # The cause is fixed on the platform; the operator requeues the clip.
    assert cli_main(["requeue", "--config", config_path, "--clip", clip_id[:12],
                     "--note", "INC-4711 upload size limit raised"]) == 0
    out = capsys.readouterr().out
    assert f"{clip_id}  " in out and "quarantined -> sealed (was: upload refused by the " \
        "platform: tus POST" in out and "HTTP 413" in out
    assert _states(config) == {clip_id: "sealed"}
    db = sqlite3.connect(config.data_dir / "state.db")
    assert db.execute("SELECT upload_url, upload_offset, upload_attempts, reason FROM clips"
                      ).fetchall() == [(None, 0, 0, None)]  # a fresh upload, attempts reset
    entry, = [e for e in _log_kinds(config, "clip.sealed") if e.get("requeued_by")]
    assert entry["from"] == "quarantined" and entry["note"] == "INC-4711 upload size limit raised"
    assert "HTTP 413" in entry["previous_reason"]

    with running_station(config) as station:
        assert station.run_once(platform_timeout_s=30).ok
    assert _states(config) == {clip_id: "released"}
    # The detour is part of the custody history, and the history still verifies.
    assert [(e["from"], e["to"]) for e in _log_kinds(config, "clip.sealed")] == [
        ("copied", "sealed"), ("quarantined", "sealed")]
    assert cli_main(["verify", str(config.data_dir)]) == 0
    capsys.readouterr()

    # Only a quarantined clip can be requeued; nothing changes otherwise.
    assert cli_main(["requeue", "--config", config_path, "--clip", clip_id]) == 1
    assert f"clip {clip_id} is released: only a quarantined clip can be requeued" \
        in capsys.readouterr().err
    assert _states(config) == {clip_id: "released"}


def test_connection_cut_mid_patch_resumes_from_server_offset(stand: DevStand,
                                                              tmp_path: Path) -> None:
    config = _station(stand, tmp_path, platform_extra="retry_max_s = 1\nupload_chunk_mib = 1\n")
    cam = _camera(config, clips=1)
    big = cam / "DCIM" / "BIG.MP4"
    big.write_bytes(bytes(range(256)) * 12288)  # 3 MiB
    stand.platform.tus.cut_after = 1024 * 1024 + 300 * 1024
    with running_station(config) as station:
        summary = station.run_once(platform_timeout_s=30)
        assert summary.ok, summary.failures
    size = 3 * 1024 * 1024
    received = stand.platform.tus.bytes_received
    small = sum(v["size"] for v in stand.platform.verdicts()) - size
    # Only the chunk that was cut is sent again.
    assert received - small - size <= 1024 * 1024, received


def test_agent_killed_mid_upload_resumes(stand: DevStand, tmp_path: Path) -> None:
    config_path = stand.station(tmp_path / "ST-0001", "ST-0001", platform_extra=(
        "retry_max_s = 1\nupload_chunk_mib = 1\nbandwidth_kib_s = 2048\n"))
    config = config_mod.load(config_path)
    cam = _camera(config, clips=1)
    (cam / "DCIM" / "BIG.MP4").write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli.main", "run", "--once",
                             "--config", str(config_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        offset = 0
        while time.monotonic() < deadline:
            try:
                db = sqlite3.connect(config.data_dir / "state.db", timeout=5)
                row = db.execute("SELECT MAX(upload_offset) FROM clips WHERE state = 'uploading'"
                                 ).fetchone()
                db.close()
            except sqlite3.OperationalError:
                row = None
            offset = row[0] if row and row[0] else 0
            if offset >= 2 * 1024 * 1024:
                break
            time.sleep(0.02)
        assert offset >= 2 * 1024 * 1024, "the upload started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = stand.platform.tus.bytes_received
    done = subprocess.run([sys.executable, "-m", "agent.cli.main", "run", "--once",
                           "--config", str(config_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(_states(config).values()) == {"released"}
    resent = stand.platform.tus.bytes_received - before
    # The restart sent the rest from the server's offset, plus at most the cut chunk.
    assert resent <= 8 * 1024 * 1024 - offset + 1024 * 1024, (resent, offset)
    assert [v["verdict"] for v in stand.platform.verdicts()] == ["accepted", "accepted"]


def test_upload_refused_for_good_quarantines_and_keeps_the_clip(stand: DevStand,
                                                                tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    cam = _camera(config, clips=1)
    stand.platform.tus.max_size = 100  # every clip is "too large": HTTP 413, never retryable
    with running_station(config) as station:
        summary = station.run_once(platform_timeout_s=10)
        store = station.store
        assert store is not None
        row = store.clips()[0]
    assert summary.ok is False, "run --once fails when a clip was quarantined during the run"
    assert any("quarantined" in f and row["clip_id"] in f for f in summary.failures)
    assert row["state"] == "quarantined"
    assert row["reason"].startswith("upload refused by the platform")
    assert "413" in row["reason"]
    vault = config.data_dir / "vault" / "sha256" / row["sha256"][:2] / row["sha256"][2:4]
    assert (vault / row["sha256"]).exists(), "a refused upload never deletes the clip"
    assert len(_recordings(cam)) == 1
    alerts = [e["data"] for e in stand.platform.events("ST-0001") if e["type"] == "alert"]
    assert any(a["code"] == "upload.failed" and a["clip_id"] == row["clip_id"] for a in alerts)


def test_rescan_and_sync_clock_commands(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path, extra="[retention]\nrelease = \"never\"\n")
    _camera(config, clips=1, clock_offset_s=-3600.0)
    station = Station(config)
    station.start(watch=True)
    try:
        stand.platform.wait_for(lambda: set(_states(config).values()) == {"acknowledged"},
                                timeout=30, what="clip acknowledged")
        # The dock session set the clock already; put it off again, then ask for a sync.
        ident = next(config.devices["simulated"].root.iterdir()) / "BWC_DEVICE.json"
        doc = json.loads(ident.read_text(encoding="utf-8"))
        doc["clock_offset_s"] = 120.0
        ident.write_text(json.dumps(doc), encoding="utf-8")
        response = stand.platform.send_command("ST-0001", "sync-clock", {})
        assert response["ok"] is True
        (offset,) = response["result"]["devices"].values()
        assert 119.0 < offset < 121.0
        assert abs(json.loads(ident.read_text(encoding="utf-8"))["clock_offset_s"]) < 1.0
        rescan = stand.platform.send_command("ST-0001", "rescan", {})
        assert rescan["ok"] is True and len(rescan["result"]["devices"]) == 1
    finally:
        station.stop()
    flags = json.loads(sqlite3.connect(config.data_dir / "state.db").execute(
        "SELECT flags FROM clips").fetchone()[0])
    assert "clock.skew" in flags, "an hour off is flagged on the clip"


def test_resend_events_sends_delivered_events_again_and_status_says_the_last_seq(
        stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    _camera(config, clips=1)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.sync is not None and station.sync.link.wait_connected(10)
        stand.platform.wait_for(lambda: all(s == "released" for s in _states(config).values())
                                and _states(config), timeout=30, what="clip released")
        stand.platform.wait_for(lambda: station.sync.outbox.backlog() == 0, 10, "outbox empty")
        status = stand.platform.send_command("ST-0001", "status", {})["result"]
        sent = [json.loads(r[0]) for r in sqlite3.connect(config.data_dir / "state.db").execute(
            "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
        assert status["event_seq"] == sent[-1]["seq"] == len(sent)
        before = stand.platform.duplicates("ST-0001")
        response = stand.platform.send_command("ST-0001", "resend-events",
                                               {"from_seq": 2, "to_seq": 4})
        assert response["ok"] is True and response["result"] == {"resent": 3}
        # The same events, with their ids: the platform counts them as duplicates.
        stand.platform.wait_for(lambda: stand.platform.duplicates("ST-0001") == before + 3,
                                10, "three events again")
        refused = stand.platform.send_command("ST-0001", "resend-events",
                                              {"from_seq": 5, "to_seq": 4})
        assert refused["ok"] is False and "not a range" in refused["error"]
        bad = stand.platform.send_command("ST-0001", "resend-events",
                                          {"from_seq": "1", "to_seq": 4})
        assert bad["ok"] is False and bad["error"].startswith("args:")
    finally:
        station.stop()
    assert _log_kinds(config, "events.resent") == [{"from_seq": 2, "to_seq": 4, "events": 3}]
