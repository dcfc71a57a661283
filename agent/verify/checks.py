"""Checks shared by every kind of verification target: hashes, certificate, signatures, fields.

Every function here returns its findings (``"<code>: <details>"`` strings)
instead of raising, so that a verifier can go on and report everything.
Inputs are untrusted: malformed JSON, wrong types and bad encodings become
findings, never exceptions.  JSON is parsed with agent.boundedjson (size,
depth, number length and duplicate keys bounded), files are read through
agent.verify.files (no link followed, regular files only, sizes capped).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from agent import boundedjson
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import certificate_problems, certificate_station_id, keyid_of
from agent.custody.manifest import SCHEMA as MANIFEST_SCHEMA
from agent.timeutil import parse_rfc3339
from agent.verify.files import LIMITS, Unreadable, hash_file, read_file
from agent.verify.report import Report

HEX64 = re.compile(r"[0-9a-f]{64}")
#: Deepest nesting accepted in any JSON of a target (the station writes at most 4).
MAX_DEPTH = 32
K = TypeVar("K")
# What cryptography raises for a damaged certificate, at load or when a part is first used
# (TypeError: a name whose attribute has a type its OID forbids, such as a BIT STRING CN;
# KeyError: a TLS feature extension naming a feature it does not know).
CERT_ERRORS = (ValueError, TypeError, KeyError, UnsupportedAlgorithm, x509.InvalidVersion,
               x509.DuplicateExtension, x509.UnsupportedGeneralNameType)
# Hash files in parallel: hashlib and file reads release the GIL, and a bundle
# or a vault is many files.  More threads than this only thrash the disk.
_HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


# --- hashing -----------------------------------------------------------------------------

Digest = tuple[str, int]


def hash_paths(paths: Iterable[Path], report: Report) -> dict[Path, Digest | str]:
    """SHA-256 and size of each regular file (a final link is not followed), or why not."""
    return hash_all(paths, hash_file, report)


def hash_all(keys: Iterable[K], hasher: Callable[[K], Digest],
             report: Report) -> dict[K, Digest | str]:
    """``hasher`` of every key, several at once; the reason instead where it failed."""
    unique = list(dict.fromkeys(keys))
    started = time.monotonic()

    def one(key: K) -> Digest | str:
        try:
            return hasher(key)
        except Unreadable as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=_HASH_THREADS, thread_name_prefix="verify-hash") as pool:
        results = dict(zip(unique, pool.map(one, unique), strict=True))
    report.count("bytes_hashed", sum(r[1] for r in results.values() if isinstance(r, tuple)))
    report.count("hash_seconds", time.monotonic() - started)
    return results


# --- the station identity ----------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """The station certificate a target's signatures are checked against."""

    cert: x509.Certificate
    keyid: str
    public_key: dsse.PublicKey
    station_id: str | None
    chain: tuple[x509.Certificate, ...] = ()  # intermediate CAs, from the same PEM file

    @property
    def trusted(self) -> dict[str, dsse.PublicKey]:
        return {self.keyid: self.public_key}


def load_identity(path: Path, report: Report, where: str, *,
                  follow: bool = False) -> Identity | None:
    """The first certificate in ``path``; a finding (and None) if it is missing or unusable.

    ``follow``: the path was named by the user (``--cert``), so a link is followed.
    """
    try:
        data = read_file(path, LIMITS["small"], follow=follow)
    except Unreadable as exc:
        report.problem(f"cert-missing: {where}: no usable station certificate: {exc}")
        return None
    return identity_from_pem(data, path, report, where)


def identity_from_pem(data: bytes, path: Path | str, report: Report,
                      where: str) -> Identity | None:
    """The first certificate in PEM ``data`` (read from ``path``); None after a finding if not."""
    try:
        cert, *chain = x509.load_pem_x509_certificates(data)
        # cryptography parses lazily: a damaged name or key fails here, not above.
        key = cert.public_key()
        station_id = certificate_station_id(cert)
        cert.issuer.rfc4514_string()
    except CERT_ERRORS as exc:
        report.problem(f"cert-invalid: {where}: {path} is not a usable PEM certificate: "
                       f"{str(exc)[:300]}")
        return None
    if not isinstance(key, dsse.PublicKey):
        report.problem(f"cert-invalid: {where}: {path} carries a {type(key).__name__} key; "
                       "station signatures are Ed25519")
        return None
    return Identity(cert=cert, keyid=keyid_of(key), public_key=key, station_id=station_id,
                    chain=tuple(chain))


def check_certificate(identity: Identity, report: Report, where: str,
                      trust: Sequence[x509.Certificate] | None,
                      signed_at: dt.datetime | None) -> list[str]:
    """Validity when the signatures were made (and now), CN, key type, chain to ``trust``.

    Without ``trust`` the certificate cannot be anchored: that is a warning,
    since a self-signed development station is legitimate, but the auditor
    must then obtain the certificate (or its fingerprint) from elsewhere.
    Returns the problems it reported (empty: the certificate is usable).
    """
    now = dt.datetime.now(dt.UTC)
    when = signed_at or now
    cert = identity.cert
    anchors = list(trust) if trust is not None else [cert]
    try:
        problems = [f"cert-invalid: {where}: {text}"
                    for text in certificate_problems(cert, when, anchors,
                                                    intermediates=identity.chain)]
    except CERT_ERRORS as exc:  # a damaged extension, parsed lazily
        problems = [f"cert-invalid: {where}: the certificate cannot be checked: "
                    f"{str(exc)[:300]}"]
    for problem in problems:
        report.problem(problem)
    if signed_at is not None and now > cert.not_valid_after_utc >= signed_at:
        report.warning(f"{where}: the station certificate expired at "
                       f"{cert.not_valid_after_utc.isoformat()}, after the signatures were made")
    if trust is None:
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        kind = ("self-signed" if cert.issuer == cert.subject
                else f"issued by {cert.issuer.rfc4514_string()}")
        report.warning(f"{where}: station certificate {cert.subject.rfc4514_string()} is {kind} "
                       f"/ not anchored (no --trust given); its SHA-256 fingerprint is "
                       f"{fingerprint}: compare it with the platform's record of the station")
    return problems


def trust_status(identity: Identity | None, cert_problems: Sequence[str],
                 trust: Sequence[x509.Certificate] | None) -> str:
    """How far each clip's signatures can be trusted: anchored, unanchored or failed."""
    if identity is None or cert_problems:
        return "failed"
    return "anchored" if trust is not None else "unanchored"


def apply_trust(report: Report, source: str, status: str) -> None:
    """Put the certificate's verdict into every clip of ``source``: a clip is no better.

    A failed clip names the first finding that said why ``source``'s certificate cannot be
    used (missing, unreadable, unusable, invalid: not alike).  Every path to "failed" made
    one first: load_identity and identity_from_pem when there is no identity,
    check_certificate for each problem of the certificate.
    """
    why = next((p for p in report.problems
                if p.startswith((f"cert-missing: {source}: ", f"cert-invalid: {source}: "))),
               "cert-missing: no usable station certificate")
    for result in report.clips:
        if result.source != source:
            continue
        result.trust = status
        if status == "failed":
            result.add(f"trust: the station certificate does not establish who signed this "
                       f"clip ({why})")


# --- signatures --------------------------------------------------------------------------

def open_envelope(envelope: Any, identity: Identity | None, expected_type: str,
                  what: str, warnings: list[str] | None = None) -> tuple[bytes | None, list[str]]:
    """The payload of a DSSE envelope, and every signature problem (``signature: ...``).

    The payload is returned even when the signature fails, so that its
    fields can still be checked and reported.  When the station's signature
    verifies, every other signature (another key, or one that does not
    verify) is appended to ``warnings``: DSSE accepts an envelope with one
    good signature, but an auditor should know what else it carries.
    """
    problems: list[str] = []
    if identity is None:
        problems.append(f"signature: {what}: not checked, no usable station certificate")
    else:
        problems.extend(f"signature: {what}: {p}"
                        for p in dsse.envelope_problems(envelope, identity.trusted,
                                                        expected_type))
        if not problems and not _station_signed(envelope, identity, expected_type):
            problems.append(f"signature: {what}: no signature names the station's keyid "
                            f"{identity.keyid} (a keyid is required, FORMATS.md section 4)")
        if not problems and warnings is not None:
            warnings.extend(_other_signatures(envelope, identity, expected_type, what))
    payload = None
    if isinstance(envelope, Mapping) and isinstance(envelope.get("payload"), str):
        try:
            payload = dsse.b64decode(envelope["payload"])
        except ValueError:
            payload = None
    if payload is None and identity is None:
        problems.append(f"signature: {what}: envelope has no readable payload")
    return payload, problems


def _alone(envelope: Mapping[str, Any], entry: Any) -> dict[str, Any]:
    return {"payloadType": envelope.get("payloadType"), "payload": envelope.get("payload"),
            "signatures": [entry]}


def _station_signed(envelope: Any, identity: Identity, expected_type: str) -> bool:
    """A signature that names the station's keyid verifies (DSSE alone would accept none)."""
    signatures = envelope.get("signatures") if isinstance(envelope, Mapping) else None
    return any(isinstance(entry, Mapping) and entry.get("keyid") == identity.keyid
               and not dsse.envelope_problems(_alone(envelope, entry), identity.trusted,
                                              expected_type)
               for entry in (signatures if isinstance(signatures, list) else []))


def _other_signatures(envelope: Any, identity: Identity, expected_type: str,
                      what: str) -> list[str]:
    found = []
    signatures = envelope.get("signatures") if isinstance(envelope, Mapping) else None
    for index, entry in enumerate(signatures if isinstance(signatures, list) else []):
        if dsse.envelope_problems(_alone(envelope, entry), identity.trusted, expected_type):
            keyid = entry.get("keyid") if isinstance(entry, Mapping) else None
            name = f"keyid {str(keyid)[:80]}" if isinstance(keyid, str) and keyid else "no keyid"
            found.append(f"{what}: signature {index} ({name}) is not the station's, or does "
                         "not verify; it is ignored (only the station's signature counts)")
    return found


def parse_json(data: bytes, what: str, *, max_bytes: int) -> tuple[Any, str | None]:
    """JSON from untrusted bytes (agent.boundedjson), or why it is not acceptable."""
    try:
        return boundedjson.loads(data, max_bytes=max_bytes, max_depth=MAX_DEPTH), None
    except boundedjson.JSONInputError as exc:
        return None, f"{what} is not acceptable JSON: {exc}"


def load_json_file(path: Path, *, follow: bool = False) -> tuple[Any, str | None]:
    """Parsed JSON of a small file named by the user, or the reason it cannot be read."""
    try:
        data = read_file(path, LIMITS["small"], follow=follow)
    except Unreadable as exc:
        return None, str(exc)
    return parse_json(data, path.name, max_bytes=LIMITS["small"])


def parse_canonical(payload: bytes, code: str, what: str) -> tuple[Any, list[str]]:
    """JSON from signed bytes, with a finding unless the bytes are its RFC 8785 form."""
    value, error = parse_json(payload, f"{what} payload", max_bytes=LIMITS["small"])
    if error is not None:
        return None, [f"{code}: {error}"]
    try:
        canonical = canonicalize(value) == payload
    except (ValueError, TypeError) as exc:
        return value, [f"{code}: {what} payload cannot be canonicalized: {exc}"]
    if not canonical:
        return value, [f"{code}: {what} payload is not in canonical (RFC 8785) form"]
    return value, []


# --- manifest fields ---------------------------------------------------------------------

_STR, _OPT_STR = ("string", (str,), False), ("string", (str,), True)
_INT, _BOOL = ("integer", (int,), False), ("boolean", (bool,), False)
_OPT_NUM, _OPT_OBJ = ("number", (int, float), True), ("object", (dict,), True)
_LIST = ("array", (list,), False)
_TIMES = {"file.mtime", "recorded.start", "recorded.end", "ingest.docked_at", "ingest.copied_at",
          "recorded.camera_start", "recorded.camera_end"}
# Fields added to v1 after its first manifests: checked when present, not required.
_LATER = {"officer.status", "officer.roster_version", "recorded.camera_start",
          "recorded.camera_end", "recorded.time_source"}

SCHEMA_FIELDS: dict[str, Any] = {
    "schema": _STR,
    "clip_id": _STR,
    "file": {"name": _STR, "path": _STR, "size": _INT, "mtime": _STR,
             "digests": {"sha256": _STR}},
    "media": _OPT_OBJ,
    "device": {"serial": _STR, "vendor": _STR, "model": _STR, "firmware": _STR,
               "clock_offset_s": _OPT_NUM},
    "officer": {"id": _OPT_STR, "name": _OPT_STR, "unit_code": _OPT_STR, "unit_name": _OPT_STR,
                "credential_id": _OPT_STR, "verified": _BOOL, "status": _OPT_STR,
                "roster_version": ("integer", (int,), True)},
    "recorded": {"start": _OPT_STR, "end": _OPT_STR, "important": _BOOL,
                 "camera_start": _OPT_STR, "camera_end": _OPT_STR, "time_source": _OPT_STR},
    "case_id": _OPT_STR,
    "station": {"id": _STR, "key_id": _STR},
    "ingest": {"docked_at": _OPT_STR, "copied_at": _OPT_STR, "verified": _BOOL},
    "flags": _LIST,
}


# A value a finding quotes comes from the hostile file: at most this many characters of its
# repr are shown, then how long it was (a finding stays a line an auditor can read).
SHOWN_CHARS = 100


def shown(value: Any) -> str:
    """``repr(value)``, cut after SHOWN_CHARS characters with its whole length named."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text)} characters)"


def _field_problems(value: Any, spec: Any, path: str, out: list[str], unknown: list[str]) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            out.append(f"manifest-field: {path or 'manifest'} is not an object")
            return
        for name, sub in spec.items():
            where = f"{path}.{name}" if path else name
            if name not in value:
                if where not in _LATER:
                    out.append(f"manifest-field: {where} is missing")
            else:
                _field_problems(value[name], sub, where, out, unknown)
        unknown.extend(f"{path}.{k}" if path else k for k in value if k not in spec)
        return
    label, types, optional = spec
    if value is None and optional:
        return
    # bool is an int in Python, not in JSON: true is never a size.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        out.append(f"manifest-field: {path} is {json.dumps(value)[:40]}, expected "
                   f"{label}{' or null' if optional else ''}")
    elif path in _TIMES:
        try:
            parse_rfc3339(value)
        except ValueError:
            out.append(f"manifest-field: {path} is {shown(value)}, not an RFC 3339 time")


def manifest_problems(manifest: Any, *, clip_id: str | None, identity: Identity | None,
                      digest: Digest | None) -> tuple[list[str], list[str]]:
    """Problems and warnings of a parsed manifest against the clip, certificate and bytes."""
    problems: list[str] = []
    unknown: list[str] = []
    _field_problems(manifest, SCHEMA_FIELDS, "", problems, unknown)
    warnings = [f"manifest has fields this verifier does not know: {', '.join(unknown)}"] \
        if unknown else []
    if not isinstance(manifest, dict):
        return problems, warnings
    if manifest.get("schema") != MANIFEST_SCHEMA:
        problems.append(f"manifest-field: schema is {shown(manifest.get('schema'))}, "
                        f"expected {MANIFEST_SCHEMA!r}")
    if clip_id is not None and manifest.get("clip_id") != clip_id:
        problems.append(f"manifest-clip: manifest names clip {shown(manifest.get('clip_id'))}, "
                        f"but it is filed as {clip_id}")
    station = manifest["station"] if isinstance(manifest.get("station"), dict) else {}
    if identity is not None:
        if identity.station_id is not None and station.get("id") != identity.station_id:
            problems.append(f"manifest-station: manifest names station {shown(station.get('id'))}, "
                            f"the certificate is for {shown(identity.station_id)}")
        if station.get("key_id") != identity.keyid:
            problems.append(f"manifest-station: manifest names key {shown(station.get('key_id'))}, "
                            f"the certificate's keyid is {identity.keyid}")
    claimed_sha, claimed_size = manifest_digest(manifest)
    if claimed_sha is not None and not HEX64.fullmatch(claimed_sha):
        problems.append(f"manifest-field: file.digests.sha256 {shown(claimed_sha)} is not 64 "
                        "lowercase hex digits")
    if digest is not None:
        sha, size = digest
        if claimed_size is not None and size != claimed_size:
            problems.append(f"file-size: file is {size} bytes, the manifest says {claimed_size}")
        if claimed_sha is not None and sha != claimed_sha:
            problems.append(f"file-digest: file SHA-256 is {sha}, the manifest says "
                            f"{claimed_sha}")
    return problems, warnings


def manifest_digest(manifest: Any) -> tuple[str | None, int | None]:
    """The signed SHA-256 and size of the clip's bytes, where the manifest has them."""
    file = manifest.get("file") if isinstance(manifest, dict) else None
    if not isinstance(file, dict):
        return None, None
    digests = file.get("digests")
    sha = digests.get("sha256") if isinstance(digests, dict) else None
    size = file.get("size")
    return (sha if isinstance(sha, str) else None,
            size if isinstance(size, int) and not isinstance(size, bool) else None)


# --- checkpoints -------------------------------------------------------------------------

def open_checkpoint(envelope: Any, identity: Identity | None, what: str,
                    warnings: list[str] | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """A signed checkpoint's checked fields (None if unusable) and every problem found."""
    payload, problems = open_envelope(envelope, identity, dsse.CHECKPOINT, what, warnings)
    if payload is None:
        return None, problems
    fields, more = checkpoint_fields(payload, what)
    return fields, problems + more


def checkpoint_fields(payload: bytes, what: str) -> tuple[dict[str, Any] | None, list[str]]:
    """A checkpoint payload {station_id, size, root, at}, checked; None if unusable."""
    value, problems = parse_canonical(payload, "checkpoint-field", what)
    if not isinstance(value, dict):
        return None, problems or [f"checkpoint-field: {what} payload is not a JSON object"]
    size, root, at = value.get("size"), value.get("root"), value.get("at")
    if not isinstance(value.get("station_id"), str):
        problems.append(f"checkpoint-field: {what} has no station_id string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"checkpoint-field: {what} size {shown(size)} is not a count")
        return None, problems
    if not isinstance(root, str) or not HEX64.fullmatch(root):
        problems.append(f"checkpoint-field: {what} root {shown(root)} is not 64 lowercase hex "
                        "digits")
        return None, problems
    try:
        parse_rfc3339(at) if isinstance(at, str) else None
    except ValueError:
        at = None
    if not isinstance(at, str):
        problems.append(f"checkpoint-field: {what} has no RFC 3339 'at' time")
    return value, problems


def signed_time(checkpoint: Mapping[str, Any] | None) -> dt.datetime | None:
    if checkpoint is None or not isinstance(checkpoint.get("at"), str):
        return None
    try:
        return parse_rfc3339(checkpoint["at"])
    except ValueError:
        return None


# --- clip history in the log -------------------------------------------------------------

def history_problems(entries: Sequence[Mapping[str, Any]]) -> tuple[list[str], str | None]:
    """Check that a clip's state changes chain up, from ``clip.discovered`` on.

    Each ``clip.<state>`` transition records ``from`` and ``to``; the ``from``
    of one must be the ``to`` of the one before.  A missing (or moved) entry
    breaks the chain.  Returns the problems and the state the log ends in.
    """
    problems: list[str] = []
    state: str | None = None
    for entry in entries:
        kind, body, seq = entry.get("kind"), entry.get("body"), entry.get("seq")
        # A first discovery has no "from"; a copy interrupted (device removed, restart)
        # moves the clip back to discovered and records where it came from.
        if kind == "clip.discovered" and not (isinstance(body, dict) and "from" in body):
            if state is not None:
                problems.append(f"log-history: seq {seq} discovers the clip again "
                                f"(it was already {state})")
            state = "discovered"
            continue
        if not (isinstance(body, dict) and isinstance(kind, str)
                and kind == f"clip.{body.get('to')}" and "from" in body):
            continue
        if state is None:
            problems.append(f"log-history: seq {seq} moves the clip from {shown(body['from'])} "
                            "but no clip.discovered entry comes before it")
        elif body["from"] != state:
            problems.append(f"log-history: seq {seq} moves the clip from {shown(body['from'])}, "
                            f"but the entries before it leave it {shown(state)} (an entry is "
                            "missing or out of order)")
        state = str(body["to"])
    return problems, state


def seal_link_problems(entries: Sequence[Mapping[str, Any]], manifest_sha256: str,
                       claimed_sha: str | None) -> list[str]:
    """The log's ``clip.sealed`` entry must name this manifest and these bytes."""
    sealed = [e for e in entries if e.get("kind") == "clip.sealed"
              and isinstance(e.get("body"), dict) and "manifest_sha256" in e["body"]]
    if not sealed:
        return ["log-link: no clip.sealed entry with a manifest_sha256 for this clip"]
    problems = []
    for entry in sealed:
        body = entry["body"]
        if body["manifest_sha256"] != manifest_sha256:
            problems.append(f"log-link: clip.sealed (seq {entry.get('seq')}) records manifest "
                            f"SHA-256 {body['manifest_sha256']}, this manifest's is "
                            f"{manifest_sha256}")
        if claimed_sha is not None and body.get("sha256") not in (None, claimed_sha):
            problems.append(f"log-link: clip.sealed (seq {entry.get('seq')}) records clip "
                            f"SHA-256 {body.get('sha256')}, the manifest says {claimed_sha}")
    return problems


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
