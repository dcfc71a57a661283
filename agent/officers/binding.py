"""Binding a clip to its officer's credential, offline, from the roster the station holds.

The camera says whose it is (GetZFYInfo on a GA/T 947 camera, the identity
file, or the officer number in its file names, recorded on the clip at
discovery).  :func:`bind` looks that officer up in the roster held now and
judges each of their credentials for the recording's corrected start on
this camera (:func:`agent.officers.credentials.judge`).

Invariant: a binding never refuses a clip.  Every outcome but ``valid``
gives the flags ``officer.unverified`` and ``officer.<why>``, an alert with
the same code and a line in ``bwc-agent status``; the clip is sealed and
synced like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.officers import registry
from agent.officers.credentials import (
    FLAGS,
    Credential,
    Outcome,
    Revocation,
    best,
    flags_for,
    judge,
)
from agent.officers.registry import Keys
from agent.store import Store, Tx
from agent.timeutil import parse_rfc3339, rfc3339


@dataclass(frozen=True)
class Binding:
    outcome: Outcome
    officer_id: str
    credential: Credential | None
    roster_version: int | None
    detail: str

    @property
    def verified(self) -> bool:
        return self.outcome == Outcome.VALID

    @property
    def flags(self) -> list[str]:
        return flags_for(self.outcome)

    @property
    def credential_id(self) -> str | None:
        return self.credential.credential_id if self.credential is not None else None

    @property
    def alert_code(self) -> str | None:
        """The alert to raise; None for a valid binding and for a station that does not
        check credentials (no credential key configured)."""
        if self.outcome in (Outcome.VALID, Outcome.NOT_CHECKED):
            return None
        return FLAGS[self.outcome]


def bind(tx: Tx, *, officer_id: str, serial: str, at: datetime, keys: Keys) -> Binding:
    """The binding of a recording made at ``at`` (corrected) on camera ``serial``."""
    if not keys:
        return Binding(Outcome.NOT_CHECKED, officer_id, None, None,
                       "the station checks no credentials (custody.credential_key_file is "
                       "not set)")
    version = registry.held_version(tx)
    if version == 0:
        return Binding(Outcome.NO_ROSTER, officer_id, None, None,
                       "the station holds no officer roster yet (none received from the "
                       "platform)")
    if not officer_id:
        return Binding(Outcome.MISSING, officer_id, None, version,
                       f"camera {serial} names no officer")
    held = registry.credentials_of(tx, officer_id)
    if not held:
        return Binding(Outcome.UNKNOWN, officer_id, None, version,
                       f"officer {officer_id} is not in the roster (version {version})")
    elsewhere = _assigned_elsewhere(tx, serial, officer_id, at, keys)
    judged = [(judge(h.credential, keys=keys, at=at, serial=serial, revocation=h.revocation,
                     assigned_elsewhere=elsewhere), h) for h in held]
    chosen = best([(outcome, h.credential) for outcome, h in judged])
    assert chosen is not None
    outcome, credential = chosen
    revocation = next(h.revocation for o, h in judged if h.credential is credential)
    return Binding(outcome, officer_id, credential, version,
                   _detail(outcome, credential, serial, at, elsewhere, revocation))


def _assigned_elsewhere(tx: Tx, serial: str, officer_id: str, at: datetime,
                        keys: Keys) -> str | None:
    """Another officer whose credential in force assigns camera ``serial`` to them."""
    for held in registry.camera_holders(tx, serial):
        if held.credential.officer_id != officer_id and judge(
                held.credential, keys=keys, at=at, serial=serial,
                revocation=held.revocation) == Outcome.VALID:
            return held.credential.officer_id
    return None


def _detail(outcome: Outcome, credential: Credential, serial: str, at: datetime,
            elsewhere: str | None, revocation: Revocation | None) -> str:
    who = f"officer {credential.officer_id} (credential {credential.credential_id})"
    recorded = rfc3339(at)
    if outcome == Outcome.VALID:
        return f"{who} verified"
    if outcome == Outcome.BAD_SIGNATURE:
        return f"{who}: the credential's signature does not verify with the credential key"
    if outcome == Outcome.REVOKED:
        assert revocation is not None
        reason = f" ({revocation.reason})" if revocation.reason else ""
        return f"{who} was revoked at {revocation.revoked_at}{reason}"
    if outcome == Outcome.EXPIRED:
        return (f"{who} expired at {rfc3339(credential.not_after)}, before the recording "
                f"({recorded})")
    if outcome == Outcome.NOT_YET_VALID:
        return (f"{who} is valid from {rfc3339(credential.not_before)}, after the recording "
                f"({recorded})")
    if elsewhere is not None and serial not in credential.cameras:
        return f"{who}: camera {serial} is assigned to officer {elsewhere}"
    return f"{who}: the credential does not list camera {serial}"


# Outcomes a later roster can turn into "valid": the station did not know the officer yet.
_PENDING = (Outcome.UNKNOWN.value, Outcome.NO_ROSTER.value)


def rebind_pending(store: Store, keys: Keys) -> list[str]:
    """Bind again, with the roster held now, the sealed clips whose officer was not known.

    A clip that binds now gets an ``officer.verified`` log entry and event (its
    sealed manifest keeps what the station knew then); others stay as they are.
    Returns the clip ids verified.
    """
    if not keys:
        return []
    verified = []
    rows = store.query("SELECT clip_id FROM clips WHERE manifest IS NOT NULL AND "
                       f"officer_status IN ({','.join('?' * len(_PENDING))})", _PENDING)
    for row in rows:
        with store.transaction() as tx:
            clip = tx.clip(row["clip_id"])
            if clip["officer_status"] not in _PENDING:
                continue
            when = clip["start_at"] or clip["end_at"] or clip["docked_at"] \
                or clip["discovered_at"]
            binding = bind(tx, officer_id=clip["officer_id"] or "",
                           serial=clip["device_serial"], at=parse_rfc3339(when), keys=keys)
            if not binding.verified:
                continue
            tx.update_clip(clip["clip_id"], credential_id=binding.credential_id,
                           roster_version=binding.roster_version,
                           officer_status=binding.outcome.value)
            body = {"officer_id": binding.officer_id, "credential_id": binding.credential_id,
                    "roster_version": binding.roster_version, "recorded_at": when,
                    "was": clip["officer_status"], "sha256": clip["sha256"]}
            entry = tx.log("officer.verified", clip["clip_id"], body)
            tx.event("officer.verified", {"clip_id": clip["clip_id"], "log_seq": entry.seq,
                                          **body})
        verified.append(row["clip_id"])
    return verified
