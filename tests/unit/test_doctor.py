"""`bwc-agent doctor`: each check of this machine made to fail, and the advice it gives.

A real station directory (run --once with a simulated camera), real files,
a real SQLite store; ``Environment.root`` points the /etc checks at a test
directory and ``timedatectl`` at a stand-in (there is no systemd here).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent import config as config_mod
from agent import doctor
from agent.cli.main import main
from agent.config import Config
from agent.custody.keys import StationKey
from agent.daemonstate import STALE_AFTER_S, DaemonState
from agent.doctor import FAIL, OK, WARN, Environment, Finding
from agent.mount import units
from drivers.simcam import make_camera
from tests.conftest import write_station_config


@pytest.fixture
def station(tmp_path: Path) -> Callable[..., Config]:
    """A station that has offloaded one camera; ``station(extra_toml)``."""

    def make(extra: str = "") -> Config:
        path = write_station_config(tmp_path, extra)
        make_camera(tmp_path / "sim", serial="DOC0001", clips=1, seconds=0.5, width=160,
                    height=120, fps=10.0)
        assert main(["run", "--once", "--config", str(path)]) == 0
        return config_mod.load(path)

    return make


def _env(tmp_path: Path, synced: str = "yes") -> Environment:
    stub = tmp_path / "timedatectl"
    stub.write_text(f"#!/bin/sh\necho {synced}\n")
    stub.chmod(0o755)
    return Environment(root=tmp_path / "root", timedatectl=str(stub))


def _check(config: Config, env: Environment, name: str) -> list[Finding]:
    return [f for f in doctor.run(config, env, network=False).findings if f.check == name]


def _only(findings: list[Finding], status: str) -> Finding:
    matching = [f for f in findings if f.status == status]
    assert len(matching) == 1, findings
    return matching[0]


def test_a_healthy_station_passes_and_the_cli_prints_one_line_per_check(
        station: Callable[..., Config], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = station()
    report = doctor.run(config, _env(tmp_path), network=False)
    failing = [f for f in report.findings if f.status == FAIL]
    assert not failing and report.exit_code == 0
    checks = {f.check for f in report.findings}
    assert {"config", "agent", "keys", "data", "disk", "clock", "cert", "platform", "store",
            "log"} <= checks
    capsys.readouterr()
    code = main(["doctor", "--config", str(config.source), "--offline"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("OK    config ") and out[-1].endswith("0 FAIL")
    assert all(line.split()[0] in (OK, WARN, FAIL) for line in out[:-1])


def test_config(station: Callable[..., Config], tmp_path: Path,
                capsys: pytest.CaptureFixture[str]) -> None:
    station()
    broken = config_mod.load(write_station_config(
        tmp_path, f'[custody]\ncredential_key_file = "{tmp_path / "missing.pem"}"\n'))
    finding = _only(_check(broken, _env(tmp_path), "config"), FAIL)
    assert finding.text == f"custody.credential_key_file: {tmp_path / 'missing.pem'} does not exist"
    assert "bwc-agent config check" in finding.advice
    capsys.readouterr()
    assert main(["doctor", "--config", str(broken.source), "--offline"]) == 2


def test_agent_unresponsive(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    old = time.time() - STALE_AFTER_S - 30
    DaemonState(config.data_dir, clock=lambda: old).beat()  # this process: alive, silent
    finding = _only(_check(config, _env(tmp_path), "agent"), FAIL)
    assert "UNRESPONSIVE" in finding.text
    assert "systemctl restart bwc-agent" in finding.advice


def test_agent_not_running(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    finding = _only(_check(config, _env(tmp_path), "agent"), WARN)
    assert "never started" in finding.text or "not running" in finding.text
    assert "systemctl start bwc-agent" in finding.advice


def test_keys(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    key = config.data_dir / "keys" / "station.key"
    os.chmod(key, 0o644)
    finding = _only(_check(config, _env(tmp_path), "keys"), FAIL)
    assert "mode 0644" in finding.text and finding.advice == f"chmod 600 {key}"


def test_trust_anchors_writable_or_world_readable(station: Callable[..., Config],
                                                  tmp_path: Path) -> None:
    anchor = tmp_path / "credential-key.pem"
    anchor.write_bytes(StationKey.generate().public_pem())
    os.chmod(anchor, 0o666)
    config = station(f'[custody]\ncredential_key_file = "{anchor}"\n')
    finding = _only(_check(config, _env(tmp_path), "keys"), WARN)
    assert "writable by group and others, readable by every user" in finding.text
    assert finding.advice == f"chown root:bwc-agent {anchor} && chmod 0640 {anchor}"
    os.chmod(anchor, 0o640)
    assert _only(_check(config, _env(tmp_path), "keys"), OK)


def test_data_directory_open_to_everyone(station: Callable[..., Config],
                                         tmp_path: Path) -> None:
    config = station()
    os.chmod(config.data_dir, 0o755)
    finding = _only(_check(config, _env(tmp_path), "data"), FAIL)
    assert "open to every user" in finding.text
    assert finding.advice == f"chmod 0700 {config.data_dir}"


def test_store_readable_by_others(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    os.chmod(config.data_dir / "state.db", 0o644)
    finding = _only(_check(config, _env(tmp_path), "data"), FAIL)
    assert "mode 0644" in finding.text and "chmod 600" in finding.advice


def test_disk_below_the_ingest_minimum(station: Callable[..., Config], tmp_path: Path) -> None:
    station()
    vfs = os.statvfs(tmp_path)
    free_mib = vfs.f_bavail * vfs.f_frsize // 2**20
    config = config_mod.load(write_station_config(
        tmp_path, f"[ingest]\nmin_free_mb = {free_mib + 10**6}\n"))
    finding = _only(_check(config, _env(tmp_path), "disk"), FAIL)
    assert "below ingest.min_free_mb" in finding.text
    assert "check the platform connection" in finding.advice


def test_disk_out_of_inodes(tmp_path: Path) -> None:
    """A real tmpfs with few inodes, filled up, holding the data directory."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=4m,nr_inodes=200 tmpfs {mnt} "
                                      "2>/dev/null") != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        (tmp_path / "sim").mkdir()
        config = config_mod.parse({"station": {"id": "ST-0001", "data_dir": str(mnt / "data")},
                                   "devices": {"simulated": {"root": str(tmp_path / "sim")}}},
                                  tmp_path)
        (mnt / "data").mkdir(mode=0o700)
        for i in range(1000):
            try:
                (mnt / "data" / f"f{i}").touch()
            except OSError:
                break
        [finding] = [f for f in _check(config, _env(tmp_path), "disk") if "inodes free" in f.text]
        assert finding.status == FAIL
        assert "inodes free" in finding.text and "free inodes" in finding.advice
    finally:
        os.system(f"umount {mnt}")


def test_clock_not_synchronised(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    finding = _only(_check(config, _env(tmp_path, synced="no"), "clock"), WARN)
    assert "not synchronised (timedatectl)" in finding.text
    assert "timedatectl set-ntp true" in finding.advice
    assert _only(_check(config, _env(tmp_path, synced="yes"), "clock"), OK)


def _expired_certificate(key: StationKey, station_id: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station_id)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .sign(key.private_key, None))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_certificate_expired(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    keys = config.data_dir / "keys"
    key = StationKey.load(keys / "station.key")
    (keys / "station.pem").write_bytes(_expired_certificate(key, "ST-0001"))
    findings = _check(config, _env(tmp_path), "cert")
    finding = _only(findings, FAIL)
    assert "expired" in finding.text and "bwc-agent enroll" in finding.advice


def test_certificate_for_another_key(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    keys = config.data_dir / "keys"
    other = StationKey.generate()
    from agent.custody.keys import make_dev_certificate
    (keys / "station.pem").write_bytes(make_dev_certificate(other, "ST-0001").public_bytes(
        serialization.Encoding.PEM))
    finding = [f for f in _check(config, _env(tmp_path), "cert") if f.status == FAIL][-1]
    assert "does not match" in finding.text and "restore the key" in finding.advice


def test_platform_key_missing(station: Callable[..., Config], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    config = station()
    with_platform = config_mod.parse({
        "station": {"id": "ST-0001", "data_dir": str(config.data_dir)},
        "devices": {"simulated": {"root": str(tmp_path / "sim")}},
        "platform": {"mqtt_url": "mqtts://127.0.0.1:1", "upload_url": "https://127.0.0.1:1/f",
                     "ca_file": str(ca), "platform_key_file": str(tmp_path / "nope.pem")}},
        tmp_path, tmp_path / "station.toml")
    finding = _only(_check(with_platform, _env(tmp_path), "platform"), FAIL)
    assert "platform key" in finding.text
    assert "install the platform's public key" in finding.advice
    report = doctor.run(with_platform, _env(tmp_path), network=False)
    assert report.exit_code == 2, "the configuration check names it too"


def test_mounts_udev_rule_not_installed(station: Callable[..., Config], tmp_path: Path) -> None:
    root_dir = tmp_path / "media-bwc"
    root_dir.mkdir(mode=0o755)
    config = station(f'[devices.mass_storage]\nmount_root = "{root_dir}"\n[mount]\n'
                     f'run_dir = "{tmp_path / "run"}"\n')
    env = _env(tmp_path)
    finding = _only(_check(config, env, "mounts"), FAIL)
    assert "udev rule" in finding.text and "not installed" in finding.text
    assert "bwc-agent install-udev" in finding.advice
    units.install(env.root, Path("/usr/local/bin/bwc-agent"), Path("/etc/bwc-agent/s.toml"),
                  reload=False)
    assert [f.status for f in _check(config, env, "mounts")] == [OK, OK]
    (env.etc("udev", "rules.d", units.RULE_NAME)).write_text("# edited\n")
    assert "differs" in _only(_check(config, env, "mounts"), WARN).text


def test_mount_root_missing(station: Callable[..., Config], tmp_path: Path) -> None:
    station()
    config = config_mod.load(write_station_config(
        tmp_path, f'[devices.mass_storage]\nmount_root = "{tmp_path / "media-bwc"}"\n'))
    finding = next(f for f in _check(config, _env(tmp_path), "mounts") if f.status == FAIL)
    assert "does not exist" in finding.text
    assert finding.advice == f"install -d -m 0755 -o root -g root {tmp_path / 'media-bwc'}"


def test_store_damaged(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    db = config.data_dir / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'clips_state'"
                        ).fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:  # the index's page: its cells become nonsense
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * (page - 16))
    finding = _only(_check(config, _env(tmp_path), "store"), FAIL)
    assert "quick_check" in finding.text or "cannot read" in finding.text
    assert "restore it from the backup" in finding.advice


def _log_db(config: Config) -> sqlite3.Connection:
    return sqlite3.connect(config.data_dir / "state.db")


def test_log_entry_edited(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    with _log_db(config) as conn:
        seq, body = conn.execute("SELECT seq, body FROM custody_log WHERE kind = 'clip.sealed'"
                                 ).fetchone()
        edited = json.loads(body)
        edited["sha256"] = "0" * 64
        conn.execute("UPDATE custody_log SET body = ? WHERE seq = ?", (json.dumps(edited), seq))
    finding = _only(_check(config, _env(tmp_path), "log"), FAIL)
    assert f"entry {seq} (clip.sealed)" in finding.text and "edited" in finding.text
    assert f"bwc-agent verify {config.data_dir}" in finding.advice


def test_log_entry_removed(station: Callable[..., Config], tmp_path: Path) -> None:
    config = station()
    with _log_db(config) as conn:
        conn.execute("DELETE FROM custody_log WHERE seq = 2")
    finding = _only(_check(config, _env(tmp_path), "log"), FAIL)
    assert "entries were removed" in finding.text
    assert "report the station to the platform operators" in finding.advice


def test_log_rewritten_with_fresh_leaves(station: Callable[..., Config],
                                         tmp_path: Path) -> None:
    """Entry and leaf both changed: only the signed checkpoint tells."""
    from agent.custody import merkle
    from agent.custody.jcs import canonicalize
    config = station()
    with _log_db(config) as conn:
        seq, at, kind, clip_id, body = conn.execute(
            "SELECT seq, at, kind, clip_id, body FROM custody_log WHERE kind = 'clip.sealed'"
        ).fetchone()
        edited = {**json.loads(body), "sha256": "0" * 64}
        leaf = merkle.leaf_hash(canonicalize({"seq": seq, "at": at, "kind": kind,
                                              "clip_id": clip_id, "body": edited}))
        conn.execute("UPDATE custody_log SET body = ?, leaf = ? WHERE seq = ?",
                     (json.dumps(edited), leaf, seq))
    finding = _only(_check(config, _env(tmp_path), "log"), FAIL)
    assert "hash to" in finding.text and "the checkpoint signed at" in finding.text


def test_the_report_is_json_for_machines(station: Callable[..., Config], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = station()
    os.chmod(config.data_dir, 0o755)
    capsys.readouterr()
    assert main(["doctor", "--config", str(config.source), "--offline", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["exit_code"] == 1 and report["counts"]["FAIL"] == 1
    assert [f["check"] for f in report["findings"] if f["status"] == FAIL] == ["data"]
    assert stat.S_IMODE(os.stat(config.data_dir).st_mode) == 0o755, "doctor changes nothing"
