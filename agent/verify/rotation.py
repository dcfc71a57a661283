"""Key rotations in a bundle or data directory: which station key signed what, and why to trust it.

A station that ran ``keys rotate`` signed with several keys over its life.
The custody log says when each took over: a ``key.rotated`` entry at seq
``s`` holds a rotation statement (DSSE, payloadType
``application/vnd.bwc.key-rotation.v1+json``) signed by the old AND the new
key, whose ``log_size`` is ``s - 1``.  From it the verifier builds the key
schedule (docs/FORMATS.md section 5.1):

- before the first rotation, the first statement's old key is in force;
- from a rotation's seq on (that entry included), its new key is;
- a checkpoint of size ``n`` is signed by the key in force at seq ``n``; a
  manifest by the key in force at the seq of the ``clip.sealed`` entry that
  records it.

Each statement is checked (findings, never exceptions): its fields
(``rotation-format``), its position (``rotation-position``), both signatures
and no other (``rotation-signature``), that it continues from the key in
force (``rotation-chain``, and the last one ends at the station
certificate's key), and the certificate of the key it retires: present,
issued for the station, valid when the statement was made, chained to
``--trust`` (``rotation-cert``).  Certificates of earlier keys are
``certs/keys/<keyid>.pem`` in a bundle, ``keys/archive/<keyid>.pem`` in a data
directory; files are read through agent/verify/files.py (bounded, no link
followed, regular files only).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.custody import dsse
from agent.custody.keys import certificate_problems, certificate_station_id, keyid_of
from agent.timeutil import parse_rfc3339
from agent.verify.checks import CERT_ERRORS, HEX64, Identity, parse_canonical
from agent.verify.files import LIMITS, Unreadable, open_beneath, read_beneath, read_file
from agent.verify.layout import ENTRIES
from agent.verify.report import Report

__all__ = ["ROTATION_KIND", "KeySchedule", "bundle_schedule", "data_dir_schedule"]

ROTATION_KIND = "key.rotated"
SCHEMA = "bwc.key-rotation/v1"
_BUNDLE_CERT = re.compile(r"certs/keys/[0-9a-f]{64}\.pem")
_MAX_LINE = 1024 * 1024
_MARK = b'"kind":"key.rotated"'


@dataclass
class KeySchedule:
    """Keys in force by log position: ``epochs`` is (first seq, identity), in order."""

    current: Identity | None
    epochs: list[tuple[int, Identity | None]] = field(default_factory=list)

    def at(self, position: int) -> Identity | None:
        """The key in force for entry ``position`` (or a checkpoint of that size)."""
        chosen = self.epochs[0][1] if self.epochs else self.current
        for first, identity in self.epochs:
            if first <= position:
                chosen = identity
        return chosen

    def for_checkpoint(self, envelope: Any) -> Identity | None:
        """The key that must have signed ``envelope`` (a checkpoint), by its size."""
        payload = _peek(envelope)
        size = payload.get("size") if isinstance(payload, dict) else None
        if not self.epochs or not isinstance(size, int) or isinstance(size, bool):
            return self.current
        return self.at(size)

    def for_manifest(self, envelope: Any, entries: Iterable[Mapping[str, Any]]) -> Identity | None:
        """The key in force where the log records this manifest (its ``clip.sealed`` entry)."""
        if not self.epochs:
            return self.current
        raw = _peek_bytes(envelope)
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else None
        for entry in entries:
            body = entry.get("body")
            if entry.get("kind") == "clip.sealed" and isinstance(body, dict) \
                    and body.get("manifest_sha256") == digest and isinstance(entry.get("seq"), int):
                return self.at(entry["seq"])
        return self.current


def _peek_bytes(envelope: Any) -> bytes | None:
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("payload"), str):
        return None
    try:
        return dsse.b64decode(envelope["payload"])
    except ValueError:
        return None


def _peek(envelope: Any) -> Any:
    raw = _peek_bytes(envelope)
    try:
        return json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        return None


# --- reading certificates and entries -------------------------------------------------------

def _identity(data: bytes | str, name: str, report: Report, where: str,
              label: str) -> Identity | None:
    """The certificate of an earlier key (``<keyid>.pem``, leaf first), or None after a finding."""
    if isinstance(data, str):
        report.problem(f"rotation-cert: {where}: {data}")
        return None
    try:
        certs = x509.load_pem_x509_certificates(data)
        key = certs[0].public_key()
        keyid = keyid_of(key)  # type: ignore[arg-type]
        station_id = certificate_station_id(certs[0])
    except (*CERT_ERRORS, IndexError, TypeError, AttributeError) as exc:
        report.problem(f"rotation-cert: {where}: {label}/{name} holds no usable station "
                       f"certificate: {str(exc)[:300]}")
        return None
    if name != f"{keyid}.pem" or not isinstance(key, dsse.PublicKey):
        report.problem(f"rotation-cert: {where}: {label}/{name} holds the certificate of key "
                       f"{keyid}, not of key {name.removesuffix('.pem')}")
        return None
    return Identity(cert=certs[0], keyid=keyid, public_key=key, station_id=station_id,
                    chain=tuple(certs[1:]))


def _read(read: Callable[[], bytes]) -> bytes | str:
    try:
        return read()
    except Unreadable as exc:
        return str(exc)


def _rotation_lines(fd: int, report: Report, where: str) -> list[dict[str, Any]]:
    """The ``key.rotated`` lines of custody/entries.jsonl, streamed (their inclusion is
    checked with every other entry's)."""
    out: list[dict[str, Any]] = []
    with os.fdopen(fd, "rb") as handle:
        for number, line in enumerate(iter(lambda: handle.readline(_MAX_LINE + 1), b""), 1):
            if _MARK not in line:
                continue
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, ValueError, RecursionError):
                report.problem(f"rotation-format: {where}: custody/entries.jsonl line {number} "
                               "is not JSON")
                continue
            if isinstance(entry, dict) and entry.get("kind") == ROTATION_KIND:
                out.append(entry)
    return out


# --- the schedule ------------------------------------------------------------------------

def bundle_schedule(root: Path, files: Mapping[str, int], current: Identity | None,
                    trust: Sequence[x509.Certificate] | None, report: Report,
                    where: str) -> KeySchedule:
    """The key schedule of a bundle: its rotations and ``certs/keys/``; ``files`` are the
    regular files the bundle scan accepted (relative path -> size), read beneath ``root``."""
    rotations: list[dict[str, Any]] = []
    # Within the size the entries check reads (a bigger file is refused there, unread).
    if files.get(ENTRIES, LIMITS["log"] + 1) <= LIMITS["log"]:
        with contextlib.suppress(Unreadable):  # reported by the entries check
            rotations = _rotation_lines(open_beneath(root, ENTRIES), report, where)
    earlier: dict[str, Identity] = {}
    for rel in sorted(r for r in files if _BUNDLE_CERT.fullmatch(r)):
        name = rel.rsplit("/", 1)[1]
        found = _identity(_read(functools.partial(read_beneath, root, rel, LIMITS["small"])),
                          name, report, where, "certs/keys")
        if found is not None:
            earlier[found.keyid] = found
    return _schedule(rotations, current, earlier, trust, report, where)


def data_dir_schedule(root: Path, entries: Sequence[Mapping[str, Any]], current: Identity | None,
                      trust: Sequence[x509.Certificate] | None, report: Report,
                      where: str) -> KeySchedule:
    """The key schedule of a data directory (its log and ``keys/archive/``)."""
    rotations = [e for e in entries if e.get("kind") == ROTATION_KIND]
    archive = root / "keys" / "archive"
    earlier: dict[str, Identity] = {}
    names = sorted(p.name for p in archive.iterdir()) \
        if archive.is_dir() and not archive.is_symlink() else []
    for name in (n for n in names if n.endswith(".pem")):
        found = _identity(_read(functools.partial(read_file, archive / name, LIMITS["small"])),
                          name, report, where, "keys/archive")
        if found is not None:
            earlier[found.keyid] = found
    return _schedule(rotations, current, earlier, trust, report, where)


def _schedule(rotations: Sequence[Mapping[str, Any]], current: Identity | None,
              earlier: dict[str, Identity], trust: Sequence[x509.Certificate] | None,
              report: Report, where: str) -> KeySchedule:
    schedule = KeySchedule(current)
    if not rotations:
        return schedule
    known = dict(earlier)
    if current is not None:
        known[current.keyid] = current
    station_id = current.station_id if current is not None else None
    in_force: str | None = None
    last_seq = 0
    for entry in sorted(rotations, key=_seq_of):
        raw_seq = entry.get("seq")
        seq = raw_seq if isinstance(raw_seq, int) else 0
        what = f"{where}: rotation at seq {seq}"
        statement, problems = _statement(entry, seq, station_id, what)
        for text in problems:
            report.problem(text)
        if statement is None:
            continue
        old, new = statement["old_keyid"], statement["new_keyid"]
        if in_force is None:
            schedule.epochs.append((1, known.get(old)))
        elif old != in_force:
            report.problem(f"rotation-chain: {what} retires key {old}, but key {in_force} was "
                           f"in force (since the rotation at seq {last_seq})")
        for text in _signature_problems(entry, old, new, known, what):
            report.problem(text)
        old_identity = known.get(old)
        if old_identity is not None:
            at = parse_rfc3339(statement["at"])
            for text in _cert_problems(old_identity, at, trust, station_id):
                report.problem(f"rotation-cert: {what}: certificate of the old key {old}: {text}")
        schedule.epochs.append((seq, known.get(new)))
        in_force, last_seq = new, seq
    if current is not None and in_force is not None and in_force != current.keyid:
        report.problem(f"rotation-chain: {where}: the last rotation (seq {last_seq}) hands over "
                       f"to key {in_force}, but the station certificate is for key "
                       f"{current.keyid}")
    return schedule


def _seq_of(entry: Mapping[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) else 0


def _statement(entry: Mapping[str, Any], seq: int, station_id: str | None,
               what: str) -> tuple[dict[str, Any] | None, list[str]]:
    body = entry.get("body")
    envelope = body.get("statement") if isinstance(body, dict) else None
    if not isinstance(envelope, dict) or envelope.get("payloadType") != dsse.KEY_ROTATION:
        return None, [f"rotation-format: {what}: the entry holds no statement of type "
                      f"{dsse.KEY_ROTATION}"]
    raw = _peek_bytes(envelope)
    if raw is None:
        return None, [f"rotation-format: {what}: the statement's payload is not base64"]
    value, problems = parse_canonical(raw, "rotation-format", what)
    if not isinstance(value, dict):
        return None, problems or [f"rotation-format: {what}: the payload is not an object"]
    for name in ("old_keyid", "new_keyid"):
        if not isinstance(value.get(name), str) or not HEX64.fullmatch(value[name]):
            problems.append(f"rotation-format: {what}: {name} is not 64 lowercase hex digits")
    at = value.get("at")
    try:
        parse_rfc3339(at) if isinstance(at, str) else None
    except ValueError:
        at = None
    if not isinstance(at, str):
        problems.append(f"rotation-format: {what}: 'at' is not an RFC 3339 time")
    if value.get("schema") != SCHEMA:
        problems.append(f"rotation-format: {what}: schema is {value.get('schema')!r}, "
                        f"expected {SCHEMA!r}")
    if station_id is not None and value.get("station_id") != station_id:
        problems.append(f"rotation-format: {what}: the statement names station "
                        f"{value.get('station_id')!r}, the certificate is for {station_id!r}")
    if value.get("old_keyid") == value.get("new_keyid"):
        problems.append(f"rotation-format: {what}: the old and the new key are the same")
    size = value.get("log_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != seq - 1:
        problems.append(f"rotation-position: {what}: the statement says the log held "
                        f"{size!r} entries before it, but it is entry {seq} (a statement "
                        "copied to another place in the log)")
    usable = not any(p.startswith("rotation-format") for p in problems)
    return (value if usable else None), problems


def _signature_problems(entry: Mapping[str, Any], old: str, new: str,
                        known: Mapping[str, Identity], what: str) -> list[str]:
    envelope = entry["body"]["statement"]
    signatures = envelope.get("signatures")
    problems: list[str] = []
    by_keyid: dict[str, list[Any]] = {}
    for item in signatures if isinstance(signatures, list) else []:
        keyid = item.get("keyid") if isinstance(item, dict) else None
        by_keyid.setdefault(keyid if isinstance(keyid, str) else "", []).append(item)
    for role, keyid in (("old", old), ("new", new)):
        identity = known.get(keyid)
        if identity is None:
            problems.append(f"rotation-cert: {what}: no certificate for the {role} key {keyid} "
                            f"(certs/keys/{keyid}.pem in a bundle)")
            continue
        mine = by_keyid.get(keyid, [])
        if not mine:
            problems.append(f"rotation-signature: {what}: no signature by the {role} key "
                            f"{keyid}; a rotation statement is signed by both keys")
            continue
        trusted = {keyid: identity.public_key}
        one = {"payloadType": dsse.KEY_ROTATION, "payload": envelope["payload"],
               "signatures": mine}
        if dsse.envelope_problems(one, trusted, dsse.KEY_ROTATION):
            problems.append(f"rotation-signature: {what}: the signature by the {role} key "
                            f"{keyid} does not verify (altered, or made by another key)")
    for keyid in sorted(set(by_keyid) - {old, new}):
        problems.append(f"rotation-signature: {what}: signed by key {keyid or '(no keyid)'}, "
                        "which is neither the old nor the new key")
    return problems


def _cert_problems(identity: Identity, at: dt.datetime,
                   trust: Sequence[x509.Certificate] | None, station_id: str | None) -> list[str]:
    anchors = list(trust) if trust is not None else [identity.cert]
    try:
        return certificate_problems(identity.cert, at, anchors, station_id=station_id,
                                    intermediates=identity.chain)
    except CERT_ERRORS as exc:  # a damaged extension or name, parsed lazily
        return [f"the certificate cannot be checked: {str(exc)[:300]}"]
