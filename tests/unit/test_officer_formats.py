"""Officer credentials, roster messages and recording times as formats: every bad input named."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.errors import ConfigError, IntegrityError
from agent.officers.credentials import Outcome, Revocation, judge, parse_credential
from agent.officers.registry import load_keys
from agent.officers.roster import SNAPSHOT, UPDATE, parse_message, state_at
from agent.officers.times import AFTER_DOCK, TIME_MISMATCH, media_duration_s, recorded_times
from scripts.devplatform.officers import OfficerAuthority, fields, listed, revocation

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def authority(tmp_path: Path) -> OfficerAuthority:
    return OfficerAuthority(tmp_path / "platform")


@pytest.fixture
def keys(authority: OfficerAuthority) -> dict[str, Any]:
    return load_keys(authority.pub_path)


def _resign(authority: OfficerAuthority, envelope: dict[str, Any],
            change: dict[str, Any]) -> dict[str, Any]:
    doc = {**fields(envelope), **change}
    return dsse.sign_envelope(envelope["payloadType"], canonicalize(doc), [authority.signer])


@pytest.mark.parametrize(("change", "named"), [
    ({"officer_id": ""}, "officer_id is empty"),
    ({"name": "张三\u202e"}, "format character U+202E"),
    ({"roles": "officer"}, "roles is not an array"),
    ({"cameras": ["SIM"] * 65}, "at most 64"),
    ({"not_after": "tomorrow"}, "not an RFC 3339 time"),
    ({"not_after": "2020-01-01T00:00:00Z", "not_before": "2021-01-01T00:00:00Z"},
     "not_after is before not_before"),
    ({"credential_id": "x" * 129}, "at most 128"),
])
def test_malformed_credentials_are_refused_by_field(authority: OfficerAuthority,
                                                    change: dict[str, Any], named: str) -> None:
    bad = _resign(authority, authority.credential("000001", "张三"), change)
    with pytest.raises(IntegrityError, match=re.escape(named)):
        parse_credential(bad)


def test_judge_in_order(authority: OfficerAuthority, keys: dict[str, Any]) -> None:
    cred = parse_credential(authority.credential(
        "000001", "张三", cameras=["SIM0001"], not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=1)))
    rev = revocation(dict(cred.envelope))
    revoked = Revocation(rev["credential_id"], rev["officer_id"], rev["revoked_at"], "")
    assert judge(cred, keys=keys, at=NOW, serial="SIM0001", revocation=None) == Outcome.VALID
    assert judge(cred, keys={}, at=NOW, serial="SIM0001", revocation=None) == \
        Outcome.BAD_SIGNATURE
    assert judge(cred, keys=keys, at=NOW, serial="SIM0001", revocation=revoked) == \
        Outcome.REVOKED
    assert judge(cred, keys=keys, at=NOW + dt.timedelta(days=2), serial="SIM0001",
                 revocation=None) == Outcome.EXPIRED
    assert judge(cred, keys=keys, at=NOW - dt.timedelta(days=2), serial="SIM0001",
                 revocation=None) == Outcome.NOT_YET_VALID
    assert judge(cred, keys=keys, at=NOW, serial="SIM0002", revocation=None) == Outcome.MISMATCH
    # Another officer claiming the camera does not matter when this credential lists it.
    assert judge(cred, keys=keys, at=NOW, serial="SIM0001", revocation=None,
                 assigned_elsewhere="000009") == Outcome.VALID
    assert judge(cred, keys=keys, at=NOW, serial=None, revocation=None) == Outcome.VALID


def test_roster_messages_that_do_not_hold_together_are_refused(
        authority: OfficerAuthority, keys: dict[str, Any]) -> None:
    one, two = authority.credential("000001", "张三"), authority.credential("000002", "李四")
    good = authority.snapshot(4, [one])
    assert parse_message(good, SNAPSHOT, keys).version == 4
    # A credential carried that the signed list does not name.
    smuggled = {**good, "credentials": [one, two]}
    with pytest.raises(IntegrityError, match="is not the credential the signed roster"):
        parse_message(smuggled, SNAPSHOT, keys)
    # A snapshot sent as an update (payloadType of the other kind).
    with pytest.raises(IntegrityError, match="payloadType"):
        parse_message(good, UPDATE, keys)
    # The signed payload edited.
    envelope = dict(good["envelope"])
    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["revoked"] = []
    doc["version"] = 5
    envelope["payload"] = base64.b64encode(canonicalize(doc)).decode()
    with pytest.raises(IntegrityError, match="does not verify"):
        parse_message({**good, "envelope": envelope}, SNAPSHOT, keys)
    # A listed credential for another officer than the credential says.
    wrong = authority.snapshot(6, [one])
    body = fields(wrong["envelope"])
    body["credentials"][0]["officer_id"] = "000009"
    wrong["envelope"] = dsse.sign_envelope(dsse.ROSTER, canonicalize(body), [authority.signer])
    with pytest.raises(IntegrityError, match="is for officer 000001, the roster says 000009"):
        parse_message(wrong, SNAPSHOT, keys)
    # No key configured: nothing can be checked.
    with pytest.raises(IntegrityError, match="no credential key"):
        parse_message(good, SNAPSHOT, {})
    with pytest.raises(IntegrityError, match="not \\{"):
        parse_message([good], SNAPSHOT, keys)


def test_state_at_rebuilds_each_version(authority: OfficerAuthority,
                                        keys: dict[str, Any]) -> None:
    one, two = authority.credential("000001", "张三"), authority.credential("000002", "李四")
    messages = [parse_message(m, kind, keys) for m, kind in (
        (authority.snapshot(1, [one]), SNAPSHOT),
        (authority.update(2, 1, add=[two]), UPDATE),
        (authority.update(3, 2, revoke=[revocation(one, "调离")]), UPDATE),
    )]
    at1, at2, at3 = (state_at(messages, v) for v in (1, 2, 3))
    assert at1 is not None and at2 is not None and at3 is not None
    cid = fields(one)["credential_id"]
    assert set(at1.entries) == {cid} and len(at2.entries) == 2
    assert at2.entries[cid].revocation is None
    revoked = at3.entries[cid].revocation
    assert revoked is not None and revoked.reason == "调离"
    assert at3.entries[cid].sha256 == listed(one)["sha256"]
    assert state_at(messages, 4) is None and state_at(messages[1:], 2) is None


def test_a_credential_key_that_cannot_be_read_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"custody\.credential_key_file"):
        load_keys(tmp_path / "missing.pem")
    private = tmp_path / "private.pem"
    StationKey.generate().save(private)
    with pytest.raises(ConfigError, match=r"custody\.credential_key_file"):
        load_keys(private)


def test_recording_times() -> None:
    name_start = "2026-06-01T08:00:00.000Z"
    end = dt.datetime(2026, 6, 1, 8, 1, tzinfo=dt.UTC).timestamp()
    docked = "2026-06-01T09:00:00.000Z"
    # A camera clock 30 s fast: corrected times are 30 s earlier; the file time agrees.
    times = recorded_times(name_start=name_start, mtime=end, duration_s=60.0,
                           clock_offset_s=30.0, docked_at=docked, tolerance_s=120)
    assert (times.camera_start, times.camera_end) == (name_start, "2026-06-01T08:01:00.000Z")
    assert (times.start, times.end) == ("2026-06-01T07:59:30.000Z",
                                        "2026-06-01T08:00:30.000Z")
    assert times.time_source == "name" and times.flags == []
    # No name: the file time is the end, the duration gives the start.
    fallback = recorded_times(name_start=None, mtime=end, duration_s=60.0, clock_offset_s=None,
                              docked_at=docked, tolerance_s=120)
    assert (fallback.time_source, fallback.start, fallback.end) == (
        "file-time", name_start, "2026-06-01T08:01:00.000Z")
    # Ten minutes off: flagged; eight hours off (the volume's time zone): not.
    assert TIME_MISMATCH in recorded_times(
        name_start=name_start, mtime=end + 600, duration_s=60.0, clock_offset_s=0.0,
        docked_at=docked, tolerance_s=120).flags
    assert recorded_times(name_start=name_start, mtime=end + 8 * 3600 + 1, duration_s=60.0,
                          clock_offset_s=0.0, docked_at=docked, tolerance_s=120).flags == []
    # Recorded after the dock: impossible, flagged.
    assert AFTER_DOCK in recorded_times(
        name_start=name_start, mtime=end, duration_s=60.0, clock_offset_s=0.0,
        docked_at="2026-06-01T07:00:00.000Z", tolerance_s=120).flags
    assert media_duration_s({"duration_s": 2.5}) == 2.5
    assert media_duration_s({"duration_s": float("nan")}) is None
    assert media_duration_s({"duration_s": True}) is None
    assert media_duration_s(None) is None
