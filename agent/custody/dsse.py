"""DSSE v1 signature envelopes (secure-systems-lab/dsse, protocol.md and envelope.md).

Every signed custody object (manifest, log checkpoint, platform ack, platform
command, officer credential, officer roster, case window, key rotation) travels as::

    {"payloadType": "<type>", "payload": "<base64>",
     "signatures": [{"keyid": "<hex sha256 of the SPKI>", "sig": "<base64>"}]}

The signature covers PAE(payloadType, payload), so a signature for one type
can never be replayed as another.  Invariants:

- the payload is returned only after a signature by a trusted key verified;
- ``keyid`` is a hint that selects the key to try, never a reason to trust:
  trust comes from the caller's ``trusted`` map (keyid -> public key); a
  signature without a keyid is tried against every trusted key;
- ``envelope_problems`` and ``verify_envelope`` agree: the list is empty
  exactly when verification succeeds, and the error message joins the list.

Keys: Ed25519 (station and platform keys); ECDSA with SHA-256/384/512 by curve
size (DER signatures, as ``openssl pkeyutl`` makes them) is also accepted for
platform keys issued by an EC certificate authority.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import IntegrityError

__all__ = [
    "ACK",
    "CASE_WINDOW",
    "CHECKPOINT",
    "COMMAND",
    "CREDENTIAL",
    "KEY_ROTATION",
    "MANIFEST",
    "PAYLOAD_TYPES",
    "ROSTER",
    "ROSTER_UPDATE",
    "PublicKey",
    "Signer",
    "b64decode",
    "envelope_problems",
    "pae",
    "sign_envelope",
    "verify_envelope",
]

MANIFEST = "application/vnd.bwc.manifest.v1+json"
CHECKPOINT = "application/vnd.bwc.checkpoint.v1+json"
ACK = "application/vnd.bwc.ack.v1+json"
COMMAND = "application/vnd.bwc.command.v1+json"
CREDENTIAL = "application/vnd.bwc.officer-credential.v1+json"
ROSTER = "application/vnd.bwc.officer-roster.v1+json"
ROSTER_UPDATE = "application/vnd.bwc.officer-roster-update.v1+json"
CASE_WINDOW = "application/vnd.bwc.case-window.v1+json"
KEY_ROTATION = "application/vnd.bwc.key-rotation.v1+json"
PAYLOAD_TYPES = frozenset({MANIFEST, CHECKPOINT, ACK, COMMAND, CREDENTIAL, ROSTER, ROSTER_UPDATE,
                           CASE_WINDOW, KEY_ROTATION})

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


class Signer(Protocol):
    """Anything that signs bytes under a key named by ``keyid`` (agent.custody.keys.StationKey)."""

    keyid: str

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data`` (already PAE-encoded by the caller)."""
        ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> dict[str, Any]:
    """A DSSE envelope over ``payload`` with one signature per signer (standard base64)."""
    message = pae(payload_type, payload)
    signatures = [
        {"keyid": signer.keyid, "sig": base64.b64encode(signer.sign(message)).decode("ascii")}
        for signer in signers
    ]
    if not signatures:
        raise ValueError("sign_envelope needs at least one signer")
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": signatures,
    }


def verify_envelope(
    envelope: Any,
    trusted: Mapping[str, PublicKey],
    expected_type: str | None = None,
) -> bytes:
    """The payload of ``envelope`` once a signature by a trusted key verifies.

    Raises IntegrityError naming every problem (malformed envelope, wrong
    payloadType, unknown keyid, bad signature).
    """
    problems, payload = _check(envelope, trusted, expected_type)
    if problems or payload is None:
        raise IntegrityError("DSSE envelope rejected: " + "; ".join(problems))
    return payload


def envelope_problems(
    envelope: Any,
    trusted: Mapping[str, PublicKey],
    expected_type: str | None = None,
) -> list[str]:
    """Every reason ``verify_envelope`` would reject ``envelope``; empty if it verifies."""
    return _check(envelope, trusted, expected_type)[0]


def _check(
    envelope: Any,
    trusted: Mapping[str, PublicKey],
    expected_type: str | None,
) -> tuple[list[str], bytes | None]:
    if not isinstance(envelope, Mapping):
        return [f"envelope is a {type(envelope).__name__}, not a JSON object"], None
    problems: list[str] = []
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        problems.append("envelope has no payloadType string")
        payload_type = None
    elif expected_type is not None and payload_type != expected_type:
        problems.append(f"payloadType is {payload_type!r}, expected {expected_type!r}")
    payload = _field_b64(envelope.get("payload"), "payload", problems)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        problems.append("envelope has no signatures list, or it is empty")
        signatures = []
    if payload_type is None or payload is None:
        # Nothing can be verified without the signed bytes; signatures would
        # only add noise to the report.
        return problems, None

    message = pae(payload_type, payload)
    signature_problems: list[str] = []
    verified = False
    for index, entry in enumerate(signatures):
        outcome = _check_signature(index, entry, message, trusted)
        if outcome is None:
            verified = True
        else:
            signature_problems.append(outcome)
    if not verified and signatures:
        problems.extend(signature_problems)
        problems.append("no signature by a trusted key verifies")
    return problems, (payload if not problems else None)


def _check_signature(
    index: int, entry: Any, message: bytes, trusted: Mapping[str, PublicKey]
) -> str | None:
    """None if signature ``index`` verifies under a trusted key, else what is wrong."""
    where = f"signature {index}"
    if not isinstance(entry, Mapping):
        return f"{where} is a {type(entry).__name__}, not an object"
    keyid = entry.get("keyid", "")
    if not isinstance(keyid, str):
        return f"{where} has a keyid that is not a string"
    local: list[str] = []
    sig = _field_b64(entry.get("sig"), f"{where} sig", local)
    if sig is None:
        return local[0]
    if keyid:
        where = f"{where} (keyid {keyid})"
        key = trusted.get(keyid)
        if key is None:
            return f"{where}: keyid is not among the {len(trusted)} trusted key(s)"
        candidates = [key]
    else:
        candidates = list(trusted.values())
        if not candidates:
            return f"{where}: no keyid and no trusted keys to try"
    if any(_verifies(key, sig, message) for key in candidates):
        return None
    return f"{where}: signature does not verify (bytes altered, or signed by another key)"


def _verifies(key: PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(sig, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, message, ec.ECDSA(_ec_hash(key)))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _ec_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    # The usual pairing of curve and digest (P-256/SHA-256, P-384/SHA-384,
    # P-521/SHA-512), which openssl and the JOSE algorithms use.
    if key.curve.key_size > 384:
        return hashes.SHA512()
    if key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _field_b64(value: Any, name: str, problems: list[str]) -> bytes | None:
    if not isinstance(value, str):
        problems.append(f"{name} is missing or not a string")
        return None
    try:
        return b64decode(value)
    except ValueError as exc:
        problems.append(f"{name} is not valid base64: {exc}")
        return None


def b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (DSSE verifiers must accept both)."""
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
