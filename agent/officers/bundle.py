"""The officers part of an export bundle: credentials, rosters, case windows, case index.

Files (tag files of the bag, docs/FORMATS.md section 15)::

    officers/credential-key.pem         the credential key the station trusted (public)
    officers/platform-key.pem           the platform key that signs case windows (public)
    officers/credentials/<name>.dsse.json   each credential a clip names, as signed
    officers/rosters.jsonl              the signed roster messages that rebuild every
                                        roster version the clips name, and the newest
    officers/case-windows.jsonl         each case window revision a tag names, as signed
    cases/<name>.json                   per case: the clips in it and the tag entries

Every ``<name>`` is a safe name (agent.verify.layout.safe_name) followed by the
first 8 hex digits of the SHA-256 of the true id, so two ids never share a
file and no id is ever a path as it is.  The case index is a convenience for
people; the verifier recomputes it from the signed log entries.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.custody import dsse
from agent.errors import ConfigError
from agent.officers.layout import (
    CASES_DIR,
    CREDENTIAL_KEY,
    CREDENTIALS_DIR,
    PLATFORM_KEY,
    ROSTERS,
    WINDOWS,
    current_cases,
)
from agent.officers.readme import CredentialExample, TagExample, officers_readme
from agent.officers.registry import load_keys
from agent.store import Store
from agent.store.db import LogEntry, leaf_hash
from agent.verify.layout import safe_name


def file_name(identifier: str, suffix: str) -> str:
    """A safe, unique file name for a platform-given id (credential, case)."""
    digest = hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(identifier)[:120]}-{digest}{suffix}"


def credential_path(credential_id: str) -> str:
    return f"{CREDENTIALS_DIR}/{file_name(credential_id, '.dsse.json')}"


def case_path(case_id: str) -> str:
    return f"{CASES_DIR}/{file_name(case_id, '.json')}"


def _manifest(row: sqlite3.Row) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(dsse.b64decode(json.loads(row["manifest"])["payload"]))
    return value


@dataclass(frozen=True)
class OfficerBundle:
    files: list[tuple[str, bytes]]  # (path in the bundle, bytes)
    readme: str  # the README steps for them


def bundle_files(config: Config, store: Store, clips: Sequence[sqlite3.Row],
                 entries: Sequence[LogEntry]) -> OfficerBundle:
    """The officers files of a bundle of ``clips`` whose log entries are ``entries``."""
    files: list[tuple[str, bytes]] = []
    credential_ids: set[str] = set()
    versions: set[int] = set()
    for row in clips:
        officer = _manifest(row).get("officer") or {}
        if isinstance(officer.get("credential_id"), str):
            credential_ids.add(officer["credential_id"])
        if isinstance(officer.get("roster_version"), int):
            versions.add(officer["roster_version"])
    window_revisions: set[tuple[str, int]] = set()
    for entry in entries:
        body = entry.body
        if isinstance(body.get("credential_id"), str):
            credential_ids.add(body["credential_id"])
        if entry.kind == "officer.verified" and isinstance(body.get("roster_version"), int):
            versions.add(body["roster_version"])
        if entry.kind == "clip.tagged" and isinstance(body.get("window_id"), str):
            window_revisions.add((body["window_id"], int(body.get("window_revision") or 1)))
    held = store.query_one("SELECT value FROM meta WHERE key = 'roster_version'")
    if held is not None:
        versions.add(int(held["value"]))
    if credential_ids or versions:
        files.extend(_keys(CREDENTIAL_KEY, config.custody.credential_key_file))
    for credential_id in sorted(credential_ids):
        found = store.query_one("SELECT envelope FROM officer_credentials WHERE "
                                "credential_id = ?", (credential_id,))
        if found is not None:
            files.append((credential_path(credential_id),
                          _pretty(json.loads(found["envelope"]))))
    chain = _roster_chain(store, versions)
    lines = [json.dumps({"kind": r["kind"], "version": r["version"],
                         "message": json.loads(r["message"])},
                        ensure_ascii=False, sort_keys=True, separators=(",", ":"))
             for r in chain]
    if lines:
        files.append((ROSTERS, ("\n".join(lines) + "\n").encode("utf-8")))
    windows = []
    for window_id, revision in sorted(window_revisions):
        kept = store.query_one("SELECT envelope FROM case_windows WHERE window_id = ? AND "
                               "revision = ?", (window_id, revision))
        if kept is not None:
            windows.append(json.dumps(json.loads(kept["envelope"]), sort_keys=True,
                                      separators=(",", ":")))
    platform = config.platform.platform_key_file if config.platform else None
    if windows and platform is not None:  # without the key nobody could check them
        files.extend(_keys(PLATFORM_KEY, platform))
        files.append((WINDOWS, ("\n".join(windows) + "\n").encode("utf-8")))
    for case_id, members in sorted(current_cases(entries).items()):
        index = {"case_id": case_id, "clips": [{"clip_id": clip, "tag_seqs": seqs}
                                               for clip, seqs in sorted(members.items())]}
        files.append((case_path(case_id), _pretty(index)))
    written = {rel for rel, _ in files}
    keyid = next(iter(load_keys(config.custody.credential_key_file)), "") \
        if CREDENTIAL_KEY in written else ""
    return OfficerBundle(files, officers_readme(
        _credential_example(clips, chain, written, keyid), _tag_example(entries)))


def _credential_example(clips: Sequence[sqlite3.Row], chain: Sequence[sqlite3.Row],
                        written: set[str], keyid: str) -> CredentialExample | None:
    """The first clip whose officer the station verified, and the roster line listing its
    credential (no example when no clip's officer was verified)."""
    if not keyid:
        return None
    for row in clips:
        officer = _manifest(row).get("officer") or {}
        cid, version = officer.get("credential_id"), officer.get("roster_version")
        if officer.get("verified") is not True or not isinstance(cid, str) \
                or not isinstance(version, int) or credential_path(cid) not in written:
            continue
        for line, kept in reversed(list(enumerate(chain, 1))):
            body = json.loads(dsse.b64decode(json.loads(kept["message"])["envelope"]["payload"]))
            listed = body.get("credentials", []) + body.get("add", [])
            if kept["version"] <= version and any(c.get("credential_id") == cid
                                                  for c in listed):
                return CredentialExample(
                    clip_id=row["clip_id"], credential_id=cid, officer_id=str(officer.get("id")),
                    credential_path=credential_path(cid), credential_keyid=keyid,
                    roster_version=version, roster_line=line, listing_version=kept["version"])
    return None


def _tag_example(entries: Sequence[LogEntry]) -> TagExample | None:
    """The tag entry behind the first case a clip of the bundle is in now."""
    current = current_cases(entries)
    seqs = sorted(seq for members in current.values() for tagged in members.values()
                  for seq in tagged)
    if not seqs:
        return None
    line, entry = next((i, e) for i, e in enumerate(entries, 1) if e.seq == seqs[0])
    assert entry.clip_id is not None
    return TagExample(line=line, seq=entry.seq, clip_id=entry.clip_id,
                      case_id=str(entry.body["case_id"]), source=str(entry.body.get("source")),
                      leaf=leaf_hash(entry.leaf_input()).hex())


def _roster_chain(store: Store, versions: set[int]) -> list[sqlite3.Row]:
    """The stored roster messages that rebuild each of ``versions``: for each, the newest
    snapshot at or below it and the updates from there up to it."""
    rows = store.query("SELECT kind, version, base_version, message FROM roster_messages "
                       "ORDER BY version, kind")
    chosen: dict[tuple[str, int], sqlite3.Row] = {}
    for version in versions:
        snapshots = [r for r in rows if r["kind"] == "snapshot" and r["version"] <= version]
        if not snapshots:
            continue
        base = snapshots[-1]
        chosen[("snapshot", base["version"])] = base
        at = base["version"]
        for row in rows:
            if row["kind"] == "update" and row["base_version"] == at \
                    and row["version"] <= version:
                chosen[("update", row["version"])] = row
                at = row["version"]
    return [chosen[key] for key in sorted(chosen, key=lambda k: (k[1], k[0]))]


def _keys(rel: str, path: Path | None) -> list[tuple[str, bytes]]:
    if path is None:
        return []
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path} for the bundle: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{path} holds a private key; it must hold the public key only")
    return [(rel, data)]


def _pretty(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
