"""Identity guards, through the commands IT staff run: ``run`` and ``keys init --force``.

A station keeps its ID and its key for life: changing ``station.id`` on an
enrolled station, or replacing the key of a station that has sealed clips,
would leave everything sealed since unverifiable.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.custody.keys import StationKey, issue_station_certificate
from agent.devpki import DevCA, cert_pem
from drivers.simcam import make_camera
from tests.conftest import write_station_config


def _sealed_station(tmp_path: Path) -> Path:
    config = write_station_config(tmp_path)
    make_camera(tmp_path / "sim", serial="CAM0001", clips=2, seconds=0.5, width=160, height=120,
                fps=10.0)
    assert main(["run", "--once", "--config", str(config)]) == 0
    return config


def _log_size(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM custody_log").fetchone()[0])
    finally:
        db.close()


def test_a_changed_station_id_stops_the_start_naming_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sealed_station(tmp_path)
    before = _log_size(tmp_path)
    capsys.readouterr()
    changed = write_station_config(tmp_path, station_id="ST-0099")
    assert main(["run", "--once", "--config", str(changed)]) == 2
    err = capsys.readouterr().err
    assert (f"station.id is 'ST-0099' in {changed}, but the certificate "
            f"{tmp_path / 'data' / 'keys' / 'station.pem'} is for 'ST-0001'") in err
    assert "Set station.id back to 'ST-0001'" in err
    assert _log_size(tmp_path) == before, "nothing was logged or sealed under the wrong ID"
    # config check, the preflight of run, says the same before anything starts.
    assert main(["config", "check", "--config", str(changed)]) == 2
    out = capsys.readouterr().out
    assert "station.id is 'ST-0099'" in out and "is for 'ST-0001'" in out
    # Back to its own ID, the station starts again.
    assert main(["run", "--once", "--config", str(write_station_config(tmp_path))]) == 0


def test_a_tls_certificate_for_another_station_stops_the_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = DevCA(tmp_path / "ca")
    tls = ca.issue("ST-0002", "tls-other")
    config = write_station_config(tmp_path, f"""
        [platform]
        mqtt_url = "mqtts://127.0.0.1:1"
        upload_url = "https://127.0.0.1:1/files/"
        ca_file = "{ca.cert_path}"
        cert_file = "{tls.cert_path}"
        key_file = "{tls.key_path}"
        platform_key_file = "{tmp_path / 'platform.pub'}"
        """)
    (tmp_path / "platform.pub").write_bytes(StationKey.generate().public_pem())
    assert main(["run", "--once", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "platform.cert_file: station.id is 'ST-0001'" in err
    assert f"the certificate {tls.cert_path} is for 'ST-0002'" in err


def test_keys_init_force_refuses_a_station_with_sealed_clips(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _sealed_station(tmp_path)
    key_path = tmp_path / "data" / "keys" / "station.key"
    key = key_path.read_bytes()
    capsys.readouterr()
    assert main(["keys", "init", "--config", str(config)]) == 2
    plain = capsys.readouterr().err
    assert "replaces its key with `bwc-agent keys rotate" in plain, \
        "the refusal points to keys rotate, not to --force"
    assert main(["keys", "init", "--force", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "station ST-0001 has signed" in err
    assert f"Use `bwc-agent keys rotate --config {config} --reason <why>`" in err
    assert key_path.read_bytes() == key
    assert main(["verify", str(tmp_path / "data")]) == 0, "every sealed clip still verifies"


def test_keys_init_force_replaces_a_key_that_signed_nothing(tmp_path: Path) -> None:
    config = write_station_config(tmp_path)
    assert main(["keys", "init", "--config", str(config)]) == 0
    key_path = tmp_path / "data" / "keys" / "station.key"
    first = key_path.read_bytes()
    assert main(["keys", "init", "--force", "--config", str(config)]) == 0
    assert key_path.read_bytes() != first


def test_a_chain_that_does_not_hold_stops_the_start_but_expiry_does_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_station_config(tmp_path)
    assert main(["keys", "init", "--config", str(config)]) == 0
    keys_dir = tmp_path / "data" / "keys"
    key = StationKey.load(keys_dir / "station.key")
    ca, stranger = DevCA(tmp_path / "ca"), DevCA(tmp_path / "stranger", name="stranger CA")
    (keys_dir / "station.pem").write_bytes(cert_pem(issue_station_certificate(ca, key,
                                                                              "ST-0001")))
    (keys_dir / "ca.pem").write_bytes(cert_pem(stranger.cert))
    assert main(["run", "--once", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "does not hold as a certificate chain" in err
    assert ("station certificate issuer CN=bwc development CA,O=bwc-agent development is not "
            "among the 1 trust anchor(s)") in err

    # An expired certificate from the right CA: the station keeps offloading and sealing.
    (keys_dir / "ca.pem").write_bytes(cert_pem(ca.cert))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)  # valid for a day, two days ago
    expired = ca.issue_for_key(key.public_key, "ST-0001", days=1, not_before=past)
    (keys_dir / "station.pem").write_bytes(cert_pem(expired))
    make_camera(tmp_path / "sim", serial="CAM0001", clips=1, seconds=0.5, width=160,
                height=120, fps=10.0)
    capsys.readouterr()
    assert main(["run", "--once", "--config", str(config)]) == 0
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    assert [r[0] for r in db.execute("SELECT state FROM clips")] == ["sealed"]
    capsys.readouterr()
    assert main(["status", "--config", str(config)]) == 0
    assert ": expired" in capsys.readouterr().out
