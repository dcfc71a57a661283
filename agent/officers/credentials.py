"""Officer credentials: what one says, and whether it holds for a recording.

A credential is a DSSE envelope of type
``application/vnd.bwc.officer-credential.v1+json`` signed by the platform's
credential key; its payload (RFC 8785 JSON) names the officer, the unit, the
roles, optionally the cameras assigned and an identity card, and a validity
window.  docs/FORMATS.md section 12 is the exact format.

:func:`judge` decides, offline, whether a credential vouches for the officer
of one recording, in this order: signature, revocation, validity at the
recording time, camera assignment.  The station runs it at every seal; the
verifier runs the same function on a bundle.  Invariants:

- every field of a payload is checked before use (types, lengths, no control
  characters): a malformed credential is a named refusal, never a crash;
- a credential's signature is always checked against the configured key at
  judging time, even when the roster that carried it was signed.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent import boundedjson
from agent.custody import dsse
from agent.errors import IntegrityError
from agent.timeutil import parse_rfc3339, rfc3339

MAX_ID = 128
MAX_TEXT = 256
MAX_LIST = 64
# A signed payload (a credential, a roster, a case window) parsed before its signature
# is checked: bounded in size (a roster of thousands of officers fits) and in nesting.
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 32


class CredentialError(IntegrityError):
    """A credential, roster or case window that is malformed; the text says which field."""


class Outcome(StrEnum):
    """How a clip's officer binding ended (``officer.status`` in the manifest)."""

    VALID = "valid"
    BAD_SIGNATURE = "bad-signature"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    MISMATCH = "camera-mismatch"
    UNKNOWN = "unknown-officer"
    MISSING = "no-officer"
    NO_ROSTER = "no-roster"
    NOT_CHECKED = "not-checked"


# The manifest flag (and alert code) of each outcome; every outcome but VALID also
# carries "officer.unverified".
FLAGS: dict[Outcome, str] = {
    Outcome.BAD_SIGNATURE: "officer.bad_signature",
    Outcome.REVOKED: "officer.revoked",
    Outcome.EXPIRED: "officer.expired",
    Outcome.NOT_YET_VALID: "officer.not_yet_valid",
    Outcome.MISMATCH: "officer.mismatch",
    Outcome.UNKNOWN: "officer.unknown",
    Outcome.MISSING: "officer.missing",
    Outcome.NO_ROSTER: "officer.no_roster",
    Outcome.NOT_CHECKED: "officer.not_checked",
}
UNVERIFIED = "officer.unverified"


def flags_for(outcome: Outcome) -> list[str]:
    return [] if outcome == Outcome.VALID else [UNVERIFIED, FLAGS[outcome]]


@dataclass(frozen=True)
class Credential:
    """A parsed credential payload (signature not implied: see :func:`signature_ok`)."""

    credential_id: str
    officer_id: str
    name: str
    unit_code: str
    unit_name: str
    roles: tuple[str, ...]
    cameras: tuple[str, ...]  # empty: any camera
    card_id: str | None
    not_before: datetime
    not_after: datetime
    payload_sha256: str
    envelope: Mapping[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"credential_id": self.credential_id, "officer_id": self.officer_id,
                "name": self.name, "unit_code": self.unit_code, "unit_name": self.unit_name,
                "roles": list(self.roles), "cameras": list(self.cameras),
                "card_id": self.card_id, "not_before": rfc3339(self.not_before),
                "not_after": rfc3339(self.not_after)}


def check_text(value: Any, where: str, *, limit: int = MAX_ID, empty: bool = False) -> str:
    """A string without control or format characters, at most ``limit`` characters."""
    if not isinstance(value, str):
        raise CredentialError(f"{where} is {json.dumps(value)[:40]}, expected a string")
    if not value and not empty:
        raise CredentialError(f"{where} is empty")
    if len(value) > limit:
        raise CredentialError(f"{where} is {len(value)} characters long (at most {limit})")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")),
               None)
    if bad is not None:
        raise CredentialError(f"{where} holds the control or format character "
                              f"U+{ord(bad):04X}")
    return value


def check_time(value: Any, where: str) -> datetime:
    text = check_text(value, where, limit=64)
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise CredentialError(f"{where} is {text!r}, not an RFC 3339 time") from None


def check_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise CredentialError(f"{where} is not an array of strings")
    if len(value) > MAX_LIST:
        raise CredentialError(f"{where} has {len(value)} items (at most {MAX_LIST})")
    return tuple(check_text(v, f"{where}[{i}]") for i, v in enumerate(value))


def payload_of(envelope: Any, expected_type: str, what: str) -> tuple[bytes, dict[str, Any]]:
    """The raw payload and its JSON object, signature NOT checked; CredentialError if unusable."""
    if not isinstance(envelope, Mapping):
        raise CredentialError(f"{what} is not a DSSE envelope (JSON object)")
    if envelope.get("payloadType") != expected_type:
        raise CredentialError(f"{what} has payloadType {envelope.get('payloadType')!r}, "
                              f"expected {expected_type!r}")
    try:
        raw = dsse.b64decode(envelope["payload"])
        # Parsed before the signature is checked: bounded, whatever the sender nested.
        value = boundedjson.loads(raw, max_bytes=MAX_PAYLOAD_BYTES, max_depth=MAX_DEPTH)
    except (KeyError, TypeError, ValueError) as exc:
        raise CredentialError(f"{what} payload is not base64 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CredentialError(f"{what} payload is not a JSON object")
    return raw, value


def parse_credential(envelope: Any) -> Credential:
    """A credential's fields; CredentialError naming the first bad field."""
    raw, doc = payload_of(envelope, dsse.CREDENTIAL, "credential")
    cid = check_text(doc.get("credential_id"), "credential_id")
    where = f"credential {cid}"
    cameras = doc.get("cameras", [])
    card = doc.get("card_id")
    credential = Credential(
        credential_id=cid,
        officer_id=check_text(doc.get("officer_id"), f"{where}: officer_id"),
        name=check_text(doc.get("name"), f"{where}: name", limit=MAX_TEXT),
        unit_code=check_text(doc.get("unit_code"), f"{where}: unit_code", empty=True),
        unit_name=check_text(doc.get("unit_name"), f"{where}: unit_name", limit=MAX_TEXT,
                             empty=True),
        roles=check_list(doc.get("roles"), f"{where}: roles"),
        cameras=check_list(cameras if cameras is not None else [], f"{where}: cameras"),
        card_id=check_text(card, f"{where}: card_id") if card is not None else None,
        not_before=check_time(doc.get("not_before"), f"{where}: not_before"),
        not_after=check_time(doc.get("not_after"), f"{where}: not_after"),
        payload_sha256=hashlib.sha256(raw).hexdigest(),
        envelope=envelope,
    )
    if credential.not_after < credential.not_before:
        raise CredentialError(f"{where}: not_after is before not_before")
    return credential


def signature_ok(credential: Credential, keys: Mapping[str, dsse.PublicKey]) -> bool:
    return bool(keys) and not dsse.envelope_problems(credential.envelope, keys, dsse.CREDENTIAL)


@dataclass(frozen=True)
class Revocation:
    credential_id: str
    officer_id: str
    revoked_at: str
    reason: str


def judge(credential: Credential, *, keys: Mapping[str, dsse.PublicKey], at: datetime,
          serial: str | None, revocation: Revocation | None,
          assigned_elsewhere: str | None = None) -> Outcome:
    """Whether ``credential`` vouches for a recording made at ``at`` on camera ``serial``
    (``serial`` None: for the officer alone, at the station, no camera involved).

    ``revocation``: the roster's revocation of this credential, if any (a revoked
    credential is never valid, whenever the recording was made: a revocation may
    mean the credential was never safe).  ``assigned_elsewhere``: the officer
    another credential in force assigns this camera to, if any.
    """
    if not signature_ok(credential, keys):
        return Outcome.BAD_SIGNATURE
    if revocation is not None:
        return Outcome.REVOKED
    if at < credential.not_before:
        return Outcome.NOT_YET_VALID
    if at > credential.not_after:
        return Outcome.EXPIRED
    if serial is None:
        return Outcome.VALID
    if credential.cameras and serial not in credential.cameras:
        return Outcome.MISMATCH
    if assigned_elsewhere is not None and assigned_elsewhere != credential.officer_id \
            and serial not in credential.cameras:
        return Outcome.MISMATCH
    return Outcome.VALID


# When an officer holds several credentials (renewals), the binding names the valid
# one, else the one whose failure says most about the officer.
_PREFERENCE = (Outcome.VALID, Outcome.REVOKED, Outcome.MISMATCH, Outcome.EXPIRED,
               Outcome.NOT_YET_VALID, Outcome.BAD_SIGNATURE)


def best(judged: list[tuple[Outcome, Credential]]) -> tuple[Outcome, Credential] | None:
    """The credential to name for a binding: the first valid, else by ``_PREFERENCE``."""
    if not judged:
        return None
    return min(judged, key=lambda pair: (_PREFERENCE.index(pair[0]),
                                         -pair[1].not_after.timestamp()))
