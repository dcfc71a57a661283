"""Export bundles for auditors: sealed clips with everything needed to verify them offline.

A bundle (layout in :mod:`agent.verify.layout`, format in docs/FORMATS.md) is
a BagIt 1.0 bag holding the clips' bytes, their signed manifests, their
custody log entries with inclusion proofs to a signed checkpoint, earlier
checkpoints with consistency proofs, the station certificate, and a README
with commands to check it all by hand (sha256sum, openssl, python3).

Invariants:

- only sealed clips are exported (a manifest exists); others are named in
  the error;
- clip bytes are hashed while they are copied and must equal the signed
  manifest's digest and size, or the export fails;
- every exported log entry's leaf is recomputed and must equal the stored
  one, and the checkpoint's root must equal the root of the stored log: a
  station whose log disagrees with itself exports nothing (run verify on it);
- the bundle is built in a temporary directory beside ``out`` (every file
  and directory fsynced) and renamed into place at the end: ``out`` is either
  absent, or empty, or a whole bundle; a non-empty ``out`` is refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from agent import __version__
from agent.config import Config
from agent.custody import dsse, merkle
from agent.custody.keys import StationKey, certificate_keyid
from agent.custody.sealer import Custody, key_paths
from agent.durable import fsync_dir, makedirs_durable
from agent.errors import ConfigError, IntegrityError, StoreError
from agent.officers.bundle import bundle_files
from agent.pki.identity import ROTATION_KIND
from agent.store import ClipState, Store
from agent.store.db import LogEntry
from agent.timeutil import uuid7
from agent.vault import Vault
from agent.verify import layout
from agent.verify.bagit import BAGIT_TXT_CONTENT, bag_info_text, manifest_text, payload_oxum
from agent.verify.readme import readme_text
from agent.verify.readme_rotation import RotationExample, keys_cert_path, rotation_readme

log = logging.getLogger(__name__)
S = ClipState

EXPORTABLE = frozenset({S.SEALED, S.UPLOADING, S.UPLOADED, S.ACKNOWLEDGED, S.RELEASED})
COPY_BLOCK = 4 * 1024 * 1024
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    clip_ids: list[str]
    entries: int
    checkpoint_size: int
    earlier_checkpoints: int
    payload_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "clips": list(self.clip_ids), "entries": self.entries,
                "checkpoint_size": self.checkpoint_size,
                "earlier_checkpoints": self.earlier_checkpoints,
                "payload_bytes": self.payload_bytes}


# --- selection ---------------------------------------------------------------------------

def select_clips(store: Store, *, clip_refs: Sequence[str] = (), case_id: str | None = None,
                 all_clips: bool = False, skip_unexportable: bool = False) -> list[sqlite3.Row]:
    """The clips to export: by id (or unique prefix), by case, or all; ConfigError otherwise.

    Unknown ids and clips that cannot be exported (not sealed, or purged) are
    all named in one error.  ``skip_unexportable`` leaves the latter out of a
    ``case_id`` or ``all_clips`` selection instead; clips asked for by id are
    never skipped silently.
    """
    if sum((bool(clip_refs), case_id is not None, all_clips)) != 1:
        raise ConfigError("choose the clips with exactly one of --clip, --case or --all")
    rows: list[sqlite3.Row] = []
    if clip_refs:
        unknown = []
        for ref in clip_refs:
            try:
                rows.append(store.find_clip(ref))
            except StoreError as exc:
                unknown.append(str(exc))
        if unknown:
            raise ConfigError(f"cannot export: {len(unknown)} clip id(s) not found on this "
                              "station (see `bwc-agent clips`)", unknown)
    elif case_id is not None:
        # The clips in the case now (after every addition, removal and correction).
        rows = store.query("SELECT clips.* FROM clips JOIN clip_cases ON clip_cases.clip_id = "
                           "clips.clip_id WHERE clip_cases.case_id = ? ORDER BY clip_id",
                           (case_id,))
        if not rows:
            raise ConfigError(f"cannot export: no clip is tagged with case {case_id!r}")
    else:
        rows = store.clips()
        if not rows:
            raise ConfigError("cannot export: this station has no clips")
    unique = list({r["clip_id"]: r for r in rows}.values())
    bad = [r for r in unique if ClipState(r["state"]) not in EXPORTABLE]
    if bad and (clip_refs or not skip_unexportable):
        hint = "" if clip_refs else " (add --skip-unsealed to export only the others)"
        raise ConfigError(
            f"cannot export {len(bad)} clip(s): only sealed clips still in the vault can be "
            f"exported{hint}", [_why_not(r) for r in bad])
    chosen = [r for r in unique if ClipState(r["state"]) in EXPORTABLE]
    if not chosen:
        raise ConfigError("cannot export: none of the selected clips is sealed")
    return chosen


def _why_not(row: sqlite3.Row) -> str:
    state = row["state"]
    if state == S.PURGED.value:
        why = "purged: its bytes are no longer on this station"
    elif state == S.DUPLICATE.value:
        why = "duplicate of another clip: export that one"
    else:
        why = f"{state}, not sealed" + (f" ({row['reason']})" if row["reason"] else "")
    return f"{row['clip_id']} {row['name']}: {why}"


# --- export ------------------------------------------------------------------------------

def export_bundle(config: Config, store: Store, vault: Vault, clips: Sequence[sqlite3.Row],
                  out: Path, *, progress: Progress | None = None) -> ExportResult:
    """Write a bundle of ``clips`` (from ``select_clips``) to ``out``; see the module doc."""
    out = Path(out)
    _check_out(out)
    cert_pem, chain = _station_certs(config)
    cert = x509.load_pem_x509_certificate(cert_pem)
    clip_ids = [r["clip_id"] for r in clips]
    entries = _entries(store, clip_ids)
    logged = {e.clip_id for e in entries}
    unlogged = [c for c in clip_ids if c not in logged]
    if unlogged:
        raise IntegrityError(f"clip(s) {', '.join(unlogged)} have no custody log entries; run "
                             "`bwc-agent verify` on the data directory")
    # Key rotations: which key signed what (FORMATS.md section 5.1); a verifier needs all.
    entries = sorted([*entries, *_rotation_entries(store)], key=lambda e: e.seq)
    needed = max(e.seq for e in entries)
    head = _covering_checkpoint(config, store, vault, needed)
    size = int(head["size"])
    leaves = store.leaf_hashes(size)
    if len(leaves) != size:
        raise IntegrityError(f"the custody log has {len(leaves)} entries up to seq {size}: "
                             "entries are missing; run `bwc-agent verify` on the data directory")
    tree = merkle.MerkleTree(leaves)
    envelope = json.loads(head["envelope"])
    _check_head(envelope, head, tree, cert)
    for entry in entries:
        if merkle.leaf_hash(entry.leaf_input()) != leaves[entry.seq - 1]:
            raise IntegrityError(f"custody log entry {entry.seq} no longer matches its stored "
                                 "leaf hash; run `bwc-agent verify` on the data directory")
    earlier = _earlier_checkpoints(store, tree, size, min(e.seq for e in entries))

    makedirs_durable(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        writer = _BagWriter(tmp)
        total = sum(int(r["size"]) for r in clips)
        done = 0
        for row in clips:
            done = writer.copy_clip(vault, row, done, total, progress)
            writer.write(layout.manifest_path(row["clip_id"]),
                         (row["manifest"].rstrip("\n") + "\n").encode(), payload=True)
        writer.write(layout.ENTRIES, b"".join(e.leaf_input() + b"\n" for e in entries))
        proofs = {"checkpoint": {"size": size, "root": head["root"]}, "entries": [
            {"seq": e.seq, "clip_id": e.clip_id, "leaf_index": e.seq - 1,
             "leaf_hash": leaves[e.seq - 1].hex(),
             "inclusion_proof": [p.hex() for p in tree.inclusion_proof(e.seq - 1, size)]}
            for e in entries]}
        writer.write(layout.PROOFS, _pretty(proofs))
        writer.write(layout.CHECKPOINT, _pretty(envelope))
        writer.write(layout.CHECKPOINTS, b"".join(
            json.dumps(c, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            for c in earlier))
        writer.write(layout.FORMATS, layout.formats_text())
        writer.write(layout.STATION_CERT, cert_pem)
        for name, data in chain:
            writer.write(f"{layout.CERTS_DIR}/{name}", data)
        officers = bundle_files(config, store, clips, entries)
        for rel, data in officers.files:
            writer.write(rel, data)
        # The worked example in the README: the entry that seals the first clip.
        mine = [e for e in entries if e.clip_id == clip_ids[0]]
        example = next((e for e in mine if e.kind == "clip.sealed"), mine[0])
        current, signer = certificate_keyid(cert), _signer_keyid(clips[0])
        earlier_signer = (str(earlier[0]["envelope"]["signatures"][0]["keyid"]) if earlier
                          else current)
        rotations = [RotationExample(entries.index(e) + 1, e.seq, *_rotation_keys(e))
                     for e in entries if e.kind == ROTATION_KIND]
        writer.write(layout.README, readme_text(
            station_id=config.station.id, keyid=current,
            clip_id=clip_ids[0], clip_path=writer.clip_paths[clip_ids[0]],
            entry_line=entries.index(example) + 1, entry_seq=example.seq, entry_kind=example.kind,
            leaf_hash=leaves[example.seq - 1].hex(), clips=len(clips),
            earlier=len(earlier), signer_cert=keys_cert_path(signer, current),
            signer_keyid=signer, earlier_cert=keys_cert_path(earlier_signer, current),
            earlier_keyid=earlier_signer).encode()
            + officers.readme.encode() + rotation_readme(rotations, current).encode())
        writer.finish(config.station.id, clips=len(clips), checkpoint_size=size)
        _rename_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d clips, %d log entries (checkpoint %d) to %s",
             len(clips), len(entries), size, out)
    return ExportResult(path=out, clip_ids=clip_ids, entries=len(entries),
                        checkpoint_size=size, earlier_checkpoints=len(earlier),
                        payload_bytes=writer.payload_bytes)


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: directory is not empty; refusing to write a bundle "
                          "into it (give a new or empty directory)")


def _station_certs(config: Config) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The station certificate and any CA chain files (certificates only) beside it."""
    _, cert_path = key_paths(config)
    try:
        cert_pem = Path(cert_path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the station certificate {cert_path}: "
                          f"{exc.strerror}") from None
    chain = []
    for path in sorted(Path(cert_path).parent.glob("*.pem")):
        # tls.pem is the station's TLS identity: it signs no evidence.
        if path.name in (Path(cert_path).name, "tls.pem") or path.is_symlink():
            continue
        data = path.read_bytes()
        # A PEM file beside the key could hold a private key: copy certificates only.
        if b"PRIVATE KEY" in data or b"-----BEGIN CERTIFICATE-----" not in data:
            continue
        with contextlib.suppress(ValueError):
            x509.load_pem_x509_certificates(data)
            chain.append((layout.safe_name(path.name), data))
    # The certificates of the keys the station rotated away from, by keyid.
    archive = Path(cert_path).parent / "archive"
    for path in sorted(archive.glob("*.pem")) if archive.is_dir() else []:
        if layout.is_keyid(path.stem) and not path.is_symlink():
            chain.append((f"keys/{path.stem}.pem", path.read_bytes()))
    return cert_pem, chain


def _rotation_entries(store: Store) -> list[LogEntry]:
    rows = store.query("SELECT seq, at, kind, clip_id, body FROM custody_log WHERE kind = ?",
                       (ROTATION_KIND,))
    return [LogEntry(seq=int(r["seq"]), at=r["at"], kind=r["kind"], clip_id=r["clip_id"],
                     body=json.loads(r["body"])) for r in rows]


def _rotation_keys(entry: LogEntry) -> tuple[str, str]:
    statement = json.loads(dsse.b64decode(entry.body["statement"]["payload"]))
    return statement["old_keyid"], statement["new_keyid"]


def _signer_keyid(row: sqlite3.Row) -> str:
    """The keyid the clip's manifest was signed under (its station.key_id)."""
    manifest = json.loads(dsse.b64decode(json.loads(row["manifest"])["payload"]))
    return str(manifest["station"]["key_id"])


def _entries(store: Store, clip_ids: Sequence[str]) -> list[LogEntry]:
    rows: list[sqlite3.Row] = []
    for start in range(0, len(clip_ids), 500):  # stay below SQLite's bound-variable limit
        batch = clip_ids[start:start + 500]
        rows += store.query(
            "SELECT seq, at, kind, clip_id, body FROM custody_log WHERE clip_id IN "
            f"({','.join('?' * len(batch))})", tuple(batch))
    return sorted((LogEntry(seq=int(r["seq"]), at=r["at"], kind=r["kind"], clip_id=r["clip_id"],
                            body=json.loads(r["body"])) for r in rows), key=lambda e: e.seq)


def _covering_checkpoint(config: Config, store: Store, vault: Vault,
                         needed: int) -> sqlite3.Row:
    """The newest checkpoint, signing a new one first if it does not cover seq ``needed``."""
    sql = "SELECT size, root, at, envelope FROM checkpoints ORDER BY size DESC LIMIT 1"
    head = store.query_one(sql)
    if head is None or int(head["size"]) < needed:
        custody = Custody(config, store, vault)
        custody.key = StationKey.load(key_paths(config)[0])
        try:
            custody.checkpoint()
        except sqlite3.IntegrityError:
            log.info("the daemon signed a checkpoint at the same time; using the newest")
        head = store.query_one(sql)
        if head is None or int(head["size"]) < needed:
            raise StoreError(f"no signed checkpoint covers log entry {needed}")
    return head


def _check_head(envelope: Any, head: sqlite3.Row, tree: merkle.MerkleTree,
                cert: x509.Certificate) -> None:
    key = cert.public_key()
    if not isinstance(key, dsse.PublicKey):
        raise IntegrityError("the station certificate does not carry an Ed25519 key")
    payload = dsse.verify_envelope(envelope, {certificate_keyid(cert): key}, dsse.CHECKPOINT)
    body = json.loads(payload)
    if body.get("size") != head["size"] or body.get("root") != head["root"]:
        raise IntegrityError(f"checkpoint {head['size']}: signed payload differs from its row")
    if tree.root().hex() != head["root"]:
        raise IntegrityError(f"the custody log's first {head['size']} entries no longer hash to "
                             "the signed checkpoint root; run `bwc-agent verify` on the data "
                             "directory")


def _earlier_checkpoints(store: Store, tree: merkle.MerkleTree, size: int,
                         first_seq: int) -> list[dict[str, Any]]:
    """Checkpoints signed since the first exported entry, each with a proof to the newest."""
    rows = store.query("SELECT size, root, at, envelope FROM checkpoints WHERE size >= ? AND "
                       "size < ? ORDER BY size", (first_seq, size))
    out = []
    for row in rows:
        if tree.root(int(row["size"])).hex() != row["root"]:
            raise IntegrityError(f"checkpoint {row['size']} ({row['at']}) is not a prefix of "
                                 "the current log; run `bwc-agent verify` on the data directory")
        out.append({"size": int(row["size"]), "root": row["root"], "at": row["at"],
                    "envelope": json.loads(row["envelope"]),
                    "consistency_proof": [p.hex() for p in
                                          tree.consistency_proof(int(row["size"]), size)]})
    return out


def _pretty(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _rename_into_place(tmp: Path, out: Path) -> None:
    try:
        if out.is_dir():
            out.rmdir()  # empty (checked): rename(2) would replace it, but say so plainly
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise StoreError(f"cannot move the bundle into place at {out}: {exc.strerror}") from exc


class _BagWriter:
    """Writes files into the bag directory, fsynced, remembering digests for the manifests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.payload: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.payload_bytes = 0
        self.clip_paths: dict[str, str] = {}
        self._dirs: set[Path] = {root}

    def _open(self, rel: str) -> int:
        path = self.root / rel
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            directory = self.root / parent
            if directory not in self._dirs:
                directory.mkdir(mode=0o750)
                self._dirs.add(directory)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)

    def write(self, rel: str, data: bytes, *, payload: bool = False) -> None:
        try:
            fd = self._open(rel)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot write {rel} of the bundle: {exc.strerror}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if payload:
            self.payload[rel] = digest
            self.payload_bytes += len(data)
        else:
            self.tags[rel] = digest

    def copy_clip(self, vault: Vault, row: sqlite3.Row, done: int, total: int,
                  progress: Progress | None) -> int:
        """Copy a clip from the vault, hashing as it goes; checked against its manifest."""
        clip_id = row["clip_id"]
        payload = dsse.b64decode(json.loads(row["manifest"])["payload"])
        file_info = json.loads(payload)["file"]
        expected, size = file_info["digests"]["sha256"], int(file_info["size"])
        rel = layout.clip_file_path(clip_id, file_info["name"])
        source = vault.path_for(expected)
        h = hashlib.sha256()
        copied = 0
        try:
            with open(source, "rb", buffering=0) as src:
                fd = self._open(rel)
                try:
                    buf = bytearray(COPY_BLOCK)
                    view = memoryview(buf)
                    while n := src.readinto(buf):
                        h.update(view[:n])
                        chunk = view[:n]
                        while chunk:
                            chunk = chunk[os.write(fd, chunk):]
                        copied += n
                        if copied > size:
                            break  # longer than sealed: no need to read the rest
                        if progress is not None:
                            progress(done + copied, total)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StoreError(f"clip {clip_id}: cannot copy {source} into the bundle: "
                             f"{exc.strerror}") from exc
        if copied != size or h.hexdigest() != expected:
            raise IntegrityError(
                f"clip {clip_id}: the vault copy reads as {copied} bytes, SHA-256 "
                f"{h.hexdigest()}; its signed manifest says {size} bytes, {expected}. "
                "Nothing was exported; run `bwc-agent verify` on the data directory")
        self.payload[rel] = expected
        self.payload_bytes += copied
        self.clip_paths[clip_id] = rel
        return done + copied

    def finish(self, station_id: str, *, clips: int, checkpoint_size: int) -> None:
        """bagit.txt, bag-info.txt and both manifests; then fsync every directory."""
        self.write(layout.BAGIT_TXT, BAGIT_TXT_CONTENT.encode())
        info = [
            ("Source-Organization", f"bwc-agent station {station_id}"),
            ("Bagging-Date", dt.datetime.now(dt.UTC).date().isoformat()),
            ("Bag-Software-Agent", f"bwc-agent {__version__}"),
            ("External-Identifier", f"bwc-export-{uuid7()}"),
            ("Payload-Oxum", payload_oxum(self.payload_bytes, len(self.payload))),
            ("Bag-Count", "1 of 1"),
            ("Bwc-Bundle-Format", layout.BUNDLE_FORMAT),
            ("Bwc-Station-Id", station_id),
            ("Bwc-Clip-Count", str(clips)),
            ("Bwc-Checkpoint-Size", str(checkpoint_size)),
        ]
        self.write(layout.BAG_INFO, bag_info_text(info).encode())
        self.write(layout.PAYLOAD_MANIFEST, manifest_text(self.payload.items()).encode())
        self.write(layout.TAG_MANIFEST, manifest_text(self.tags.items()).encode())
        for directory in sorted(self._dirs, key=lambda d: len(d.parts), reverse=True):
            fsync_dir(directory)
