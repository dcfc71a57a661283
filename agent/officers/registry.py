"""The station's roster in the store: accepting signed roster messages, looking officers up.

Every roster message the station accepts is kept whole (``roster_messages``)
beside the credentials it carried (``officer_credentials``), so the roster
at any version the station held can be rebuilt and shown later, and
exported for an auditor.  ``roster_entries`` is the roster now.

Invariants:

- a message is accepted only if its signature verifies with the configured
  credential key, it moves the version forward (an update only from the
  version held), and every credential it lists is carried or already held
  with the same digest; acceptance is one transaction with its
  ``roster.accepted`` custody log entry and event;
- a retained snapshot delivered again (every reconnect) is recognised and
  ignored quietly; any other refusal is logged and alerted;
- a credential id always names the same bytes: a message that reuses an id
  for other contents is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import boundedjson
from agent.custody import dsse
from agent.custody.keys import keyid_of, load_public_key
from agent.errors import ConfigError, IntegrityError
from agent.officers.credentials import (
    MAX_DEPTH,
    Credential,
    CredentialError,
    Revocation,
    parse_credential,
)
from agent.officers.roster import (
    MAX_MESSAGE_BYTES,
    SNAPSHOT,
    RosterMessage,
    message_sha256,
    parse_message,
)
from agent.store import Store, Tx
from agent.timeutil import now

log = logging.getLogger(__name__)

Keys = dict[str, dsse.PublicKey]
# Records a refused message: (kind, code, reason, raw message, fields).  Messages from the
# platform's topics go through the inbound worker's RefusalLog (bounded and collapsed:
# anyone who can publish there can send refusable messages at will); an operator's
# ``officers import`` is recorded in full by :func:`refuse`.
Refuse = Callable[[str, str, str, bytes, dict[str, Any]], None]


def load_keys(path: Path | None) -> Keys:
    """The credential key (custody.credential_key_file) as a trusted-key map; {} if unset."""
    if path is None:
        return {}
    try:
        key = load_public_key(path)
    except ConfigError as exc:
        raise ConfigError(f"custody.credential_key_file: {exc}") from None
    return {keyid_of(key): key}


@dataclass(frozen=True)
class Accepted:
    version: int
    kind: str
    changed: bool  # False: the version held already (a retained message again)


def decode(raw: bytes) -> Any:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise CredentialError(f"roster message of {len(raw)} bytes is over the limit of "
                              f"{MAX_MESSAGE_BYTES}")
    try:
        return boundedjson.loads(raw, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_DEPTH)
    except ValueError as exc:
        raise CredentialError(f"roster message is not JSON: {exc}") from None


def held_version(db: Store | Tx) -> int:
    rows = _rows(db, "SELECT value FROM meta WHERE key = 'roster_version'")
    return int(rows[0]["value"]) if rows else 0


def accept(store: Store, raw: bytes, kind: str, keys: Keys, *,
           refused: Refuse | None = None) -> Accepted:
    """Verify and store a roster message; IntegrityError (logged, alerted) if refused.

    ``refused`` records a refusal (default: :func:`refuse`, in full).
    """
    def record(code: str, version: int | None, reason: str) -> None:
        if refused is None:
            refuse(store, kind, version, reason)
        else:
            refused("roster", code, reason, raw, {"kind": kind, "version": version})

    try:
        message = parse_message(decode(raw), kind, keys)
    except IntegrityError as exc:
        record("invalid", None, str(exc))
        raise
    with store.transaction() as tx:
        held = held_version(tx)
        same = tx.one("SELECT 1 FROM roster_messages WHERE kind = ? AND version = ?",
                      (kind, message.version))
        if message.version <= held and (same is not None or kind != SNAPSHOT):
            # Retained snapshots come again with every connection; updates the station
            # went past arrive late.  Neither changes anything.
            return Accepted(held, kind, changed=False)
        reason = _why_not(tx, message, held)
        if reason is None:
            _store(tx, message)
            body = {"kind": kind, "version": message.version,
                    "base_version": message.base_version, "issued_at": message.issued_at,
                    "sha256": message_sha256(message.raw), "credentials": len(message.listed),
                    "revoked": len(message.revoked)}
            tx.log("roster.accepted", None, body)
            tx.event("roster.accepted", body)
    if reason is not None:
        record("out-of-sequence", message.version, reason)
        raise IntegrityError(reason)
    log.info("accepted %s", message.describe())
    return Accepted(message.version, kind, changed=True)


def refuse(store: Store, kind: str, version: int | None, reason: str) -> None:
    log.error("roster %s refused: %s", kind, reason)
    body = {"kind": kind, "version": version, "reason": reason}
    with store.transaction() as tx:
        tx.log("roster.refused", None, body)
        tx.event("alert", {"code": "roster.refused", "message": reason, "version": version})


def _why_not(tx: Tx, message: RosterMessage, held: int) -> str | None:
    if message.kind == SNAPSHOT and message.version < held:
        return (f"{message.describe()} is older than the version held ({held}); rosters only "
                "move forward")
    if message.kind != SNAPSHOT and message.base_version != held:
        return (f"{message.describe()} does not follow the version held ({held}); waiting for "
                "a snapshot")
    carried = {c.credential_id: c for c in message.credentials}
    for item in message.listed:
        row = tx.one("SELECT payload_sha256 FROM officer_credentials WHERE credential_id = ?",
                     (item.credential_id,))
        if row is not None and row["payload_sha256"] != item.sha256:
            return (f"{message.describe()} lists credential {item.credential_id} with other "
                    "contents than the credential of that id already held")
        if row is None and item.credential_id not in carried:
            return (f"{message.describe()} lists credential {item.credential_id} but does not "
                    "carry it")
    return None


def _store(tx: Tx, message: RosterMessage) -> None:
    at = now()
    tx.execute("INSERT INTO roster_messages (kind, version, base_version, issued_at, message, "
               "received_at) VALUES (?,?,?,?,?,?)",
               (message.kind, message.version, message.base_version, message.issued_at,
                json.dumps(message.raw, ensure_ascii=False, separators=(",", ":")), at))
    for credential in message.credentials:
        tx.execute("INSERT OR IGNORE INTO officer_credentials (credential_id, officer_id, "
                   "card_id, payload_sha256, envelope, received_at) VALUES (?,?,?,?,?,?)",
                   (credential.credential_id, credential.officer_id, credential.card_id,
                    credential.payload_sha256,
                    json.dumps(credential.envelope, separators=(",", ":")), at))
        for serial in credential.cameras:
            tx.execute("INSERT OR IGNORE INTO credential_cameras (serial, credential_id) "
                       "VALUES (?,?)", (serial, credential.credential_id))
    if message.kind == SNAPSHOT:
        tx.execute("DELETE FROM roster_entries")
    for item in message.listed:
        tx.execute("INSERT OR REPLACE INTO roster_entries (credential_id, officer_id, "
                   "payload_sha256) VALUES (?,?,?)",
                   (item.credential_id, item.officer_id, item.sha256))
    for rev in message.revoked:
        tx.execute("INSERT INTO roster_entries (credential_id, officer_id, revoked_at, "
                   "revoke_reason) VALUES (?,?,?,?) ON CONFLICT (credential_id) DO UPDATE SET "
                   "revoked_at = excluded.revoked_at, revoke_reason = excluded.revoke_reason",
                   (rev.credential_id, rev.officer_id, rev.revoked_at, rev.reason))
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('roster_version', ?)",
               (str(message.version),))


# --- looking officers up ------------------------------------------------------------------

@dataclass(frozen=True)
class Held:
    """A credential of the roster held now, with its revocation if any."""

    credential: Credential
    revocation: Revocation | None


def credentials_of(db: Store | Tx, officer_id: str) -> list[Held]:
    """Every credential the roster now lists for ``officer_id`` (revoked ones too)."""
    rows = _rows(db, "SELECT e.credential_id, e.officer_id, e.revoked_at, e.revoke_reason, "
                     "c.envelope FROM roster_entries e JOIN officer_credentials c "
                     "ON c.credential_id = e.credential_id WHERE e.officer_id = ? "
                     "ORDER BY e.credential_id", (officer_id,))
    return [_held(row) for row in rows]


def credential_by_id(db: Store | Tx, credential_id: str) -> Held | None:
    rows = _rows(db, "SELECT e.credential_id, e.officer_id, e.revoked_at, e.revoke_reason, "
                     "c.envelope FROM roster_entries e JOIN officer_credentials c "
                     "ON c.credential_id = e.credential_id WHERE e.credential_id = ?",
                 (credential_id,))
    return _held(rows[0]) if rows else None


def credential_by_card(db: Store | Tx, card_id: str) -> list[Held]:
    rows = _rows(db, "SELECT e.credential_id, e.officer_id, e.revoked_at, e.revoke_reason, "
                     "c.envelope FROM roster_entries e JOIN officer_credentials c "
                     "ON c.credential_id = e.credential_id WHERE c.card_id = ?", (card_id,))
    return [_held(row) for row in rows]


def camera_holders(db: Store | Tx, serial: str) -> list[Held]:
    """Credentials in the roster now (not revoked) that name camera ``serial``."""
    rows = _rows(db, "SELECT e.credential_id, e.officer_id, e.revoked_at, e.revoke_reason, "
                     "c.envelope FROM credential_cameras k JOIN roster_entries e "
                     "ON e.credential_id = k.credential_id JOIN officer_credentials c "
                     "ON c.credential_id = e.credential_id "
                     "WHERE k.serial = ? AND e.revoked_at IS NULL", (serial,))
    return [_held(row) for row in rows]


def _held(row: Any) -> Held:
    credential = parse_credential(json.loads(row["envelope"]))
    revocation = None
    if row["revoked_at"] is not None:
        revocation = Revocation(row["credential_id"], row["officer_id"], row["revoked_at"],
                                row["revoke_reason"] or "")
    return Held(credential, revocation)


def messages(db: Store | Tx) -> list[Mapping[str, Any]]:
    """Every stored roster message with its kind and version, in version order."""
    return [{"kind": r["kind"], "version": r["version"], "base_version": r["base_version"],
             "issued_at": r["issued_at"], "received_at": r["received_at"],
             "message": json.loads(r["message"])}
            for r in _rows(db, "SELECT * FROM roster_messages ORDER BY version, kind")]


def _rows(db: Store | Tx, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    if isinstance(db, Tx):
        return list(db.execute(sql, params).fetchall())
    return db.query(sql, params)
