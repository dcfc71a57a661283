"""The verifier's key schedule over station key rotations, rule by rule (docs/FORMATS.md 5.1).

Each test builds rotation statements, keys and certificates directly (agent/pki/rotation.py's
statement, agent/custody/keys.py's certificates, agent/devpki.py's CA) and hands them to
agent/verify/rotation.py as a data directory or a bundle would: every finding code is shown
on the exact input that triggers it, with its words, beside a look-alike that must not.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import (
    StationKey,
    issue_station_certificate,
    keyid_of,
    make_dev_certificate,
)
from agent.devpki import DevCA, cert_pem
from agent.verify.checks import Identity, manifest_problems
from agent.verify.files import LIMITS
from agent.verify.report import Report
from agent.verify.rotation import KeySchedule, bundle_schedule, data_dir_schedule
from tests.support.certificates import intermediate_ca, reissued

STATION = "ST-0001"
K1, K2, K3, K4 = (StationKey.generate() for _ in range(4))
STRANGER = StationKey.generate()
KEY_ROTATION = "application/vnd.bwc.key-rotation.v1+json"


def _time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _now() -> dt.datetime:
    """The time now: a statement is made after the certificates of its test (each valid from
    five minutes before it was made), however long after this module was imported."""
    return dt.datetime.now(dt.UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _identity(key: StationKey, cert: x509.Certificate | None = None,
              chain: tuple[x509.Certificate, ...] = ()) -> Identity:
    cert = cert or make_dev_certificate(key, STATION)
    return Identity(cert=cert, keyid=key.keyid, public_key=key.public_key, station_id=STATION,
                    chain=chain)


CERTS = {key.keyid: make_dev_certificate(key, STATION) for key in (K1, K2, K3, K4)}


def _statement(old: StationKey, new: StationKey, seq: int,
               signers: Sequence[StationKey] | None = None, **fields: Any) -> dict[str, Any]:
    """The envelope ``keys rotate`` writes (old signs first), with ``fields`` replaced."""
    body: dict[str, Any] = {"schema": "bwc.key-rotation/v1", "station_id": STATION,
                            "old_keyid": old.keyid, "new_keyid": new.keyid, "at": _time(_now()),
                            "reason": "yearly rotation", "log_size": seq - 1}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not _MISSING}
    return dsse.sign_envelope(KEY_ROTATION, canonicalize(body),
                              [old, new] if signers is None else signers)


_MISSING = object()


def _entry(seq: Any, envelope: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": "key.rotated", "body": {"statement": envelope}}


def _rotation(old: StationKey, new: StationKey, seq: int, **fields: Any) -> dict[str, Any]:
    return _entry(seq, _statement(old, new, seq, **fields))


def _data_dir(tmp_path: Path, entries: Sequence[Mapping[str, Any]],
              archive: Mapping[str, bytes] | None = None, *,
              current: Identity | None = None, trust: Sequence[x509.Certificate] | None = None,
              ) -> tuple[KeySchedule, list[str]]:
    """The schedule of a data directory whose ``keys/archive/`` holds ``archive``."""
    root = tmp_path / "data"
    (root / "keys" / "archive").mkdir(parents=True, exist_ok=True)
    for name, data in (archive or {}).items():
        (root / "keys" / "archive" / name).write_bytes(data)
    report = Report()
    schedule = data_dir_schedule(root, entries, current, trust, report, "W")
    assert not report.warnings
    return schedule, report.problems


def _pems(*keys: StationKey) -> dict[str, bytes]:
    return {f"{k.keyid}.pem": cert_pem(CERTS[k.keyid]) for k in keys}


def _keyids(schedule: KeySchedule) -> list[tuple[int, str | None]]:
    return [(first, None if ident is None else ident.keyid) for first, ident in schedule.epochs]


def _what(seq: int) -> str:
    return f"W: rotation at seq {seq}"


# --- the schedule ------------------------------------------------------------------------

def test_without_a_rotation_the_station_certificate_signs_everything(tmp_path: Path) -> None:
    """Rule: a log without ``key.rotated`` entries has no epochs; the station certificate's
    key is in force for every entry, checkpoint and manifest."""
    current = _identity(K2)
    sealed = [{"seq": 1, "kind": "clip.sealed", "body": {"manifest_sha256": "0" * 64}}]
    schedule, problems = _data_dir(tmp_path, sealed, _pems(K1), current=current)
    assert problems == [] and schedule.epochs == []
    assert schedule.current is current
    assert schedule.at(1) is current and schedule.at(99) is current
    assert schedule.for_checkpoint(_checkpoint(3)) is current
    assert schedule.for_manifest(_manifest(b"m"), sealed) is current


def test_the_key_in_force_before_at_and_after_a_rotation(tmp_path: Path) -> None:
    """Rule: before the first rotation its old key is in force (from seq 1); from the
    rotation's own seq on, that entry included, its new key."""
    schedule, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], _pems(K1),
                                   current=_identity(K2))
    assert problems == []
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]
    assert [_kid(schedule.at(n)) for n in (0, 1, 4, 5, 6, 1000)] == \
        [K1.keyid, K1.keyid, K1.keyid, K2.keyid, K2.keyid, K2.keyid]


def _kid(identity: Identity | None) -> str | None:
    return None if identity is None else identity.keyid


def test_two_rotations_in_any_order_make_three_epochs(tmp_path: Path) -> None:
    """Rule: rotations are taken in log order (by seq), whatever order they are given in;
    each continues from the key the one before handed over to."""
    entries = [_rotation(K2, K3, 9), {"seq": 7, "kind": "clip.sealed", "body": {}},
               _rotation(K1, K2, 5)]
    schedule, problems = _data_dir(tmp_path, entries, _pems(K1, K2), current=_identity(K3))
    assert problems == []
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid), (9, K3.keyid)]
    assert [_kid(schedule.at(n)) for n in (4, 5, 8, 9)] == [K1.keyid, K2.keyid, K2.keyid,
                                                            K3.keyid]


def test_without_epochs_the_current_key_is_in_force_at_every_position() -> None:
    """Rule: KeySchedule.at without epochs is the station certificate's key; with epochs,
    a position before the first is the first epoch's key, and a key whose certificate is
    unknown is None."""
    a, b = _identity(K1), _identity(K2)
    assert KeySchedule(a).at(0) is a and KeySchedule(a).at(7) is a
    assert KeySchedule(None).at(3) is None
    unknown = KeySchedule(a, [(1, None), (4, b)])
    assert [unknown.at(n) for n in (0, 1, 3, 4)] == [None, None, None, b]


def _checkpoint(size: Any, key: StationKey = K1) -> dict[str, Any]:
    body = canonicalize({"at": _time(_now()), "root": "0" * 64, "size": size})
    return dsse.sign_envelope(dsse.CHECKPOINT, body, [key])


def _manifest(payload: bytes) -> dict[str, Any]:
    return dsse.sign_envelope(dsse.MANIFEST, payload, [K1])


def test_a_checkpoint_of_size_n_is_signed_by_the_key_in_force_at_seq_n() -> None:
    """Rule: a checkpoint of size ``n`` needs the key in force at seq ``n``; a checkpoint
    whose size cannot be read (no payload, not base64, not JSON, not an object, a size
    that is not an integer or is a boolean) needs the station certificate's key."""
    a, b, c = _identity(K1), _identity(K2), _identity(K3)
    schedule = KeySchedule(c, [(1, a), (5, b)])
    assert [schedule.for_checkpoint(_checkpoint(n)) for n in (1, 4, 5, 9)] == [a, a, b, b]
    bad_payloads = [_b64(b) for b in (b"[4]", b"\xff\xfe", b'{"size": 4')]
    unreadable: list[Any] = [
        _checkpoint(True), _checkpoint("4"), _checkpoint(None), _checkpoint(4.5),
        {"payload": "***"}, {"payload": 4}, {}, [], "payload",
        *({"payload": p} for p in bad_payloads)]
    assert [schedule.for_checkpoint(e) for e in unreadable] == [c] * len(unreadable)
    assert KeySchedule(c).for_checkpoint(_checkpoint(1)) is c


def _sealed(seq: Any, payload: bytes, kind: str = "clip.sealed") -> dict[str, Any]:
    return {"seq": seq, "kind": kind,
            "body": {"manifest_sha256": hashlib.sha256(payload).hexdigest()}}


def test_a_manifest_is_signed_by_the_key_in_force_where_the_log_seals_it() -> None:
    """Rule: a manifest needs the key in force at the seq of the ``clip.sealed`` entry whose
    manifest_sha256 is the SHA-256 of its payload; entries of another kind, with a seq that
    is not an integer or a body that is not an object do not count, and a manifest the log
    does not record needs the station certificate's key."""
    a, b, c = _identity(K1), _identity(K2), _identity(K3)
    schedule = KeySchedule(c, [(1, a), (5, b)])
    early, late, stray = b'{"clip":"early"}', b'{"clip":"late"}', b'{"clip":"stray"}'
    entries = [_sealed(3, early), _sealed(6, late), _sealed(2, late, kind="clip.tagged"),
               _sealed("2", stray), {"seq": 2, "kind": "clip.sealed", "body": "x"}]
    assert schedule.for_manifest(_manifest(early), entries) is a
    assert schedule.for_manifest(_manifest(late), entries) is b
    assert schedule.for_manifest(_manifest(stray), entries) is c
    assert schedule.for_manifest(_manifest(b"unrecorded"), entries) is c
    assert schedule.for_manifest({"payload": "***"}, entries) is c
    # The digest is of the payload bytes, not of the envelope.
    assert schedule.for_manifest(_manifest(b"unrecorded"), [
        {"seq": 3, "kind": "clip.sealed", "body": {"manifest_sha256": hashlib.sha256(
            json.dumps(_manifest(b"unrecorded")).encode()).hexdigest()}}]) is c
    assert KeySchedule(c).for_manifest(_manifest(early), entries) is c


# --- rotation-format ---------------------------------------------------------------------

ROT = KEY_ROTATION
FORMAT_CASES: dict[str, tuple[Any, str]] = {
    "no statement": ({"seq": 5, "kind": "key.rotated", "body": {}},
                     f"the entry holds no statement of type {ROT}"),
    "body not an object": ({"seq": 5, "kind": "key.rotated", "body": ["statement"]},
                           f"the entry holds no statement of type {ROT}"),
    "statement not an object": (_entry(5, "statement"),
                                f"the entry holds no statement of type {ROT}"),
    "another payload type": (
        _entry(5, {**_statement(K1, K2, 5), "payloadType": dsse.CHECKPOINT}),
        f"the entry holds no statement of type {ROT}"),
    "payload not base64": (_entry(5, {**_statement(K1, K2, 5), "payload": "a b"}),
                           "the statement's payload is not base64"),
    "payload not a string": (_entry(5, {**_statement(K1, K2, 5), "payload": 7}),
                             "the statement's payload is not base64"),
    "payload an array": (_entry(5, {**_statement(K1, K2, 5), "payload": _b64(b"[]")}),
                         "the payload is not an object"),
    "old keyid upper case": (_rotation(K1, K2, 5, old_keyid=K1.keyid.upper()),
                             "old_keyid is not 64 lowercase hex digits"),
    "new keyid a number": (_rotation(K1, K2, 5, new_keyid=7),
                           "new_keyid is not 64 lowercase hex digits"),
    "new keyid too short": (_rotation(K1, K2, 5, new_keyid=K2.keyid[:63]),
                            "new_keyid is not 64 lowercase hex digits"),
    "at not a time": (_rotation(K1, K2, 5, at="yesterday"), "'at' is not an RFC 3339 time"),
    "at without zone": (_rotation(K1, K2, 5, at="2026-03-01T08:00:00"),
                        "'at' is not an RFC 3339 time"),
    "at out of range": (_rotation(K1, K2, 5, at="0001-01-01T00:00:00+01:00"),
                        "'at' is not an RFC 3339 time"),
    "at a number": (_rotation(K1, K2, 5, at=1700000000), "'at' is not an RFC 3339 time"),
    "at missing": (_rotation(K1, K2, 5, at=_MISSING), "'at' is not an RFC 3339 time"),
    "another schema": (_rotation(K1, K2, 5, schema="bwc.key-rotation/v2"),
                       "schema is 'bwc.key-rotation/v2', expected 'bwc.key-rotation/v1'"),
    "another station": (_rotation(K1, K2, 5, station_id="ST-0002"),
                        "the statement names station 'ST-0002', the certificate is for "
                        "'ST-0001'"),
    "no station": (_rotation(K1, K2, 5, station_id=_MISSING),
                   "the statement names station None, the certificate is for 'ST-0001'"),
    "the same key": (_entry(5, _statement(K1, K1, 5)),
                     "the old and the new key are the same"),
}


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_a_malformed_statement_is_a_rotation_format_finding(tmp_path: Path, case: str) -> None:
    """Rule: a statement without the fields of bwc.key-rotation/v1 (type, base64, object,
    lowercase hex keyids, an RFC 3339 time, the schema, the station of the certificate, two
    different keys) is named ``rotation-format`` and not used: no epoch, no signature or
    chain finding beside it."""
    entry, words = FORMAT_CASES[case]
    schedule, problems = _data_dir(tmp_path, [entry], _pems(K1), current=_identity(K2))
    assert problems == [f"rotation-format: {_what(5)}: {words}"]
    assert schedule.epochs == []
    assert schedule.at(5) is schedule.current


def test_a_payload_that_is_not_canonical_json_is_not_used(tmp_path: Path) -> None:
    """Rule: the statement's payload is JSON in its RFC 8785 form; other JSON, or bytes that
    are not JSON, are ``rotation-format`` findings and the statement is not used."""
    good = json.loads(canonicalize({"schema": "bwc.key-rotation/v1", "station_id": STATION,
                                    "old_keyid": K1.keyid, "new_keyid": K2.keyid, "at": _time(_now()),
                                    "reason": "r", "log_size": 4}))
    spaced = dsse.sign_envelope(KEY_ROTATION, json.dumps(good).encode(), [K1, K2])
    broken = dsse.sign_envelope(KEY_ROTATION, b'{"schema":', [K1, K2])
    schedule, problems = _data_dir(tmp_path, [_entry(5, spaced), _entry(9, broken)],
                                   _pems(K1), current=_identity(K2))
    assert problems[0] == (f"rotation-format: {_what(5)} payload is not in canonical "
                           "(RFC 8785) form")
    assert problems[1].startswith(f"rotation-format: {_what(9)} payload is not acceptable "
                                  "JSON: "), problems
    assert len(problems) == 2 and schedule.epochs == []


def test_every_format_problem_of_one_statement_is_named(tmp_path: Path) -> None:
    """Rule: a statement's field problems are all reported, not only the first."""
    entry = _rotation(K1, K2, 5, old_keyid="x", new_keyid="x", at="now", schema="v0")
    _, problems = _data_dir(tmp_path, [entry], _pems(K1), current=_identity(K2))
    assert problems == [f"rotation-format: {_what(5)}: {w}" for w in (
        "old_keyid is not 64 lowercase hex digits", "new_keyid is not 64 lowercase hex digits",
        "'at' is not an RFC 3339 time", "schema is 'v0', expected 'bwc.key-rotation/v1'",
        "the old and the new key are the same")]


def test_look_alikes_of_format_problems_are_accepted(tmp_path: Path) -> None:
    """Rule: a time with a numeric offset is an RFC 3339 time; without a station
    certificate the statement's station is not compared (nothing to compare with)."""
    entry = _rotation(K1, K2, 5, at=_time(_now()).replace("Z", "+00:00"), station_id="ST-0002")
    schedule, problems = _data_dir(tmp_path, [entry], _pems(K1, K2), current=None)
    assert problems == []
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]


# --- rotation-position -------------------------------------------------------------------

@pytest.mark.parametrize(("log_size", "shown"), [(3, "3"), (5, "5"), ("4", "'4'"),
                                                 (_MISSING, "None"), (None, "None")])
def test_a_statement_at_another_place_in_the_log_is_a_rotation_position_finding(
        tmp_path: Path, log_size: Any, shown: str) -> None:
    """Rule: a statement at seq ``s`` says the log held ``s - 1`` entries before it (an
    integer); anything else is ``rotation-position``, and the statement still hands over
    at the seq where the log has it."""
    entry = _rotation(K1, K2, 5, log_size=log_size)
    schedule, problems = _data_dir(tmp_path, [entry], _pems(K1), current=_identity(K2))
    assert problems == [f"rotation-position: {_what(5)}: the statement says the log held "
                        f"{shown} entries before it, but it is entry 5 (a statement copied "
                        "to another place in the log)"]
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]


def test_a_boolean_log_size_is_not_a_size(tmp_path: Path) -> None:
    """Rule: ``true`` is not the log size 1 (JSON booleans are not integers)."""
    _, problems = _data_dir(tmp_path, [_rotation(K1, K2, 2, log_size=True)], _pems(K1),
                            current=_identity(K2))
    assert problems == [f"rotation-position: {_what(2)}: the statement says the log held "
                        "True entries before it, but it is entry 2 (a statement copied to "
                        "another place in the log)"]
    _, fine = _data_dir(tmp_path / "b", [_rotation(K1, K2, 2, log_size=1)], _pems(K1),
                        current=_identity(K2))
    assert fine == []


def test_an_entry_without_an_integer_seq_comes_before_the_first_entry(tmp_path: Path) -> None:
    """Rule: a ``key.rotated`` entry whose seq is not an integer is ordered as seq 0, before
    even a rotation at seq 1."""
    entries = [_rotation(K2, K3, 1), _entry(None, _statement(K1, K2, 1))]
    schedule, problems = _data_dir(tmp_path, entries, _pems(K1, K2), current=_identity(K3))
    assert [p.split(":")[0] for p in problems] == ["rotation-position"], problems
    assert _keyids(schedule) == [(1, K1.keyid), (0, K2.keyid), (1, K3.keyid)]


def test_an_entry_without_an_integer_seq_is_placed_at_zero(tmp_path: Path) -> None:
    """Rule: a ``key.rotated`` entry whose seq is not an integer counts as entry 0 (first
    in order), so its statement's log size cannot match."""
    entries = [_rotation(K2, K3, 9), _entry("9", _statement(K1, K2, 9))]
    schedule, problems = _data_dir(tmp_path, entries, _pems(K1, K2), current=_identity(K3))
    assert problems == [f"rotation-position: {_what(0)}: the statement says the log held 8 "
                        "entries before it, but it is entry 0 (a statement copied to another "
                        "place in the log)"]
    assert _keyids(schedule) == [(1, K1.keyid), (0, K2.keyid), (9, K3.keyid)]


# --- rotation-signature ------------------------------------------------------------------

def _signature(key: StationKey, envelope: Mapping[str, Any],
               keyid: str | None = None) -> dict[str, Any]:
    signed = dsse.sign_envelope(KEY_ROTATION, dsse.b64decode(envelope["payload"]), [key])
    return {"keyid": keyid or key.keyid, "sig": signed["signatures"][0]["sig"]}


def _signed(envelope: Mapping[str, Any], *signatures: Any) -> dict[str, Any]:
    """The rotation entry at seq 5 of ``envelope`` with these signatures instead."""
    return _entry(5, {**envelope, "signatures": list(signatures)})


def _altered(signature: Mapping[str, Any]) -> dict[str, Any]:
    sig = bytearray(dsse.b64decode(signature["sig"]))
    sig[0] ^= 1
    return {**signature, "sig": _b64(bytes(sig))}


def _sig_findings(tmp_path: Path, entry: Mapping[str, Any]) -> list[str]:
    schedule, problems = _data_dir(tmp_path, [entry], _pems(K1), current=_identity(K2))
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)], "the statement is still used"
    return problems


def test_both_signatures_and_no_other_verify(tmp_path: Path) -> None:
    """Rule: a statement signed by the old and the new key, in either order, has no
    finding."""
    envelope = _statement(K1, K2, 5)
    reversed_ = {**envelope, "signatures": envelope["signatures"][::-1]}
    assert _sig_findings(tmp_path, _entry(5, reversed_)) == []


def test_a_missing_signature_is_a_rotation_signature_finding(tmp_path: Path) -> None:
    """Rule: each of the old and the new key signs; a missing one is named by its role."""
    envelope = _statement(K1, K2, 5)
    old_sig, new_sig = envelope["signatures"]
    assert _sig_findings(tmp_path / "a", _signed(envelope, new_sig)) == [
        f"rotation-signature: {_what(5)}: no signature by the old key {K1.keyid}; a rotation "
        "statement is signed by both keys"]
    assert _sig_findings(tmp_path / "b", _signed(envelope, old_sig)) == [
        f"rotation-signature: {_what(5)}: no signature by the new key {K2.keyid}; a rotation "
        "statement is signed by both keys"]
    no_list = _entry(5, {**envelope, "signatures": {"keyid": K1.keyid}})
    assert _sig_findings(tmp_path / "c", no_list) == [
        f"rotation-signature: {_what(5)}: no signature by the {role} key {k.keyid}; a "
        "rotation statement is signed by both keys" for role, k in (("old", K1), ("new", K2))]


def test_a_signature_that_does_not_verify_is_named_by_its_role(tmp_path: Path) -> None:
    """Rule: a signature under the old (new) key's keyid must verify with that key: made by
    another key, or altered, it is named; the other signature is checked on its own."""
    envelope = _statement(K1, K2, 5)
    old_sig, new_sig = envelope["signatures"]
    posing = _signature(STRANGER, envelope, keyid=K1.keyid)
    assert _sig_findings(tmp_path / "a", _signed(envelope, posing, new_sig)) == [
        f"rotation-signature: {_what(5)}: the signature by the old key {K1.keyid} does not "
        "verify (altered, or made by another key)"]
    assert _sig_findings(tmp_path / "b", _signed(envelope, old_sig, _altered(new_sig))) == [
        f"rotation-signature: {_what(5)}: the signature by the new key {K2.keyid} does not "
        "verify (altered, or made by another key)"]
    # The new key signing under both keyids: the old key's signature is missing in fact.
    swapped = _signature(K2, envelope, keyid=K1.keyid)
    assert _sig_findings(tmp_path / "c", _signed(envelope, swapped, new_sig)) == [
        f"rotation-signature: {_what(5)}: the signature by the old key {K1.keyid} does not "
        "verify (altered, or made by another key)"]


def test_a_payload_changed_after_signing_fails_both_signatures(tmp_path: Path) -> None:
    """Rule: the signatures cover the payload: another reason put in after signing (still a
    well-formed statement) makes both fail."""
    envelope = _statement(K1, K2, 5)
    other = _statement(K1, K2, 5, reason="another reason")
    entry = _entry(5, {**envelope, "payload": other["payload"]})
    assert _sig_findings(tmp_path, entry) == [
        f"rotation-signature: {_what(5)}: the signature by the {role} key {k.keyid} does not "
        "verify (altered, or made by another key)" for role, k in (("old", K1), ("new", K2))]


@pytest.mark.parametrize(("extra", "named"), [
    ("stranger", "STRANGER"), ("no keyid", "(no keyid)"), ("keyid a number", "(no keyid)"),
    ("not an object", "(no keyid)")])
def test_a_signature_by_any_other_key_is_named(tmp_path: Path, extra: str, named: str) -> None:
    """Rule: a statement carries the old and the new key's signatures and no other: a third
    one (another key, no keyid, a keyid that is not a string, not an object) is named."""
    envelope = _statement(K1, K2, 5)
    stranger = _signature(STRANGER, envelope)
    third = {"stranger": stranger, "no keyid": {"sig": stranger["sig"]},
             "keyid a number": {**stranger, "keyid": 7}, "not an object": "sig"}[extra]
    entry = _signed(envelope, *envelope["signatures"], third)
    shown = STRANGER.keyid if named == "STRANGER" else named
    assert _sig_findings(tmp_path, entry) == [
        f"rotation-signature: {_what(5)}: signed by key {shown}, which is neither the old nor "
        "the new key"]


def test_third_keys_are_named_each_once_in_order(tmp_path: Path) -> None:
    """Rule: every other key is named once, in keyid order."""
    envelope = _statement(K1, K2, 5)
    others = sorted((K3, K4, STRANGER), key=lambda k: k.keyid)
    signatures = [*envelope["signatures"], *(_signature(k, envelope) for k in others[::-1]),
                  _signature(others[0], envelope)]
    assert _sig_findings(tmp_path, _signed(envelope, *signatures)) == [
        f"rotation-signature: {_what(5)}: signed by key {k.keyid}, which is neither the old "
        "nor the new key" for k in others]


# --- rotation-cert: the certificates of the keys -----------------------------------------

def test_a_key_without_a_certificate_is_named_and_not_checked(tmp_path: Path) -> None:
    """Rule: the old and the new key each need a certificate (``keys/archive/``, a bundle's
    ``certs/keys/``, or the station certificate); without one the key is named
    ``rotation-cert``, its signature is not checked, and its epoch has no key."""
    envelope = _statement(K1, K2, 5)
    forged = _entry(5, {**envelope, "signatures": [_altered(s) for s in envelope["signatures"]]})
    schedule, problems = _data_dir(tmp_path / "a", [forged], {}, current=_identity(K2))
    assert problems == [
        f"rotation-cert: {_what(5)}: no certificate for the old key {K1.keyid} "
        f"(certs/keys/{K1.keyid}.pem in a bundle)",
        f"rotation-signature: {_what(5)}: the signature by the new key {K2.keyid} does not "
        "verify (altered, or made by another key)"]
    assert _keyids(schedule) == [(1, None), (5, K2.keyid)]
    assert schedule.at(3) is None
    schedule, problems = _data_dir(tmp_path / "b", [_rotation(K1, K2, 5)], _pems(K1))
    assert problems == [f"rotation-cert: {_what(5)}: no certificate for the new key "
                        f"{K2.keyid} (certs/keys/{K2.keyid}.pem in a bundle)"]
    assert _keyids(schedule) == [(1, K1.keyid), (5, None)]


def test_the_old_certificate_is_valid_when_the_statement_was_made(tmp_path: Path) -> None:
    """Rule: the retired key's certificate must be valid at the statement's ``at`` (not
    now): expired before it, or not yet valid, is ``rotation-cert``."""
    short = make_dev_certificate(K1, STATION, days=1)  # valid from 5 minutes ago for a day
    archive = {f"{K1.keyid}.pem": cert_pem(short)}
    subject = short.subject.rfc4514_string()
    now = _now()
    cases = {"later": (now + dt.timedelta(days=2), "expired at"),
             "earlier": (now - dt.timedelta(hours=1), "is not yet valid: valid from"),
             "within": (now + dt.timedelta(hours=12), None)}
    for name, (moment, words) in cases.items():
        entry = _rotation(K1, K2, 5, at=_time(moment))
        _, problems = _data_dir(tmp_path / name, [entry], archive, current=_identity(K2))
        if words is None:
            assert problems == [], name
            continue
        prefix = (f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                  f"certificate {subject} {words}")
        assert len(problems) == 1 and problems[0].startswith(prefix), (name, problems)
        checked = moment.replace(microsecond=moment.microsecond // 1000 * 1000).isoformat()
        assert problems[0].endswith(f"checked at {checked}"), problems


def test_the_old_certificate_is_for_the_station(tmp_path: Path) -> None:
    """Rule: the retired key's certificate names the station of the station certificate;
    without a station certificate any single common name is accepted."""
    other = make_dev_certificate(K1, "ST-0002")
    archive = {f"{K1.keyid}.pem": cert_pem(other), **_pems(K2)}
    _, problems = _data_dir(tmp_path / "a", [_rotation(K1, K2, 5)], archive,
                            current=_identity(K2))
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        "certificate common name is 'ST-0002', expected station ID 'ST-0001'"]
    schedule, problems = _data_dir(tmp_path / "b", [_rotation(K1, K2, 5)], archive,
                                   current=None)
    assert problems == []
    assert schedule.epochs[0][1] is not None and schedule.epochs[0][1].station_id == "ST-0002"


def test_manifests_of_an_earlier_key_are_checked_against_its_certificate(
        tmp_path: Path) -> None:
    """Rule: the key in force before a rotation comes with its certificate's station, so a
    manifest it signed that names another station is ``manifest-station``."""
    schedule, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], _pems(K1),
                                   current=_identity(K2))
    assert problems == []
    manifest = {"station": {"id": "ST-0009", "key_id": K1.keyid}}
    found, _ = manifest_problems(manifest, clip_id=None, identity=schedule.at(2), digest=None)
    assert [p for p in found if p.startswith("manifest-station")] == [
        "manifest-station: manifest names station 'ST-0009', the certificate is for 'ST-0001'"]
    manifest["station"]["id"] = STATION
    found, _ = manifest_problems(manifest, clip_id=None, identity=schedule.at(2), digest=None)
    assert [p for p in found if p.startswith("manifest-station")] == []


def test_the_new_certificate_is_not_checked_here(tmp_path: Path) -> None:
    """Rule: only the retired key's certificate is checked here: the new key's is the next
    statement's old one, or the station certificate (checked with the target)."""
    archive = {**_pems(K1), f"{K2.keyid}.pem": cert_pem(make_dev_certificate(K2, "ST-9",
                                                                             days=0))}
    _, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], archive, current=None)
    assert problems == []


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("other-ca"), name="another CA")


def test_the_old_certificate_chains_to_trust(tmp_path: Path, ca: DevCA,
                                             other_ca: DevCA) -> None:
    """Rule: with ``--trust``, the retired key's certificate chains to it; without, it is
    taken as its own anchor (the target is then unanchored as a whole, a warning of the
    station certificate's check)."""
    issued = cert_pem(issue_station_certificate(ca, K1, STATION))
    archive = {f"{K1.keyid}.pem": issued}
    rotation = [_rotation(K1, K2, 5)]
    for name, trust in (("anchored", [ca.cert]), ("unanchored", None)):
        _, problems = _data_dir(tmp_path / name, rotation, archive, current=_identity(K2),
                                trust=trust)
        assert problems == [], name
    _, problems = _data_dir(tmp_path / "other", rotation, archive, current=_identity(K2),
                            trust=[other_ca.cert])
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        "certificate issuer CN=bwc development CA,O=bwc-agent development is "
                        "not among the 1 trust anchor(s)"]
    _, problems = _data_dir(tmp_path / "self", rotation, _pems(K1), current=_identity(K2),
                            trust=[ca.cert])
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        f"certificate issuer {CERTS[K1.keyid].issuer.rfc4514_string()} is "
                        "not among the 1 trust anchor(s)"]


def test_the_old_certificate_file_carries_its_intermediates(tmp_path: Path, ca: DevCA) -> None:
    """Rule: ``<keyid>.pem`` is the leaf first, then the intermediate CAs it needs to reach
    ``--trust``; a leaf without them does not chain."""
    intermediate = intermediate_ca(ca)
    leaf = issue_station_certificate(intermediate, K1, STATION)
    rotation = [_rotation(K1, K2, 5)]
    with_chain = {f"{K1.keyid}.pem": cert_pem(leaf) + cert_pem(intermediate.cert)}
    _, problems = _data_dir(tmp_path / "a", rotation, with_chain, current=_identity(K2),
                            trust=[ca.cert])
    assert problems == []
    alone = {f"{K1.keyid}.pem": cert_pem(leaf)}
    _, problems = _data_dir(tmp_path / "b", rotation, alone, current=_identity(K2),
                            trust=[ca.cert])
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        "certificate issuer CN=stations CA is not among the 1 trust "
                        "anchor(s)"]


def test_an_old_certificate_with_a_damaged_extension_is_a_finding(tmp_path: Path) -> None:
    """Rule: a retired key's certificate whose extension is damaged (read only when the
    certificate is checked) is a rotation-cert finding saying it cannot be checked, with
    the parser's reason, instead of an error that ends the verification."""
    junk = x509.UnrecognizedExtension(ExtensionOID.CERTIFICATE_POLICIES, b"\x01\x01\xff")
    damaged = reissued(CERTS[K1.keyid], K1.private_key, extra=[(junk, False)])
    with pytest.raises(ValueError) as refused:
        _ = damaged.extensions
    _, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)],
                            {f"{K1.keyid}.pem": cert_pem(damaged)}, current=_identity(K2))
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        f"the certificate cannot be checked: {refused.value}"]


def test_the_station_certificate_is_the_old_key_s_certificate_too(tmp_path: Path) -> None:
    """Rule: the station certificate counts as a key's certificate: a rotation away from the
    station certificate's key (the certificate not yet replaced) needs no archive file, and
    its validity at ``at`` is checked like an archived one's."""
    short = _identity(K1, make_dev_certificate(K1, STATION, days=1))
    entry = _rotation(K1, K2, 5, at=_time(_now() + dt.timedelta(days=2)))
    schedule, problems = _data_dir(tmp_path, [entry], _pems(K2), current=short)
    assert [p.split(":", 1)[0] for p in problems] == ["rotation-cert", "rotation-chain"]
    assert problems[0].startswith(f"rotation-cert: {_what(5)}: certificate of the old key "
                                  f"{K1.keyid}: certificate ")
    assert "expired at" in problems[0]
    assert schedule.epochs[0][1] is short


# --- rotation-chain ----------------------------------------------------------------------

def test_a_rotation_retiring_a_key_not_in_force_is_a_chain_finding(tmp_path: Path) -> None:
    """Rule: each rotation retires the key the one before handed over to."""
    entries = [_rotation(K1, K2, 5), _rotation(K3, K4, 9)]
    schedule, problems = _data_dir(tmp_path, entries, _pems(K1, K2, K3),
                                   current=_identity(K4))
    assert problems == [f"rotation-chain: {_what(9)} retires key {K3.keyid}, but key "
                        f"{K2.keyid} was in force (since the rotation at seq 5)"]
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid), (9, K4.keyid)]


def test_the_last_rotation_hands_over_to_the_station_certificate(tmp_path: Path) -> None:
    """Rule: the last rotation's new key is the station certificate's key; without a
    station certificate there is nothing to compare, and without a usable statement
    nothing was handed over."""
    entries = [_rotation(K1, K2, 5)]
    _, problems = _data_dir(tmp_path / "a", entries, _pems(K1, K2), current=_identity(K3))
    assert problems == [f"rotation-chain: W: the last rotation (seq 5) hands over to key "
                        f"{K2.keyid}, but the station certificate is for key {K3.keyid}"]
    _, problems = _data_dir(tmp_path / "b", entries, _pems(K1, K2), current=None)
    assert problems == []
    unusable = [_rotation(K1, K2, 5, schema="v0")]
    _, problems = _data_dir(tmp_path / "c", unusable, _pems(K1, K2), current=_identity(K3))
    assert problems == [f"rotation-format: {_what(5)}: schema is 'v0', expected "
                        "'bwc.key-rotation/v1'"]


def test_an_unusable_statement_is_skipped_by_the_chain(tmp_path: Path) -> None:
    """Rule: a statement that is not used (rotation-format) is not part of the chain: the
    first usable one starts the schedule."""
    entries = [_rotation(K1, K2, 5, schema="v0"), _rotation(K2, K3, 9)]
    schedule, problems = _data_dir(tmp_path, entries, _pems(K1, K2), current=_identity(K3))
    assert problems == [f"rotation-format: {_what(5)}: schema is 'v0', expected "
                        "'bwc.key-rotation/v1'"]
    assert _keyids(schedule) == [(1, K2.keyid), (9, K3.keyid)]


# --- certificate files: keys/archive/ and certs/keys/ ------------------------------------

def test_an_archive_file_holding_another_key_s_certificate_is_named(tmp_path: Path) -> None:
    """Rule: ``<keyid>.pem`` holds the certificate of that key; another key's certificate
    under the name is named and not used."""
    archive = {f"{K1.keyid}.pem": cert_pem(CERTS[K3.keyid])}
    _, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], archive, current=_identity(K2))
    assert problems == [
        f"rotation-cert: W: keys/archive/{K1.keyid}.pem holds the certificate of key "
        f"{K3.keyid}, not of key {K1.keyid}",
        f"rotation-cert: {_what(5)}: no certificate for the old key {K1.keyid} "
        f"(certs/keys/{K1.keyid}.pem in a bundle)"]


def _rsa_certificate() -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, STATION)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(_now() - dt.timedelta(days=1))
            .not_valid_after(_now() + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


def _load_error(data: bytes) -> str:
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("a certificate was loaded")


def test_archive_files_that_are_not_a_usable_certificate_are_named(tmp_path: Path) -> None:
    """Rule: a ``.pem`` of the archive that is not a PEM certificate, or whose key cannot
    sign a station statement (RSA), is ``rotation-cert``; its key is then unknown."""
    rsa_cert = _rsa_certificate()
    rsa_keyid = keyid_of(rsa_cert.public_key())  # type: ignore[arg-type]
    archive = {f"{K1.keyid}.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n",
               f"{K3.keyid}.pem": b"",
               f"{rsa_keyid}.pem": cert_pem(rsa_cert), **_pems(K2)}
    _, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], archive, current=None)
    assert len(problems) == 4, problems
    for key in (K1, K3):  # with the parser's reason
        assert (f"rotation-cert: W: keys/archive/{key.keyid}.pem holds no usable station "
                f"certificate: {_load_error(archive[f'{key.keyid}.pem'])}") in problems
    assert (f"rotation-cert: W: keys/archive/{rsa_keyid}.pem holds the certificate of key "
            f"{rsa_keyid}, not of key {rsa_keyid}") in problems
    assert problems[-1] == (f"rotation-cert: {_what(5)}: no certificate for the old key "
                            f"{K1.keyid} (certs/keys/{K1.keyid}.pem in a bundle)")


def test_only_pem_files_of_the_archive_are_read(tmp_path: Path) -> None:
    """Rule: the archive's private keys (``<keyid>.key``) and other files are not read as
    certificates."""
    archive = {**_pems(K1), f"{K1.keyid}.key": b"not a certificate", "notes.txt": b"x",
               f"{K3.keyid}.pem.bak": b"x"}
    schedule, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], archive,
                                   current=_identity(K2))
    assert problems == [] and _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]


def _special(path: Path, kind: str, target: Path) -> None:
    if kind == "link":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with path.open("wb") as f:
            f.truncate(LIMITS["small"] + 1)


SPECIAL = {"link": "is, or lies below, a symbolic link (not followed)",
           "fifo": "is a FIFO, not a regular file (not read)",
           "large": "is larger than this verifier reads (1 MiB)"}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_archive_certificates_are_read_bounded_without_following_links(
        tmp_path: Path, kind: str) -> None:
    """Rule: ``keys/archive/<keyid>.pem`` is read only as a regular file of at most 1 MiB,
    not through a symbolic link; anything else is ``rotation-cert`` with the reason."""
    real = tmp_path / "elsewhere.pem"
    real.write_bytes(cert_pem(CERTS[K1.keyid]))
    archive = tmp_path / "data" / "keys" / "archive"
    archive.mkdir(parents=True)
    _special(archive / f"{K1.keyid}.pem", kind, real)
    schedule, problems = _data_dir(tmp_path, [_rotation(K1, K2, 5)], current=_identity(K2))
    assert problems == [
        f"rotation-cert: W: {archive / K1.keyid}.pem {SPECIAL[kind]}",
        f"rotation-cert: {_what(5)}: no certificate for the old key {K1.keyid} "
        f"(certs/keys/{K1.keyid}.pem in a bundle)"]
    assert _keyids(schedule) == [(1, None), (5, K2.keyid)]


def test_an_archive_directory_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    """Rule: ``keys/archive`` itself is not followed when it is a symbolic link."""
    real = tmp_path / "real-archive"
    real.mkdir()
    (real / f"{K1.keyid}.pem").write_bytes(cert_pem(CERTS[K1.keyid]))
    (tmp_path / "data" / "keys").mkdir(parents=True)
    (tmp_path / "data" / "keys" / "archive").symlink_to(real)
    report = Report()
    schedule = data_dir_schedule(tmp_path / "data", [_rotation(K1, K2, 5)], _identity(K2), None,
                                 report, "W")
    assert report.problems == [f"rotation-cert: {_what(5)}: no certificate for the old key "
                               f"{K1.keyid} (certs/keys/{K1.keyid}.pem in a bundle)"]
    assert _keyids(schedule) == [(1, None), (5, K2.keyid)]
    # Without an archive directory at all: the same.
    report = Report()
    data_dir_schedule(tmp_path / "bare", [_rotation(K1, K2, 5)], _identity(K2), None, report,
                      "W")
    assert report.problems[0].startswith(f"rotation-cert: {_what(5)}: no certificate")


def test_only_key_rotated_entries_of_a_data_directory_are_rotations(tmp_path: Path) -> None:
    """Rule: an entry of another kind is no rotation, even carrying a statement."""
    lookalike = {**_rotation(K1, K2, 5), "kind": "key.rotated.v2"}
    schedule, problems = _data_dir(tmp_path, [lookalike], _pems(K1), current=_identity(K2))
    assert problems == [] and schedule.epochs == []


# --- bundles -----------------------------------------------------------------------------

def _line(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


def _bundle(tmp_path: Path, lines: Sequence[bytes], certs: Mapping[str, bytes] | None = None,
            ) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "bundle"
    (root / "custody").mkdir(parents=True)
    (root / "certs" / "keys").mkdir(parents=True)
    (root / "custody" / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    for name, data in (certs if certs is not None else _pems(K1)).items():
        (root / "certs" / "keys" / name).write_bytes(data)
    files = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()}
    return root, files


def _bundle_schedule(root: Path, files: Mapping[str, int], current: Identity | None = None,
                     trust: Sequence[x509.Certificate] | None = None,
                     ) -> tuple[KeySchedule, list[str]]:
    report = Report()
    schedule = bundle_schedule(root, files, current or _identity(K2), trust, report, "W")
    return schedule, report.problems


def test_a_bundle_s_schedule_comes_from_its_log_and_certs_keys(tmp_path: Path) -> None:
    """Rule: a bundle's rotations are the ``key.rotated`` lines of custody/entries.jsonl,
    the earlier keys' certificates are ``certs/keys/<keyid>.pem``."""
    sealed = {"seq": 4, "kind": "clip.sealed", "body": {"manifest_sha256": "0" * 64}}
    root, files = _bundle(tmp_path, [_line(sealed), _line(_rotation(K1, K2, 5))])
    schedule, problems = _bundle_schedule(root, files)
    assert problems == [] and _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]
    assert schedule.epochs[0][1] is not None
    assert schedule.epochs[0][1].cert == CERTS[K1.keyid]


def test_a_bundle_log_the_scan_did_not_accept_is_not_read(tmp_path: Path) -> None:
    """Rule: the log is read only if the bundle scan accepted it (listed in ``files``) at
    most at the log limit (512 MiB); a bigger one is refused by the entries check, unread."""
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))])
    log = "custody/entries.jsonl"
    for name, listed in (("absent", {k: v for k, v in files.items() if k != log}),
                         ("too large", {**files, log: LIMITS["log"] + 1})):
        schedule, problems = _bundle_schedule(root, listed)
        assert problems == [] and schedule.epochs == [], name
    schedule, _ = _bundle_schedule(root, {**files, log: LIMITS["log"]})
    assert _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_bundle_log_that_is_not_a_regular_file_is_not_read(tmp_path: Path,
                                                               kind: str) -> None:
    """Rule: the log is not read through a link nor from a FIFO (the entries check names
    it); the schedule then has no rotation."""
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes(_line(_rotation(K1, K2, 5)) + b"\n")
    root, files = _bundle(tmp_path, [])
    log = root / "custody" / "entries.jsonl"
    log.unlink()
    _special(log, kind, elsewhere)
    schedule, problems = _bundle_schedule(root, {**files, "custody/entries.jsonl": 10})
    assert problems == [] and schedule.epochs == []


def test_a_rotation_line_that_is_not_json_is_named_by_its_line(tmp_path: Path) -> None:
    """Rule: a log line carrying ``"kind":"key.rotated"`` that is not JSON is
    ``rotation-format`` with its line number; lines that carry the words but are not a
    ``key.rotated`` entry object are not rotations."""
    lines = [_line({"seq": 1, "kind": "clip.sealed", "body": {"kind": "key.rotated"}}),
             b'{"kind":"key.rotated", broken',
             _line(_rotation(K1, K2, 3)),
             b'[{"kind":"key.rotated"}]',
             b'"kind":"key.rotated"',
             b'{"kind":"key.rotated"\xff}']
    root, files = _bundle(tmp_path, lines)
    schedule, problems = _bundle_schedule(root, files)
    assert problems == ["rotation-format: W: custody/entries.jsonl line 2 is not JSON",
                        "rotation-format: W: custody/entries.jsonl line 5 is not JSON",
                        "rotation-format: W: custody/entries.jsonl line 6 is not JSON"]
    assert _keyids(schedule) == [(1, K1.keyid), (3, K2.keyid)]


def test_a_rotation_line_is_read_up_to_one_mebibyte(tmp_path: Path) -> None:
    """Rule: a log line is read in pieces of at most 1 MiB + 1 byte: a ``key.rotated`` line
    longer than that is not read whole, and named not JSON."""
    line = _line(_rotation(K1, K2, 5))
    limit = 1024 * 1024 + 1
    def padded(size: int) -> bytes:  # JSON whitespace before the closing brace
        return line[:-1] + b" " * (size - len(line)) + b"}"

    root, files = _bundle(tmp_path / "a", [padded(limit)])
    schedule, problems = _bundle_schedule(root, files)
    assert problems == [] and _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]
    root, files = _bundle(tmp_path / "b", [padded(limit + 1)])
    schedule, problems = _bundle_schedule(root, files)
    assert problems == ["rotation-format: W: custody/entries.jsonl line 1 is not JSON"]
    assert schedule.epochs == []


def test_only_certs_keys_files_named_by_a_keyid_are_read(tmp_path: Path) -> None:
    """Rule: a bundle's earlier certificates are exactly ``certs/keys/<64 lowercase
    hex>.pem``; other names there are not read as certificates."""
    junk = b"not a certificate"
    certs = {**_pems(K1), f"{K3.keyid.upper()}.pem": junk, f"{K3.keyid}.pem.txt": junk,
             f"{K3.keyid[:63]}.pem": junk, f"x{K3.keyid}.pem": junk}
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))], certs)
    (root / "certs" / "keys" / "sub").mkdir()
    (root / "certs" / "keys" / "sub" / f"{K3.keyid}.pem").write_bytes(junk)
    (root / "certs" / f"{K3.keyid}.pem").write_bytes(junk)
    files.update({f"certs/keys/sub/{K3.keyid}.pem": len(junk), f"certs/{K3.keyid}.pem": 1})
    schedule, problems = _bundle_schedule(root, files)
    assert problems == [] and _keyids(schedule) == [(1, K1.keyid), (5, K2.keyid)]


def test_a_bundle_certificate_holding_another_key_is_named(tmp_path: Path) -> None:
    """Rule: ``certs/keys/<keyid>.pem`` holds that key's certificate (named as such)."""
    certs = {f"{K1.keyid}.pem": cert_pem(CERTS[K3.keyid])}
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))], certs)
    _, problems = _bundle_schedule(root, files)
    assert problems == [
        f"rotation-cert: W: certs/keys/{K1.keyid}.pem holds the certificate of key "
        f"{K3.keyid}, not of key {K1.keyid}",
        f"rotation-cert: {_what(5)}: no certificate for the old key {K1.keyid} "
        f"(certs/keys/{K1.keyid}.pem in a bundle)"]
    certs = {f"{K1.keyid}.pem": b"garbage"}
    root, files = _bundle(tmp_path / "b", [_line(_rotation(K1, K2, 5))], certs)
    _, problems = _bundle_schedule(root, files)
    assert problems[0].startswith(f"rotation-cert: W: certs/keys/{K1.keyid}.pem holds no "
                                  "usable station certificate: ")


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_bundle_certificates_are_read_bounded_without_following_links(
        tmp_path: Path, kind: str) -> None:
    """Rule: ``certs/keys/<keyid>.pem`` is read only as a regular file of at most 1 MiB
    below the bundle, no link followed; anything else is ``rotation-cert`` with the reason."""
    real = tmp_path / "elsewhere.pem"
    real.write_bytes(cert_pem(CERTS[K1.keyid]))
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))], {})
    rel = f"certs/keys/{K1.keyid}.pem"
    _special(root / rel, kind, real)
    schedule, problems = _bundle_schedule(root, {**files, rel: 1})
    assert problems == [f"rotation-cert: W: {rel} {SPECIAL[kind]}",
                        f"rotation-cert: {_what(5)}: no certificate for the old key {K1.keyid} "
                        f"(certs/keys/{K1.keyid}.pem in a bundle)"]
    assert _keyids(schedule) == [(1, None), (5, K2.keyid)]


def test_a_bundle_certificate_below_a_linked_directory_is_not_read(tmp_path: Path) -> None:
    """Rule: no link is followed anywhere on the path, not only at its end."""
    real = tmp_path / "real-keys"
    real.mkdir()
    (real / f"{K1.keyid}.pem").write_bytes(cert_pem(CERTS[K1.keyid]))
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))], {})
    (root / "certs" / "keys").rmdir()
    (root / "certs" / "keys").symlink_to(real)
    rel = f"certs/keys/{K1.keyid}.pem"
    _, problems = _bundle_schedule(root, {**files, rel: 100})
    assert problems[0] == f"rotation-cert: W: {rel} {SPECIAL['link']}"


def test_a_bundle_s_earlier_certificates_chain_to_trust(tmp_path: Path, ca: DevCA,
                                                        other_ca: DevCA) -> None:
    """Rule: in a bundle as in a data directory, the retired key's certificate
    (``certs/keys/``) is checked against ``--trust``."""
    certs = {f"{K1.keyid}.pem": cert_pem(issue_station_certificate(ca, K1, STATION))}
    root, files = _bundle(tmp_path, [_line(_rotation(K1, K2, 5))], certs)
    _, problems = _bundle_schedule(root, files, trust=[ca.cert])
    assert problems == []
    _, problems = _bundle_schedule(root, files, trust=[other_ca.cert])
    assert problems == [f"rotation-cert: {_what(5)}: certificate of the old key {K1.keyid}: "
                        "certificate issuer CN=bwc development CA,O=bwc-agent development is "
                        "not among the 1 trust anchor(s)"]
