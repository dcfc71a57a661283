"""Officer credentials, rosters and case windows, as the development platform issues them.

- the credential key (``credential.key`` 0600 / ``credential.pub`` in the PKI
  directory) signs credentials and roster messages; stations name
  ``credential.pub`` in ``custody.credential_key_file``;
- case windows are signed with the platform key (``platform.key``), like
  commands.

Formats: docs/FORMATS.md sections 12-14; topics: docs/PROTOCOL.md section 8.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.durable import makedirs_durable, write_atomic
from agent.timeutil import rfc3339
from scripts.devplatform.platform import PREFIX, DevPlatform

Envelope = dict[str, Any]


class OfficerAuthority:
    """The platform's officer registry for development: issues and signs."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = makedirs_durable(directory)
        self.key_path = self.dir / "credential.key"
        self.pub_path = self.dir / "credential.pub"
        if self.key_path.exists():
            self.signer = StationKey.load(self.key_path)
        else:
            self.signer = StationKey(Ed25519PrivateKey.generate())
            self.signer.save(self.key_path)
        if not self.pub_path.exists() or self.pub_path.read_bytes() != self.signer.public_pem():
            write_atomic(self.pub_path, self.signer.public_pem())

    def credential(self, officer_id: str, name: str, *, unit_code: str = "110000000000",
                   unit_name: str = "示范执法大队", roles: Sequence[str] = ("officer",),
                   cameras: Sequence[str] = (), card_id: str | None = None,
                   not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
                   credential_id: str | None = None,
                   signer: dsse.Signer | None = None) -> Envelope:
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        payload: dict[str, Any] = {
            "credential_id": credential_id or f"CRED-{officer_id}-{uuid.uuid4().hex[:8]}",
            "officer_id": officer_id, "name": name, "unit_code": unit_code,
            "unit_name": unit_name, "roles": list(roles), "cameras": list(cameras),
            "not_before": rfc3339(start),
            "not_after": rfc3339(not_after or start + dt.timedelta(days=365)),
        }
        if card_id is not None:
            payload["card_id"] = card_id
        return dsse.sign_envelope(dsse.CREDENTIAL, canonicalize(payload),
                                  [signer or self.signer])

    def snapshot(self, version: int, credentials: Sequence[Envelope],
                 revoked: Sequence[dict[str, Any]] = (),
                 signer: dsse.Signer | None = None) -> dict[str, Any]:
        payload = {"version": version, "issued_at": rfc3339(None),
                   "credentials": [listed(c) for c in credentials], "revoked": list(revoked)}
        return {"envelope": dsse.sign_envelope(dsse.ROSTER, canonicalize(payload),
                                               [signer or self.signer]),
                "credentials": list(credentials)}

    def update(self, version: int, base_version: int, *, add: Sequence[Envelope] = (),
               revoke: Sequence[dict[str, Any]] = (),
               signer: dsse.Signer | None = None) -> dict[str, Any]:
        payload = {"version": version, "base_version": base_version,
                   "issued_at": rfc3339(None), "add": [listed(c) for c in add],
                   "revoke": list(revoke)}
        return {"envelope": dsse.sign_envelope(dsse.ROSTER_UPDATE, canonicalize(payload),
                                               [signer or self.signer]),
                "credentials": list(add)}


def fields(envelope: Envelope) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(dsse.b64decode(envelope["payload"]))
    return value


def listed(credential: Envelope) -> dict[str, str]:
    doc = fields(credential)
    return {"credential_id": doc["credential_id"], "officer_id": doc["officer_id"],
            "sha256": hashlib.sha256(dsse.b64decode(credential["payload"])).hexdigest()}


def revocation(credential: Envelope, reason: str = "",
               at: dt.datetime | None = None) -> dict[str, str]:
    doc = fields(credential)
    return {"credential_id": doc["credential_id"], "officer_id": doc["officer_id"],
            "revoked_at": rfc3339(at or dt.datetime.now(dt.UTC)), "reason": reason}


def case_window(signer: dsse.Signer, *, officer_id: str, start: dt.datetime,
                end: dt.datetime, case_id: str, reference: str = "",
                window_id: str | None = None, revision: int = 1,
                withdrawn: bool = False) -> Envelope:
    payload = {"window_id": window_id or f"W-{uuid.uuid4().hex[:12]}", "revision": revision,
               "officer_id": officer_id, "start": rfc3339(start), "end": rfc3339(end),
               "case_id": case_id, "reference": reference, "withdrawn": withdrawn,
               "issued_at": rfc3339(None)}
    return dsse.sign_envelope(dsse.CASE_WINDOW, canonicalize(payload), [signer])


def publish_roster(platform: DevPlatform, station_id: str, message: dict[str, Any], *,
                   update: bool = False) -> None:
    """A snapshot on ``roster`` (retained), an update on ``roster/update``."""
    topic = f"{PREFIX}/{station_id}/roster" + ("/update" if update else "")
    platform.publish_raw(topic, message, retain=not update)


def publish_case_window(platform: DevPlatform, station_id: str, envelope: Envelope) -> None:
    platform.publish_raw(f"{PREFIX}/{station_id}/case-window", envelope)
