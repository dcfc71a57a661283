"""Verify a station's data directory: the whole log, every checkpoint, manifest and vault object.

The database is opened read-only (a running daemon is not disturbed).
Checked, collecting every failure:

- the log: seq contiguous from 1 (nothing removed), each stored leaf equal to
  the leaf recomputed from the entry (nothing edited);
- every checkpoint: signature, fields, not beyond the log's end, and its root
  equal to the root of the log's first ``size`` leaves (so every checkpoint
  is a prefix of the log, hence of each later checkpoint);
- every vault object: its bytes hash to its name;
- every clip: its bytes present while the vault should hold them, its
  manifest (signature, fields, digest of the vault object), the
  ``clip.sealed`` entry naming that manifest, a history without gaps, and the
  database state equal to where the log's history leaves it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.errors import StoreError
from agent.store import Store
from agent.store.states import IN_VAULT, ClipState
from agent.verify.checks import (
    HEX64,
    Digest,
    apply_trust,
    check_certificate,
    hash_paths,
    history_problems,
    load_identity,
    manifest_digest,
    manifest_problems,
    open_checkpoint,
    open_envelope,
    parse_canonical,
    seal_link_problems,
    sha256_hex,
    signed_time,
    trust_status,
)
from agent.verify.report import ClipResult, Report
from agent.verify.rotation import KeySchedule, data_dir_schedule

S = ClipState
SEALED_OR_LATER = frozenset({S.SEALED, S.UPLOADING, S.UPLOADED, S.ACKNOWLEDGED, S.RELEASED,
                             S.PURGED})


def verify_data_dir(root: Path, report: Report,
                    trust: Sequence[x509.Certificate] | None = None) -> None:
    source = str(root)
    report.targets.append({"path": source, "kind": "data_dir"})
    # The station's own directory: its certificate may be a link an installer made.
    identity = load_identity(root / "keys" / "station.pem", report, source, follow=True)
    try:
        store = Store(root / "state.db", station_id="", readonly=True)
    except StoreError as exc:
        report.problem(f"store: {exc}")
        return
    try:
        entries = _check_log(store, report, source)
        # Which key signed what, if the station rotated its key (agent/verify/rotation.py).
        keys = data_dir_schedule(root, entries, identity, trust, report, source)
        newest = _check_checkpoints(store, report, keys, entries, source)
        cert_problems: list[str] = []
        if identity is not None:
            cert_problems = check_certificate(identity, report, source, trust,
                                              signed_time(newest))
        objects = _check_vault(root / "vault", report)
        _check_clips(store, report, keys, entries=entries, objects=objects, source=source)
        apply_trust(report, source, trust_status(identity, cert_problems, trust))
    finally:
        store.close()


def _check_log(store: Store, report: Report, source: str) -> list[dict[str, Any]]:
    """Every entry, parsed; findings for gaps and for entries changed since they were logged."""
    entries: list[dict[str, Any]] = []
    expected = 1
    for row in store.query("SELECT seq, at, kind, clip_id, body, leaf FROM custody_log "
                           "ORDER BY seq"):
        seq, clip_id = int(row["seq"]), row["clip_id"]

        def finding(text: str, clip_id: str | None = clip_id) -> None:
            if clip_id is None:
                report.problem(text)
            else:
                report.clip(clip_id, source).add(text)

        if seq != expected:
            finding(f"log-order: seq {seq} follows seq {expected - 1}: entries "
                    f"{expected}..{seq - 1} were removed from the log", None)
        expected = seq + 1
        try:
            body = json.loads(row["body"])
        except (TypeError, json.JSONDecodeError) as exc:
            finding(f"log-format: seq {seq} body is not JSON: {exc}")
            body = None
        entry = {"seq": seq, "at": row["at"], "kind": row["kind"], "clip_id": clip_id,
                 "body": body}
        stored = bytes(row["leaf"])
        leaf: bytes | None
        try:
            leaf = merkle.leaf_hash(canonicalize(entry))
        except (ValueError, TypeError) as exc:
            finding(f"log-format: seq {seq} cannot be canonicalized: {exc}")
            leaf = None  # logging canonicalizes: the entry as it is now was never logged
        if leaf != stored:
            finding(f"log-leaf: seq {seq} ({row['kind']}) no longer hashes to the leaf stored "
                    "when it was logged: the entry was edited")
        if leaf is None:
            # The tree keeps the leaf stored when the entry was logged; one that is no
            # SHA-256 (emptied, cut) stands as 32 zero bytes, the hash of nothing known.
            leaf = stored if len(stored) == merkle.HASH_SIZE else bytes(merkle.HASH_SIZE)
        entry["_leaf"] = leaf
        entries.append(entry)
    return entries


def _check_checkpoints(store: Store, report: Report, keys: KeySchedule,
                       entries: list[dict[str, Any]], source: str) -> dict[str, Any] | None:
    """Every checkpoint against the log as it is now; returns the newest valid one."""
    tree = merkle.MerkleTree([e["_leaf"] for e in entries])
    newest: dict[str, Any] | None = None
    rows = store.query("SELECT size, root, at, envelope FROM checkpoints ORDER BY size")
    for row in rows:
        where = f"checkpoint of size {row['size']}"
        try:
            envelope = json.loads(row["envelope"])
        except json.JSONDecodeError as exc:
            report.problem(f"checkpoint-field: {where}: envelope is not JSON: {exc}")
            continue
        body, problems = open_checkpoint(envelope, keys.at(int(row["size"])), where)
        for p in problems:
            report.problem(p)
        if body is None:
            continue
        if (body["size"], body["root"]) != (row["size"], row["root"]):
            report.problem(f"checkpoint-field: {where}: the signed payload says size "
                           f"{body['size']} root {body['root']}, the table row differs")
        size = body["size"]
        if size > tree.size:
            report.problem(f"checkpoint-beyond: {where} signed at {body.get('at')} covers "
                           f"{size} entries, the log has only {tree.size}: entries were "
                           "removed from its end")
            continue
        actual = tree.root(size).hex()
        if actual != body["root"]:
            report.problem(f"checkpoint-root: the log's first {size} entries hash to {actual}, "
                           f"the checkpoint signed at {body.get('at')} says {body['root']}: the "
                           "log was changed after it was signed")
        elif not problems:
            newest = body
    if entries and not rows:
        report.warning(f"{source}: the log has {len(entries)} entries and no checkpoint yet")
    elif newest is not None and newest["size"] < len(entries):
        report.warning(f"{source}: the last {len(entries) - newest['size']} log entries are "
                       "not yet covered by a signed checkpoint")
    return newest


def _check_vault(vault: Path, report: Report) -> dict[str, Digest | str]:
    """Hash every object under vault/sha256; findings for misplaced or corrupt ones."""
    paths: list[Path] = []
    objects = vault / "sha256"
    for dirpath, dirnames, filenames in os.walk(objects):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(objects).as_posix()
            if not HEX64.fullmatch(name) or rel != f"{name[:2]}/{name[2:4]}/{name}":
                report.problem(f"vault-format: unexpected file vault/sha256/{rel}")
            elif path.is_symlink() or not path.is_file():
                report.problem(f"vault-format: vault/sha256/{rel} is not a regular file")
            else:
                paths.append(path)
    incoming = vault / "incoming"
    if incoming.is_dir() and any(incoming.iterdir()):
        report.warning(f"{vault}/incoming holds partial copies (the daemon removes them at "
                       "start and copies those clips again)")
    return {path.name: digest for path, digest in hash_paths(paths, report).items()}


def _check_clips(store: Store, report: Report, keys: KeySchedule, *,
                 entries: list[dict[str, Any]], objects: dict[str, Digest | str],
                 source: str) -> None:
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if entry["clip_id"] is not None:
            by_clip.setdefault(entry["clip_id"], []).append(entry)
    for row in store.clips():
        clip_id, sha = row["clip_id"], row["sha256"]
        result = report.clip(clip_id, source, row["name"])
        result.state = row["state"]
        state = ClipState(row["state"])
        history, logged_state = history_problems(by_clip.get(clip_id, []))
        for p in history:
            result.add(p)
        if logged_state != state.value:
            result.add(f"log-state: the database says {state.value}, the log's history leaves "
                       f"the clip {logged_state or 'unknown'}")
        digest: Digest | None = None
        if sha is not None and sha in objects:
            got = objects[sha]
            if isinstance(got, str):
                result.add(f"vault-digest: vault object {sha}: {got}")
            elif got[0] != sha:
                result.add(f"vault-digest: vault object {sha} reads back as {got[0]}: the "
                           "clip's bytes on this station are corrupt")
            else:
                digest = got
        elif state in IN_VAULT:
            result.add(f"vault-missing: the clip is {state.value} but its bytes ({sha}) are "
                       "not in the vault")
        if row["manifest"] is None:
            if state in SEALED_OR_LATER:
                result.add(f"manifest-missing: the clip is {state.value} but has no manifest")
            continue
        _check_manifest(row, result, report, keys, digest=digest,
                        entries=by_clip.get(clip_id, []))
    for sha, got in objects.items():
        if isinstance(got, tuple) and got[0] != sha and not store.query_one(
                "SELECT 1 FROM clips WHERE sha256 = ?", (sha,)):
            report.problem(f"vault-digest: unreferenced vault object {sha} reads back as "
                           f"{got[0]}")


def _check_manifest(row: Any, result: ClipResult, report: Report, keys: KeySchedule,
                    *, digest: Digest | None, entries: list[dict[str, Any]]) -> None:
    try:
        envelope = json.loads(row["manifest"])
    except json.JSONDecodeError as exc:
        result.add(f"manifest-missing: the stored manifest is not JSON: {exc}")
        return
    identity = keys.for_manifest(envelope, entries)
    payload, problems = open_envelope(envelope, identity, dsse.MANIFEST, "manifest")
    for p in problems:
        result.add(p)
    if payload is None:
        return
    manifest, problems = parse_canonical(payload, "manifest-canonical", "manifest")
    more, warnings = manifest_problems(manifest, clip_id=row["clip_id"], identity=identity,
                                       digest=digest)
    for p in problems + more:
        result.add(p)
    for w in warnings:
        report.warning(f"{row['clip_id']}: {w}")
    claimed = manifest_digest(manifest)[0]
    if claimed is not None and claimed != row["sha256"]:
        result.add(f"manifest-db: the manifest says SHA-256 {claimed}, the database "
                   f"{row['sha256']}")
    for p in seal_link_problems(entries, sha256_hex(payload), claimed):
        result.add(p)
