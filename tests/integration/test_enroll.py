"""``bwc-agent enroll`` against the development platform's EST server (real HTTPS, real CA).

Each refusal leaves every identity file exactly as it was: the tests compare
the whole keys directory, byte for byte, before and after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import config as config_mod
from agent.cli.main import main
from agent.custody.keys import StationKey, init_station_keys, keyid_of
from agent.pki.files import data_dir_lock
from agent.station import Station
from drivers.simcam import make_camera
from scripts.devplatform.est import EstServer
from scripts.devplatform.pki import DevPki, make_dev_pki
from tests.conftest import write_station_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def est(pki: DevPki) -> Iterator[EstServer]:
    server = EstServer(pki).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_faults(est: EstServer) -> Iterator[None]:
    yield
    est.faults.clear()


def _config(tmp_path: Path, pki: DevPki, url: str, *, station_id: str = "ST-0001",
            extra: str = "") -> Path:
    return write_station_config(tmp_path, f"""
        [pki]
        est_url = "{url}"
        est_ca_file = "{pki.ca_cert_path}"
        timeout_s = 3
        """ + extra, station_id=station_id)


def _token_file(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n", encoding="ascii")
    path.chmod(0o600)
    return path


def _snapshot(keys_dir: Path) -> dict[str, bytes]:
    if not keys_dir.exists():
        return {}
    return {str(p.relative_to(keys_dir)): p.read_bytes()
            for p in sorted(keys_dir.rglob("*")) if p.is_file()}


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)


def test_enrolment_stores_a_two_level_chain_for_both_keys(
        tmp_path: Path, pki: DevPki, est: EstServer,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, pki, est.url)
    data = tmp_path / "data"
    init_station_keys(data, "ST-0001")
    keyid = StationKey.load(data / "keys" / "station.key").keyid
    token = est.add_token("ST-0001")
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "enroll", "--config", str(config),
                 "--token-file", str(_token_file(tmp_path, token))]) == 0
    out = capsys.readouterr()
    assert token not in out.out + out.err + caplog.text, "the token never reaches any output"
    assert "enrolled station ST-0001" in out.out
    assert 'cert_file = "' in out.out, "the TLS files to configure are named"

    keys_dir = data / "keys"
    assert StationKey.load(keys_dir / "station.key").keyid == keyid, "the signing key is kept"
    station = x509.load_pem_x509_certificates((keys_dir / "station.pem").read_bytes())
    tls = x509.load_pem_x509_certificates((keys_dir / "tls.pem").read_bytes())
    anchors = x509.load_pem_x509_certificates((keys_dir / "ca.pem").read_bytes())
    assert [c.subject for c in station] == [station[0].subject, est.cert.subject]
    assert keyid_of(station[0].public_key()) == keyid  # type: ignore[arg-type]
    assert station[0].issuer == est.cert.subject and est.cert.issuer == pki.ca.cert.subject
    assert [c.subject for c in tls][1:] == [est.cert.subject]
    assert anchors == [pki.ca.cert]
    assert (keys_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    assert not (keys_dir / ".pending").exists()
    # openssl, the reference tool, agrees: leaf -> intermediate -> root.
    for name in ("station.pem", "tls.pem"):
        checked = _openssl("verify", "-CAfile", "ca.pem", "-untrusted", name, name,
                           cwd=keys_dir)
        assert checked.returncode == 0 and checked.stdout.strip() == f"{name}: OK", checked

    # The token is one-time: a second enrolment with it is refused and changes nothing.
    before = _snapshot(keys_dir)
    assert main(["enroll", "--config", str(config),
                 "--token-file", str(_token_file(tmp_path, token))]) == 1
    err = capsys.readouterr().err
    assert "refused simpleenroll (HTTP 401)" in err and "already used" in err
    assert _snapshot(keys_dir) == before


def test_a_bad_token_is_refused_and_nothing_is_written(
        tmp_path: Path, pki: DevPki, est: EstServer, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki, est.url)
    init_station_keys(tmp_path / "data", "ST-0001")
    before = _snapshot(tmp_path / "data" / "keys")
    assert main(["enroll", "--config", str(config), "--auth", "bearer",
                 "--token-file", str(_token_file(tmp_path, "not-a-real-token"))]) == 1
    err = capsys.readouterr().err
    assert "the EST server refused simpleenroll (HTTP 401): the enrolment token is wrong, " \
           "already used or expired: ask the platform for a new one" in err
    assert "not-a-real-token" not in err
    assert _snapshot(tmp_path / "data" / "keys") == before
    # A token for another station is refused as well.
    other = est.add_token("ST-0002")
    assert main(["enroll", "--config", str(config),
                 "--token-file", str(_token_file(tmp_path, other))]) == 1
    assert "the token is for another station" in capsys.readouterr().err
    assert _snapshot(tmp_path / "data" / "keys") == before


@pytest.mark.parametrize(("fault", "expected"), [
    ("wrong-key", "the CA issued the TLS certificate for another key"),
    ("wrong-station", "the CA issued the TLS certificate for station 'ST-IMPOSTOR', this "
                      "station is 'ST-0001' (station.id); nothing was stored"),
    ("expired", "issued TLS certificate CN=ST-0001,O=bwc-agent station expired at"),
    ("untrusted", "issued TLS certificate signature does not verify against intermediate CA "
                  "CN=bwc development stations CA"),
])
def test_a_wrong_certificate_is_refused_and_nothing_is_overwritten(
        tmp_path: Path, pki: DevPki, est: EstServer, capsys: pytest.CaptureFixture[str],
        fault: str, expected: str) -> None:
    config = _config(tmp_path, pki, est.url)
    assert main(["enroll", "--config", str(config),
                 "--token-file", str(_token_file(tmp_path, est.add_token("ST-0001")))]) == 0
    keys_dir = tmp_path / "data" / "keys"
    before = _snapshot(keys_dir)
    capsys.readouterr()
    est.faults.add(fault)
    assert main(["enroll", "--config", str(config),
                 "--token-file", str(_token_file(tmp_path, est.add_token("ST-0001")))]) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert "nothing was stored" in err
    assert _snapshot(keys_dir) == before, "an enrolled station keeps every file as it was"


def test_the_signing_certificate_is_checked_too(tmp_path: Path, pki: DevPki,
                                                 est: EstServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The TLS request passes; the fault hits the second (signing) request only.
    config = _config(tmp_path, pki, est.url)
    init_station_keys(tmp_path / "data", "ST-0001")
    before = _snapshot(tmp_path / "data" / "keys")
    issue = est.issue

    def second_wrong(csr: x509.CertificateSigningRequest) -> list[x509.Certificate]:
        if len(est.issued) % 2 == 1:
            est.faults.add("wrong-key")
        try:
            return issue(csr)
        finally:
            est.faults.discard("wrong-key")

    est.issue = second_wrong  # type: ignore[method-assign]
    try:
        assert main(["enroll", "--config", str(config), "--token-file",
                     str(_token_file(tmp_path, est.add_token("ST-0001")))]) == 1
    finally:
        del est.issue
    assert "the CA issued the signing certificate for another key" in capsys.readouterr().err
    assert _snapshot(tmp_path / "data" / "keys") == before


def test_ca_down_or_silent_fails_within_the_deadline(tmp_path: Path, pki: DevPki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens once the socket is closed
    config = _config(tmp_path, pki, f"https://127.0.0.1:{closed}")
    token = _token_file(tmp_path, "tok")
    assert main(["enroll", "--config", str(config), "--token-file", str(token)]) == 1
    err = capsys.readouterr().err
    assert (f"cannot reach the EST server https://127.0.0.1:{closed}/.well-known/est/cacerts: "
            "connection refused (is the CA down, or the URL wrong?)") in err
    assert not (tmp_path / "data" / "keys" / "station.pem").exists()

    # A server that accepts and never answers: the request ends at pki.timeout_s.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    try:
        config = _config(tmp_path, pki, f"https://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert main(["enroll", "--config", str(config), "--token-file", str(token)]) == 1
        assert time.monotonic() - started < 10
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert "did not answer within 3 s" in capsys.readouterr().err


def test_token_file_must_be_private(tmp_path: Path, pki: DevPki, est: EstServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki, est.url)
    token = _token_file(tmp_path, est.add_token("ST-0001"))
    token.chmod(0o644)
    assert main(["enroll", "--config", str(config), "--token-file", str(token)]) == 2
    assert f"--token-file: {token} has mode 0644" in capsys.readouterr().err
    os.symlink(token, tmp_path / "link")
    token.chmod(0o600)
    assert main(["enroll", "--config", str(config), "--token-file",
                 str(tmp_path / "link")]) == 2
    assert "cannot open" in capsys.readouterr().err
    assert not (tmp_path / "data" / "keys").exists()


def test_enrolment_of_a_station_that_signed_is_logged_and_keeps_its_id(
        tmp_path: Path, pki: DevPki, est: EstServer, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, pki, est.url)
    station = Station(config_mod.load(config_path))
    station.start(watch=False)  # makes the key (self-signed) and the store
    assert station.store is not None
    with station.store.transaction() as tx:
        tx.log("station.note", None, {"n": 1})
    station.stop()  # signs a checkpoint: the station has signed
    assert main(["enroll", "--config", str(config_path), "--token-file",
                 str(_token_file(tmp_path, est.add_token("ST-0001")))]) == 0
    db = sqlite3.connect(tmp_path / "data" / "state.db")
    [body] = [json.loads(r[0]) for r in db.execute(
        "SELECT body FROM custody_log WHERE kind = 'station.enrolled'")]
    station_pem = (tmp_path / "data" / "keys" / "station.pem").read_bytes()
    leaf = x509.load_pem_x509_certificate(station_pem)
    assert body["station_certificate"]["serial"] == f"{leaf.serial_number:x}"
    assert body["station_certificate"]["sha256"] == hashlib.sha256(
        leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    capsys.readouterr()
    # The same data directory under another station ID: refused, naming both.
    other = _config(tmp_path, pki, est.url, station_id="ST-0099")
    before = _snapshot(tmp_path / "data" / "keys")
    assert main(["enroll", "--config", str(other), "--token-file",
                 str(_token_file(tmp_path, est.add_token("ST-0099")))]) == 2
    err = capsys.readouterr().err
    assert "station.id is 'ST-0099'" in err and "is for 'ST-0001'" in err
    assert _snapshot(tmp_path / "data" / "keys") == before


def test_an_enrolled_station_rotates_over_est_and_verifies_to_the_root(
        tmp_path: Path, pki: DevPki, est: EstServer, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki, est.url)
    assert main(["enroll", "--config", str(config), "--token-file",
                 str(_token_file(tmp_path, est.add_token("ST-0001")))]) == 0
    keys_dir = tmp_path / "data" / "keys"
    old = StationKey.load(keys_dir / "station.key").keyid
    for serial in ("CAM0001", "CAM0002"):
        make_camera(tmp_path / "sim", serial=serial, clips=1, seconds=0.5, width=160,
                    height=120, fps=10.0)
        assert main(["run", "--once", "--config", str(config)]) == 0
        if serial == "CAM0001":
            assert main(["keys", "rotate", "--config", str(config), "--reason",
                         "key compromise drill"]) == 0
    capsys.readouterr()
    new = StationKey.load(keys_dir / "station.key").keyid
    assert new != old
    # The new key's certificate comes from the CA (simplereenroll over mutual TLS).
    leaf, intermediate = x509.load_pem_x509_certificates((keys_dir / "station.pem").read_bytes())
    assert keyid_of(leaf.public_key()) == new  # type: ignore[arg-type]
    assert leaf.issuer == intermediate.subject == est.cert.subject
    bundle = tmp_path / "bundle"
    assert main(["export", "--all", "--config", str(config), "--out", str(bundle)]) == 0
    assert sorted(p.name for p in (bundle / "certs").iterdir()) == ["ca.pem", "keys",
                                                                     "station.pem"]
    # Both keys' chains (leaf, intermediate) are checked up to the root given as --trust.
    root = pki.ca_cert_path
    for target in (bundle, tmp_path / "data"):
        assert main(["verify", str(target), "--trust", str(root)]) == 0, \
            capsys.readouterr().out
    stranger = make_dev_pki(tmp_path / "stranger").ca_cert_path
    capsys.readouterr()
    assert main(["verify", str(bundle), "--trust", str(stranger), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(p.startswith("cert-invalid:") for p in problems)
    assert any(p.startswith(f"rotation-cert: {bundle}: rotation at seq") and
               f"certificate of the old key {old}" in p for p in problems), problems


def test_enrol_and_rotate_wait_for_the_daemon_and_rotation_needs_est_when_enrolled(
        tmp_path: Path, pki: DevPki, est: EstServer, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki, est.url)
    token = _token_file(tmp_path, est.add_token("ST-0001"))
    with data_dir_lock(tmp_path / "data"):  # as the running daemon holds it
        assert main(["enroll", "--config", str(config), "--token-file", str(token)]) == 1
        assert "bwc-agent is running on" in capsys.readouterr().err
    assert main(["enroll", "--config", str(config), "--token-file", str(token)]) == 0
    make_camera(tmp_path / "sim", serial="CAM0001", clips=1, seconds=0.5, width=160,
                height=120, fps=10.0)
    assert main(["run", "--once", "--config", str(config)]) == 0
    with data_dir_lock(tmp_path / "data"):
        assert main(["keys", "rotate", "--config", str(config), "--reason", "x"]) == 1
    # Enrolled through --est-url only: no EST to enrol a new key with.
    no_est = write_station_config(tmp_path)
    before = _snapshot(tmp_path / "data" / "keys")
    capsys.readouterr()
    assert main(["keys", "rotate", "--config", str(no_est), "--reason", "x"]) == 2
    assert "pki.est_url is not set: the new key would get a self-signed certificate" in \
        capsys.readouterr().err
    assert _snapshot(tmp_path / "data" / "keys") == before
