"""Identity files are replaced all at once: a crash at any step leaves the old set or the new.

Also the certificate facts that ``status`` (and later ``doctor``) read.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.custody.keys import StationKey, init_station_keys
from agent.devpki import DevCA, cert_pem
from agent.errors import ConfigError, StoreError
from agent.pki import files
from agent.pki.files import KeyFiles
from agent.pki.status import certificate_status, certificate_summary
from tests.conftest import write_station_config


def _contents(keys: KeyFiles) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in keys.dir.iterdir() if p.is_file()}


def test_a_staged_change_is_invisible_until_applied(tmp_path: Path) -> None:
    keys = KeyFiles.of(tmp_path)
    files.stage(keys, {"station.pem": b"old cert", "ca.pem": b"old ca"}).apply()
    pending = files.stage(keys, {"station.pem": b"new cert", "ca.pem": b"new ca",
                                 "tls.key": b"secret"})
    assert _contents(keys) == {"station.pem": b"old cert", "ca.pem": b"old ca"}
    pending.apply()
    assert _contents(keys) == {"station.pem": b"new cert", "ca.pem": b"new ca",
                               "tls.key": b"secret"}
    assert (keys.tls_key.stat().st_mode & 0o777) == 0o600
    assert not keys.pending.exists()


def test_recover_finishes_a_committed_change_and_drops_an_unfinished_one(
        tmp_path: Path) -> None:
    keys = KeyFiles.of(tmp_path)
    files.stage(keys, {"station.pem": b"old", "ca.pem": b"old"}).apply()
    # Crashed half-way through the renames: finished.
    pending = files.stage(keys, {"station.pem": b"new", "ca.pem": b"new"})
    (keys.pending / "ca.pem").rename(keys.ca_bundle)
    assert files.recover(keys) == "finished the change of ca.pem, station.pem"
    assert _contents(keys) == {"station.pem": b"new", "ca.pem": b"new"}
    assert files.recover(keys) is None
    # Crashed before the journal was written: thrown away.
    del pending
    files.stage(keys, {"station.pem": b"newer"})
    (keys.pending / "commit.json").unlink()
    assert files.recover(keys) == "discarded an unfinished change (no journal)"
    assert _contents(keys) == {"station.pem": b"new", "ca.pem": b"new"}
    # An enrolment's private request directory left by a crash goes too.
    (keys.dir / ".enroll-abc").mkdir()
    (keys.dir / ".enroll-abc" / "tls.key").write_bytes(b"secret")
    assert files.recover(keys) is None
    assert not (keys.dir / ".enroll-abc").exists()


def test_a_pending_rotation_waits_for_the_log(tmp_path: Path) -> None:
    keys = KeyFiles.of(tmp_path)
    files.stage(keys, {"station.key": b"new key"}, rotation_to="ab" * 32)
    with pytest.raises(ConfigError, match=r"a key rotation to abab.* was interrupted"):
        files.recover(keys)
    assert files.recover(keys, lambda keyid: False) == f"discarded the interrupted rotation " \
                                                       f"to {'ab' * 32}"
    assert not keys.station_key.exists()
    files.stage(keys, {"station.key": b"new key"}, rotation_to="ab" * 32)
    assert files.recover(keys, lambda keyid: keyid == "ab" * 32) is not None
    assert keys.station_key.read_bytes() == b"new key"


def test_a_journal_naming_other_files_is_refused(tmp_path: Path) -> None:
    keys = KeyFiles.of(tmp_path)
    with pytest.raises(ValueError, match="not an identity file name"):
        files.stage(keys, {"../state.db": b"x"})
    files.stage(keys, {"ca.pem": b"x"})
    (keys.pending / "commit.json").write_text(json.dumps(
        {"files": ["../../etc/passwd"], "rotation_to": None}))
    with pytest.raises(StoreError, match="names files outside the identity layout"):
        files.recover(keys)
    (keys.pending / "commit.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot be read"):
        files.recover(keys)


def test_certificate_status_states(tmp_path: Path) -> None:
    config = config_mod.load(write_station_config(tmp_path, """
        [pki]
        est_url = "https://ca.example:8444"
        est_ca_file = "ca.pem"
        renew_after = 0.5
        """))
    facts = certificate_status(config)
    assert facts["state"] == "missing" and facts["station"]["state"] == "missing"
    init_station_keys(tmp_path / "data", "ST-0001")
    facts = certificate_status(config)
    assert facts["station"]["state"] == "ok" and facts["station"]["days_left"] > 800
    assert facts["station"]["chain"] == ["CN=ST-0001,O=bwc-agent station"]
    assert certificate_summary(facts).startswith("certificate: CN=ST-0001,O=bwc-agent station "
                                                 "valid until ")

    keys = KeyFiles.of(tmp_path / "data")
    key = StationKey.load(keys.station_key)
    ca = DevCA(tmp_path / "ca")
    keys.ca_bundle.write_bytes(cert_pem(ca.cert))
    now = dt.datetime.now(dt.UTC)
    cases = [(now - dt.timedelta(days=10), 100, "ok"),
             (now - dt.timedelta(days=60), 100, "renew-due"),
             (now - dt.timedelta(days=80), 100, "expiring"),
             (now - dt.timedelta(days=101), 100, "expired"),
             (now + dt.timedelta(days=1), 100, "not-yet-valid")]
    for start, days, state in cases:
        cert = ca.issue_for_key(key.public_key, "ST-0001", days=days, not_before=start)
        keys.station_cert.write_bytes(cert_pem(cert))
        block = certificate_status(config)["station"]
        assert block["state"] == state, (state, block)
    other = ca.issue_for_key(key.public_key, "ST-0002")
    keys.station_cert.write_bytes(cert_pem(other))
    block = certificate_status(config)["station"]
    assert block["state"] == "invalid"
    assert block["problems"] == ["its common name is 'ST-0002', station.id is 'ST-0001'"]
    keys.ca_bundle.write_bytes(cert_pem(DevCA(tmp_path / "stranger", name="x").cert))
    keys.station_cert.write_bytes(cert_pem(ca.issue_for_key(key.public_key, "ST-0001")))
    assert certificate_status(config)["station"]["state"] == "invalid"
    keys.station_cert.write_bytes(b"garbage")
    assert certificate_status(config)["station"]["state"] == "unreadable"
