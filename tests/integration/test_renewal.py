"""Certificate renewal in the daemon, against the development platform: EST, mosquitto, tus.

A station enrolled over EST with certificates that live for minutes renews
them while it runs; the renewed TLS certificate is the one the next broker
connection presents (the broker refuses the old one by CRL), and clips keep
flowing.  Renewal refusals change no file; an expired certificate is
reported while clips are still sealed.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from agent import config as config_mod
from agent.cli.main import main
from agent.config import Config
from agent.pki.renewal import Renewer
from agent.station import Station
from agent.store import Store
from drivers.simcam import make_camera
from scripts.devplatform.stand import DevStand

pytestmark = pytest.mark.integration


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def _enrolled(stand: DevStand, tmp_path: Path, pki_extra: str = "",
              *, station_id: str = "ST-0001") -> Config:
    path = stand.station(tmp_path / station_id, station_id, est=True, pki_extra=pki_extra,
                         platform_extra="retry_max_s = 1\n")
    token = tmp_path / f"{station_id}.token"
    token.write_text(stand.est.add_token(station_id))
    token.chmod(0o600)
    assert main(["enroll", "--config", str(path), "--token-file", str(token)]) == 0
    return config_mod.load(path)


def _camera(config: Config, serial: str, clips: int = 2) -> Path:
    return make_camera(config.devices["simulated"].root, serial=serial, clips=clips,
                       seconds=0.5, width=160, height=120, fps=10.0)


def _states(config: Config) -> list[str]:
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        return [r[0] for r in db.execute("SELECT state FROM clips ORDER BY clip_id")]
    finally:
        db.close()


def _log(config: Config, kind: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(config.data_dir / "state.db")
    try:
        return [json.loads(r[0]) for r in db.execute(
            "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]
    finally:
        db.close()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _broker_accepts(stand: DevStand, cert: Path, key: Path, client_id: str) -> bool:
    """Whether the broker completes an MQTT connection with this client certificate."""
    connected: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(stand.pki.ca_cert_path), certfile=str(cert),
                   keyfile=str(key))
    client.on_connect = lambda c, u, f, rc, p: connected.append(not rc.is_failure)
    try:
        client.connect("127.0.0.1", stand.broker_port, 10)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not connected and time.monotonic() < deadline:
            time.sleep(0.05)
    except (OSError, ssl.SSLError):
        return False
    finally:
        client.loop_stop()
        client.disconnect()
    return connected == [True]


def test_the_daemon_renews_and_reconnects_with_the_renewed_certificate(
        stand: DevStand, tmp_path: Path) -> None:
    stand.est.validity = dt.timedelta(minutes=1)
    config = _enrolled(stand, tmp_path, "renew_after = 0.2\ncheck_interval_s = 1\n")
    stand.est.validity = dt.timedelta(days=1)  # what renewal issues: not due again soon
    keys = config.data_dir / "keys"
    first_tls = keys / "tls-first.pem"
    first_tls.write_bytes((keys / "tls.pem").read_bytes())
    tls_key = (keys / "tls.key").read_bytes()
    old_serials = (_serial(keys / "station.pem"), _serial(keys / "tls.pem"))

    # The issued chain (leaf + intermediate) is the station's mutual TLS identity.
    _camera(config, "CAM0001")
    station = Station(config)
    station.start(watch=True)
    uploader = station.sync.uploader
    made: list[bytes] = []  # the TLS certificate each upload client was made with
    make_client = uploader._client

    def recorded_client() -> Any:
        made.append((keys / "tls.pem").read_bytes())
        return make_client()

    uploader._client = recorded_client
    try:
        stand.platform.wait_for(lambda: set(_states(config)) == {"released"}, timeout=60,
                                what="clips acknowledged over mutual TLS with the EST chain")
        # 12 s of a 1-minute validity: renewal is due.
        stand.platform.wait_for(lambda: _log(config, "station.cert_renewed"), timeout=40,
                                what="the daemon renewed its certificates")
        assert station.renewer.renewals == 1
        new_serials = (_serial(keys / "station.pem"), _serial(keys / "tls.pem"))
        assert new_serials[0] != old_serials[0] and new_serials[1] != old_serials[1]
        assert (keys / "tls.key").read_bytes() == tls_key, "renewal keeps the keys"
        [renewed] = _log(config, "station.cert_renewed")
        assert renewed["tls_certificate"]["serial"] == f"{new_serials[1]:x}"
        # Certificates of minutes, renewed in time: no expiry alert, whatever the rounds.
        time.sleep(2.5)
        assert station.renewer.renewals == 1
        assert [a for a in _log(config, "alert") if a["code"].startswith("cert.")] == []

        # The broker now refuses the old TLS certificate; the station reconnects anyway.
        stand.est.revoke(x509.load_pem_x509_certificate(first_tls.read_bytes()))
        stand.use_crl(stand.est.write_crl(stand.dir / "broker" / "crl.pem"))
        stand.stop_broker()
        stand.start_broker()
        assert not _broker_accepts(stand, first_tls, keys / "tls.key", "ST-0001-old"), \
            "the revoked certificate is refused"
        _camera(config, "CAM0002")
        stand.platform.wait_for(
            lambda: len(_states(config)) == 4 and set(_states(config)) == {"released"},
            timeout=60, what="clips of the second camera acknowledged after the reconnect")
        # Uploads, too, use the renewed certificate: each worker made its client anew.
        renewed_tls = (keys / "tls.pem").read_bytes()
        assert made.count(renewed_tls) == config.platform.upload_concurrency
    finally:
        station.stop()
    status = stand.platform.stations()["ST-0001"]
    assert status["state"] == "offline"
    identity = status["identity"]
    assert x509.load_pem_x509_certificate(identity["certificate"].encode()).serial_number == \
        new_serials[0], "the platform got the renewed signing certificate"


def test_renewal_refusals_change_no_file_and_alert_once(stand: DevStand,
                                                       tmp_path: Path) -> None:
    stand.est.validity = dt.timedelta(days=90)
    config = _enrolled(stand, tmp_path)  # renew_after 0.66: due after 59.4 days
    keys = config.data_dir / "keys"
    before = {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()}
    now = dt.datetime.now(dt.UTC)
    store = Store(config.data_dir / "state.db", station_id="ST-0001")
    try:
        renewer = Renewer(config, store)
        assert renewer.check(now + dt.timedelta(days=59)) is None, "not due yet"
        late = now + dt.timedelta(days=65)  # due, 25 days left
        for fault, expected in (("wrong-key", "for another key"),
                                ("wrong-station", "for station 'ST-IMPOSTOR'"),
                                ("untrusted", "does not verify against intermediate CA")):
            stand.est.faults = {fault}
            outcome = renewer.check(late)
            assert outcome is not None and expected in outcome and "nothing was stored" in \
                outcome, outcome
            assert {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()} == before
        stand.est.faults = set()
        stand.est.stop()  # the CA is down
        for days in (65, 84, 85, 91, 92):
            outcome = renewer.check(now + dt.timedelta(days=days))
            assert outcome is not None and "cannot reach the EST server" in outcome
            assert "connection refused" in outcome
        assert {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()} == before
        alerts = [a for a in _log(config, "alert") if a["code"].startswith("cert.")]
        failures = [a for a in alerts if a["code"] == "cert.renewal_failed"]
        assert len(failures) == 1, "a failing renewal alerts once a day, not every round"
        assert "for another key" in failures[0]["message"]
        # 30 days, 7 days, expired: once each per certificate, however many rounds.
        expiry = sorted((a["role"], a["code"], a.get("days")) for a in alerts
                        if a["code"] != "cert.renewal_failed")
        assert expiry == sorted((role, code, days) for role in ("station", "tls")
                                for code, days in (("cert.expiring", 30), ("cert.expiring", 7),
                                                   ("cert.expired", None)))
    finally:
        store.close()


def test_an_expired_certificate_is_reported_while_clips_are_sealed(
        stand: DevStand, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stand.est.validity = dt.timedelta(seconds=8)  # from 5 s before the issue
    config = _enrolled(stand, tmp_path, "check_interval_s = 60\n")
    time.sleep(4)
    keys = config.data_dir / "keys"
    before = {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()}
    # A station with its certificates expired: offline from the broker (mutual TLS would be
    # refused), still offloading and sealing.
    offline = tmp_path / "offline.toml"
    offline.write_text(f"""
[station]
id = "ST-0001"
data_dir = "{config.data_dir}"

[devices.simulated]
root = "{config.devices['simulated'].root}"

[pki]
est_url = "{stand.est.url}"
est_ca_file = "{stand.pki.ca_cert_path}"
""")
    _camera(config, "CAM0003", clips=2)
    assert main(["run", "--once", "--config", str(offline)]) == 0
    assert _states(config) == ["sealed", "sealed"]
    alerts = _log(config, "alert")
    [expired] = [a for a in alerts if a["code"] == "cert.expired"]
    assert expired["role"] == "station" and "clips are still offloaded and sealed" in \
        expired["message"] and "enrol again with a new one-time token" in expired["message"]
    [failed] = [a for a in alerts if a["code"] == "cert.renewal_failed"]
    assert "expired" in failed["message"] and "enrol again with a new one-time token" in \
        failed["message"]
    assert {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()} == before
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(config.source)]) == 0
    facts = json.loads(capsys.readouterr().out)["certificate"]
    assert facts["state"] == "expired"
    assert facts["station"]["state"] == facts["tls"]["state"] == "expired"
    assert facts["station"]["days_left"] <= 0
    assert facts["station"]["chain"] == [
        "CN=ST-0001,O=bwc-agent station", stand.est.cert.subject.rfc4514_string(),
        stand.pki.ca.cert.subject.rfc4514_string()]
