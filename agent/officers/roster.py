"""The officer roster: signed snapshots and updates, and the state they build.

A roster message (docs/FORMATS.md section 13, PROTOCOL.md section 8) is::

    {"envelope": <DSSE roster or roster update>, "credentials": [<DSSE credential>, ...]}

The envelope, signed by the credential key, lists each credential in force
by id, officer and the SHA-256 of its payload, and each revocation; the
credentials travel beside it and are tied to it by those digests.  A
snapshot (``officer-roster``) states the whole roster at ``version``; an
update (``officer-roster-update``) moves ``base_version`` to ``version`` by
adding credentials and revoking others.

:class:`RosterState` applies messages in order; :func:`state_at` rebuilds the
state at a version from the messages that lead there (the verifier does this
with the messages in a bundle).  Invariants: a message is parsed only after
its signature verified; every credential carried is named in the signed
list with the same digest; versions only move forward.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.custody import dsse
from agent.errors import IntegrityError
from agent.officers.credentials import (
    Credential,
    CredentialError,
    Revocation,
    check_text,
    check_time,
    parse_credential,
    payload_of,
)

SNAPSHOT, UPDATE = "snapshot", "update"
KINDS = {SNAPSHOT: dsse.ROSTER, UPDATE: dsse.ROSTER_UPDATE}
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class Listed:
    """A credential as the signed roster lists it."""

    credential_id: str
    officer_id: str
    sha256: str


@dataclass(frozen=True)
class RosterMessage:
    kind: str  # SNAPSHOT or UPDATE
    version: int
    base_version: int | None
    issued_at: str
    listed: tuple[Listed, ...]  # snapshot: every credential; update: those added
    revoked: tuple[Revocation, ...]
    credentials: tuple[Credential, ...]  # the envelopes carried beside it, parsed
    raw: Mapping[str, Any]  # the message as received: kept, exported, verified again

    def describe(self) -> str:
        if self.kind == SNAPSHOT:
            return f"roster snapshot version {self.version}"
        return f"roster update {self.base_version} -> {self.version}"


def parse_message(message: Any, kind: str, keys: Mapping[str, dsse.PublicKey]) -> RosterMessage:
    """Verify and parse a roster message of ``kind``; IntegrityError saying what is wrong."""
    if not isinstance(message, Mapping) or not isinstance(message.get("credentials", []), list):
        raise CredentialError("roster message is not {\"envelope\": ..., \"credentials\": [...]}")
    envelope = message.get("envelope")
    if not keys:
        raise IntegrityError("no credential key is configured (custody.credential_key_file): "
                             "rosters cannot be checked")
    dsse.verify_envelope(envelope, keys, KINDS[kind])
    _raw, doc = payload_of(envelope, KINDS[kind], f"roster {kind}")
    version = _count(doc.get("version"), "version", minimum=1)
    base = None
    if kind == UPDATE:
        base = _count(doc.get("base_version"), "base_version", minimum=0)
        if base >= version:
            raise CredentialError(f"roster update {base} -> {version} does not move forward")
    issued = check_text(doc.get("issued_at"), "issued_at", limit=64)
    check_time(issued, "issued_at")
    listed = _listed(doc.get("credentials" if kind == SNAPSHOT else "add"))
    revoked = _revocations(doc.get("revoked" if kind == SNAPSHOT else "revoke"))
    by_id = {item.credential_id: item for item in listed}
    if len(by_id) != len(listed):
        raise CredentialError(f"roster version {version} lists a credential id twice")
    carried = []
    for index, item in enumerate(message.get("credentials", [])):
        credential = parse_credential(item)
        entry = by_id.get(credential.credential_id)
        if entry is None or entry.sha256 != credential.payload_sha256:
            raise CredentialError(
                f"credentials[{index}] ({credential.credential_id}) is not the credential the "
                f"signed roster version {version} lists (id or SHA-256 differs)")
        if entry.officer_id != credential.officer_id:
            raise CredentialError(f"credential {credential.credential_id} is for officer "
                                  f"{credential.officer_id}, the roster says {entry.officer_id}")
        carried.append(credential)
    return RosterMessage(kind=kind, version=version, base_version=base, issued_at=issued,
                         listed=tuple(listed), revoked=tuple(revoked),
                         credentials=tuple(carried), raw=message)


def message_sha256(message: Mapping[str, Any]) -> str:
    """SHA-256 of the signed roster payload: names a roster version in the custody log."""
    return hashlib.sha256(dsse.b64decode(message["envelope"]["payload"])).hexdigest()


def _count(value: Any, where: str, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value < 2**53:
        raise CredentialError(f"{where} is {json.dumps(value)[:40]}, expected an integer "
                              f">= {minimum}")
    return value


def _listed(value: Any) -> list[Listed]:
    items = _array(value, "credentials")
    out = []
    for i, item in enumerate(items):
        where = f"credentials[{i}]"
        if not isinstance(item, Mapping):
            raise CredentialError(f"{where} is not an object")
        sha = check_text(item.get("sha256"), f"{where}.sha256", limit=64)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise CredentialError(f"{where}.sha256 is not 64 lowercase hex digits")
        out.append(Listed(check_text(item.get("credential_id"), f"{where}.credential_id"),
                          check_text(item.get("officer_id"), f"{where}.officer_id"), sha))
    return out


def _revocations(value: Any) -> list[Revocation]:
    out = []
    for i, item in enumerate(_array(value, "revoked")):
        where = f"revoked[{i}]"
        if not isinstance(item, Mapping):
            raise CredentialError(f"{where} is not an object")
        at = check_text(item.get("revoked_at"), f"{where}.revoked_at", limit=64)
        check_time(at, f"{where}.revoked_at")
        out.append(Revocation(
            credential_id=check_text(item.get("credential_id"), f"{where}.credential_id"),
            officer_id=check_text(item.get("officer_id"), f"{where}.officer_id"),
            revoked_at=at,
            reason=check_text(item.get("reason", ""), f"{where}.reason", limit=256,
                              empty=True)))
    return out


def _array(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CredentialError(f"{where} is not an array")
    if len(value) > MAX_ENTRIES:
        raise CredentialError(f"{where} has {len(value)} items (at most {MAX_ENTRIES})")
    return value


@dataclass(frozen=True)
class Entry:
    credential_id: str
    officer_id: str
    sha256: str | None  # None: known only from a revocation
    revocation: Revocation | None = None


@dataclass
class RosterState:
    """The roster at ``version``: credential id -> entry (revoked ones included)."""

    version: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)

    def apply(self, message: RosterMessage) -> None:
        """Move to ``message``'s version; IntegrityError if it does not follow on."""
        if message.kind == SNAPSHOT:
            self.entries = {item.credential_id: Entry(item.credential_id, item.officer_id,
                                                      item.sha256) for item in message.listed}
        else:
            if message.base_version != self.version:
                raise IntegrityError(f"{message.describe()} does not apply to version "
                                     f"{self.version}")
            for item in message.listed:
                self.entries[item.credential_id] = Entry(item.credential_id, item.officer_id,
                                                         item.sha256)
        for rev in message.revoked:
            known = self.entries.get(rev.credential_id)
            self.entries[rev.credential_id] = Entry(
                rev.credential_id, known.officer_id if known else rev.officer_id,
                known.sha256 if known else None, rev)
        self.version = message.version


def state_at(messages: Iterable[RosterMessage], version: int) -> RosterState | None:
    """The roster at ``version`` from the newest snapshot at or below it and the updates
    after it; None if the messages do not lead exactly there."""
    ordered: Sequence[RosterMessage] = sorted(messages, key=lambda m: (m.version,
                                                                       m.kind != SNAPSHOT))
    snapshots = [m for m in ordered if m.kind == SNAPSHOT and m.version <= version]
    if not snapshots:
        return None
    state = RosterState()
    state.apply(snapshots[-1])
    for message in ordered:
        if state.version == version:
            break
        if message.kind == UPDATE and message.base_version == state.version \
                and message.version <= version:
            state.apply(message)
    return state if state.version == version else None
