"""Verify an export bundle (bwc.bundle/v1, docs/FORMATS.md) offline, reporting every failure.

What is checked, in order (each step runs whatever the earlier ones found):

1. BagIt: bagit.txt, every manifest line's file exists and has its digest,
   no payload file is unlisted, Payload-Oxum, the tag manifest;
2. the station certificate (validity when the checkpoint was signed, chain
   to ``--trust`` if given);
3. the checkpoint's signature and fields;
4. each log entry: its leaf recomputed from the entry, its proof index equal
   to seq - 1, its inclusion proof walked to the checkpoint root, file order
   by seq; every proof has its entry;
5. each earlier checkpoint: signature and consistency with the newest;
6. each clip: manifest signature (keyid of the certificate), fields, digest
   and size of the bytes, the ``clip.sealed`` entry naming this manifest,
   and a state history without gaps; and its trust (the certificate's
   verdict is part of every clip's).

The bundle is hostile until proven otherwise: only the regular files the
scan found are read (agent.verify.files: no link followed anywhere in a
path, FIFOs and devices refused, sizes capped), JSON is parsed with bounds
(agent.boundedjson), and every such refusal is a named finding.  Files that
are not part of the layout are reported as warnings, not ignored.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.verify import layout
from agent.verify.bagit import bagit_txt_problems, parse_bag_info, parse_manifest, payload_oxum
from agent.verify.checks import (
    Digest,
    Identity,
    apply_trust,
    check_certificate,
    hash_all,
    history_problems,
    identity_from_pem,
    manifest_digest,
    manifest_problems,
    open_checkpoint,
    open_envelope,
    parse_canonical,
    parse_json,
    seal_link_problems,
    sha256_hex,
    signed_time,
    trust_status,
)
from agent.verify.files import LIMITS, Unreadable, hash_beneath, read_beneath
from agent.verify.report import Report
from agent.verify.rotation import KeySchedule, bundle_schedule

# The tag files of a bwc.bundle/v1 bundle; anything else outside data/ is reported.
_TAG_FILES = frozenset({layout.BAGIT_TXT, layout.BAG_INFO, layout.PAYLOAD_MANIFEST,
                        layout.TAG_MANIFEST, layout.README, layout.FORMATS, layout.ENTRIES,
                        layout.PROOFS, layout.CHECKPOINT, layout.CHECKPOINTS})
# certs/keys/<keyid>.pem: certificates of keys the station rotated away from (FORMATS.md 5.1).
_CERT_FILE = re.compile(r"certs/(keys/[0-9a-f]{64}|[^/]+)\.pem")
# Officers and cases (agent/officers/layout.py; FORMATS.md section 15), checked by
# agent/officers/audit.py.
_OFFICER_FILE = re.compile(r"officers/(credential-key\.pem|platform-key\.pem|rosters\.jsonl"
                           r"|case-windows\.jsonl|credentials/[^/]+)|cases/[^/]+")
_PAYLOAD_FILE = re.compile(r"data/clips/[^/]+/[^/]+|data/manifests/[^/]+\.dsse\.json")


def verify_bundle(root: Path, report: Report,
                  trust: Sequence[x509.Certificate] | None = None,
                  officer_key: Path | None = None) -> None:
    from agent.officers.audit import verify_officers  # it reads agent.verify's layout

    check = _BundleCheck(root, report, trust)
    check.run()
    # Officers and cases (credentials, rosters, case windows, tags): agent/officers/audit.py.
    verify_officers(root, report, check.source, check.entries, officer_key)


class _BundleCheck:
    def __init__(self, root: Path, report: Report,
                 trust: Sequence[x509.Certificate] | None) -> None:
        self.root = root
        self.report = report
        self.trust = trust
        self.source = str(root)
        self.files: dict[str, int] = {}  # relative path -> size, regular files only
        self.refused: dict[str, str] = {}  # relative path -> why it is never read
        self.digests: dict[str, Digest | str] = {}
        self.identity: Identity | None = None
        self.keys = KeySchedule(None)
        self.checkpoint: dict[str, Any] | None = None
        self.checkpoint_ok = False
        self.entries: list[dict[str, Any]] = []

    # --- findings ------------------------------------------------------------------------

    def clip_of(self, relpath: str) -> str | None:
        parts = relpath.split("/")
        if relpath.startswith(layout.CLIPS_DIR + "/") and len(parts) >= 3:
            return parts[2] if layout.is_clip_id(parts[2]) else None
        if relpath.startswith(layout.MANIFESTS_DIR + "/") and len(parts) == 3:
            stem = parts[2].removesuffix(layout.MANIFEST_SUFFIX)
            return stem if layout.is_clip_id(stem) else None
        return None

    def problem(self, text: str, clip_id: str | None = None) -> None:
        if clip_id is None:
            self.report.problem(text)
        else:
            self.report.clip(clip_id, self.source).add(text)

    def file_problem(self, relpath: str, text: str) -> None:
        self.problem(text, self.clip_of(relpath))

    # --- steps ---------------------------------------------------------------------------

    def run(self) -> None:
        self.report.targets.append({"path": self.source, "kind": "bundle"})
        self.scan()
        self.check_bag()
        self.identity = self.load_identity()
        # Which key signed what, if the station rotated its key (agent/verify/rotation.py).
        self.keys = bundle_schedule(self.root, self.files, self.identity, self.trust,
                                    self.report, self.source)
        self.check_checkpoint()
        cert_problems: list[str] = []
        if self.identity is not None:
            cert_problems = check_certificate(self.identity, self.report, self.source,
                                              self.trust, signed_time(self.checkpoint))
        self.check_entries()
        self.check_earlier_checkpoints()
        self.check_clips()
        apply_trust(self.report, self.source,
                    trust_status(self.identity, cert_problems, self.trust))

    # --- reading -------------------------------------------------------------------------

    def read(self, rel: str, limit: int) -> bytes:
        """The bytes of a file the scan accepted; Unreadable (with the reason) for any other."""
        if rel not in self.files:
            raise Unreadable(self.refused.get(rel) or self._missing(rel))
        return read_beneath(self.root, rel, limit)

    def _missing(self, rel: str) -> str:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in self.refused:
                return f"{rel} lies below {above}, which is not read ({self.refused[above]})"
        return f"{rel} is missing"

    def hash_file(self, rel: str) -> Digest:
        """SHA-256 of a file the scan accepted; a tag file only up to the size it may have."""
        if not rel.startswith("data/") and self.files[rel] > _tag_limit(rel):
            raise Unreadable(f"{rel} is larger than this verifier reads "
                             f"({_tag_limit(rel) // 2**20} MiB)")
        return hash_beneath(self.root, rel)

    def read_json(self, rel: str, limit: int) -> tuple[Any, str | None]:
        try:
            data = self.read(rel, limit)
        except Unreadable as exc:
            return None, str(exc)
        return parse_json(data, rel, max_bytes=limit)

    def load_identity(self) -> Identity | None:
        try:
            data = self.read(layout.STATION_CERT, LIMITS["small"])
        except Unreadable as exc:
            self.problem(f"cert-missing: {self.source}: no usable station certificate: {exc}")
            return None
        return identity_from_pem(data, layout.STATION_CERT, self.report, self.source)

    def scan(self) -> None:
        def unreadable(exc: OSError) -> None:
            self.problem(f"bag-format: cannot list {exc.filename}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable):
            base = Path(dirpath)
            for name in sorted(dirnames + filenames):
                path = base / name
                rel = path.relative_to(self.root).as_posix()
                try:
                    info = path.lstat()
                except OSError as exc:
                    self.refused[rel] = f"{rel} cannot be examined: {exc.strerror}"
                    self.file_problem(rel, f"bag-format: {self.refused[rel]}")
                    continue
                mode = info.st_mode
                if stat.S_ISLNK(mode):
                    self.refused[rel] = f"{rel} is a symbolic link (not followed)"
                    self.file_problem(rel, f"bag-format: {rel} is a symbolic link; a bundle "
                                           "holds regular files only (not followed)")
                elif stat.S_ISREG(mode):
                    self.files[rel] = info.st_size
                elif not stat.S_ISDIR(mode):
                    self.refused[rel] = f"{rel} is {_kind(mode)}, not a regular file (not read)"
                    self.file_problem(rel, f"bag-format: {rel} is not a regular file")
            dirnames[:] = [d for d in dirnames
                           if (base / d).relative_to(self.root).as_posix() not in self.refused]

    def read_text(self, rel: str, limit: int = LIMITS["small"]) -> str | None:
        """The UTF-8 text of a tag file; None (after a finding, unless missing) if unusable."""
        try:
            data = self.read(rel, limit)
        except Unreadable as exc:
            if rel in self.files or rel in self.refused:
                self.problem(f"bag-format: cannot read {exc}")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(f"bag-format: {rel} is not UTF-8 text: {exc.reason} at byte "
                         f"{exc.start}")
            return None

    def check_bag(self) -> None:
        for finding in bagit_txt_problems(self.read_text(layout.BAGIT_TXT)):
            self.problem(finding)
        manifests: dict[str, dict[str, str]] = {}
        for name in (layout.PAYLOAD_MANIFEST, layout.TAG_MANIFEST):
            text = self.read_text(name, LIMITS["tag-manifest"])
            if text is None:
                self.problem(f"bag-missing: {name} is missing or unreadable")
                manifests[name] = {}
                continue
            manifests[name], problems = parse_manifest(text, name)
            for p in problems:
                self.problem(p)
        payload, tags = manifests[layout.PAYLOAD_MANIFEST], manifests[layout.TAG_MANIFEST]
        data_files = [rel for rel in self.files if rel.startswith("data/")]
        to_hash = set(data_files) | {rel for rel in tags if rel in self.files}
        self.digests = hash_all(sorted(to_hash), self.hash_file, self.report)

        for name, listing in ((layout.PAYLOAD_MANIFEST, payload), (layout.TAG_MANIFEST, tags)):
            for rel, expected in sorted(listing.items()):
                if name == layout.PAYLOAD_MANIFEST and not rel.startswith("data/"):
                    self.problem(f"bag-format: {name} lists {rel}, which is not under data/")
                    continue
                got = self.digests.get(rel)
                if rel not in self.files or got is None:
                    self.file_problem(rel, f"bag-missing: {rel} is listed in {name} but "
                                           "missing from the bundle")
                elif isinstance(got, str):
                    self.file_problem(rel, f"bag-digest: {rel}: {got}")
                elif got[0] != expected:
                    self.file_problem(rel, f"bag-digest: {rel} has SHA-256 {got[0]}, {name} "
                                           f"says {expected}")
        for rel in sorted(set(data_files) - set(payload)):
            self.file_problem(rel, f"bag-unlisted: {rel} is in the payload but not in "
                                   f"{layout.PAYLOAD_MANIFEST}")
        # The exporter covers every tag file: one left out was added, or its line removed.
        for rel in sorted(rel for rel in self.files if not rel.startswith("data/")
                          and rel not in tags and rel != layout.TAG_MANIFEST):
            self.problem(f"bag-unlisted: {rel} is a tag file but not in {layout.TAG_MANIFEST}")
        for rel in sorted(self.files):
            if not (rel in _TAG_FILES or _CERT_FILE.fullmatch(rel)
                    or _OFFICER_FILE.fullmatch(rel) or _PAYLOAD_FILE.fullmatch(rel)):
                listed = " (listed in a BagIt manifest)" if rel in tags or rel in payload \
                    else ""
                self.report.warning(f"{self.source}: {rel} is not part of a "
                                    f"{layout.BUNDLE_FORMAT} bundle{listed}; its content is "
                                    "not checked")
        self.check_bag_info(data_files)

    def check_bag_info(self, data_files: list[str]) -> None:
        text = self.read_text(layout.BAG_INFO)
        if text is None:
            self.problem(f"bag-missing: {layout.BAG_INFO} is missing")
            return
        info = parse_bag_info(text)
        actual = payload_oxum(sum(self.files[rel] for rel in data_files), len(data_files))
        declared = info.get("Payload-Oxum", [])
        if declared != [actual]:
            self.problem(f"bag-oxum: bag-info.txt declares Payload-Oxum {declared}, the "
                         f"payload is {actual} (octets.files): files were added, removed "
                         "or resized")
        fmt = info.get("Bwc-Bundle-Format", [])
        if fmt != [layout.BUNDLE_FORMAT]:
            self.report.warning(f"{self.source}: bag-info.txt Bwc-Bundle-Format is {fmt}, "
                                f"this verifier reads {layout.BUNDLE_FORMAT}")

    def check_checkpoint(self) -> None:
        envelope, error = self.read_json(layout.CHECKPOINT, LIMITS["small"])
        if error is not None:
            self.problem(f"checkpoint-missing: {layout.CHECKPOINT}: {error}")
            return
        warnings: list[str] = []
        self.checkpoint, problems = open_checkpoint(envelope, self.keys.for_checkpoint(envelope),
                                                    layout.CHECKPOINT, warnings)
        for w in warnings:
            self.report.warning(f"{self.source}: {w}")
        if self.checkpoint is not None and self.identity is not None \
                and self.identity.station_id is not None \
                and self.checkpoint.get("station_id") != self.identity.station_id:
            problems.append(f"checkpoint-field: checkpoint names station "
                            f"{self.checkpoint.get('station_id')!r}, the certificate is for "
                            f"{self.identity.station_id!r}")
        for p in problems:
            self.problem(p)
        self.checkpoint_ok = self.checkpoint is not None and not problems

    def check_entries(self) -> None:
        entries, proofs = self.load_entries(), self.load_proofs()
        size = self.checkpoint["size"] if self.checkpoint else None
        root = bytes.fromhex(self.checkpoint["root"]) if self.checkpoint else None
        last_seq = 0
        last_of_clip: dict[str | None, int] = {}
        for line, entry in entries:
            seq, clip_id = entry["seq"], entry["clip_id"]
            # Out of order in the file: a general finding; and for the clip whose own
            # entries are out of order (other clips' entries between them are innocent).
            if seq <= last_seq:
                self.problem(f"log-order: {layout.ENTRIES} line {line} has seq {seq} after "
                             f"seq {last_seq} (entries duplicated or out of order)")
            if seq <= last_of_clip.get(clip_id, 0):
                self.problem(f"log-order: seq {seq} comes after this clip's seq "
                             f"{last_of_clip[clip_id]} in {layout.ENTRIES} (entries duplicated "
                             "or out of order)", clip_id)
            last_seq = max(last_seq, seq)
            last_of_clip[clip_id] = max(last_of_clip.get(clip_id, 0), seq)
            proof = proofs.pop(seq, None)
            if proof is None:
                self.problem(f"log-inclusion: seq {seq} has no inclusion proof in "
                             f"{layout.PROOFS}", clip_id)
                continue
            leaf = merkle.leaf_hash(canonicalize({k: entry[k] for k in _ENTRY_KEYS}))
            index = proof.get("leaf_index")
            if index != seq - 1:
                self.problem(f"log-order: the proof for seq {seq} is for leaf index {index}, "
                             f"not {seq - 1} (entries renumbered or moved)", clip_id)
            if proof.get("leaf_hash") not in (None, leaf.hex()):
                self.problem(f"log-leaf: seq {seq} hashes to {leaf.hex()}, the proof was made "
                             f"for leaf {proof.get('leaf_hash')} (the entry was edited)",
                             clip_id)
            if size is None or root is None:
                self.problem(f"log-inclusion: seq {seq}: no usable signed checkpoint to prove "
                             "it against", clip_id)
                continue
            path = _hex_list(proof.get("inclusion_proof"))
            if path is None or not isinstance(index, int) or not merkle.verify_inclusion(
                    leaf, index, size, path, root):
                self.problem(f"log-inclusion: seq {seq} (leaf index {index}) is not included "
                             f"under the checkpoint root (size {size}): the entry or its "
                             "proof was altered", clip_id)
            elif not self.checkpoint_ok:
                self.problem(f"log-inclusion: seq {seq} leads to a checkpoint that does not "
                             "verify, so its inclusion is not established", clip_id)
        for seq, proof in sorted(proofs.items()):
            clip_id = proof.get("clip_id") if isinstance(proof.get("clip_id"), str) else None
            self.problem(f"log-missing: {layout.PROOFS} has a proof for seq {seq} but "
                         f"{layout.ENTRIES} has no such entry (an entry was removed)",
                         clip_id if clip_id and layout.is_clip_id(clip_id) else None)
        self.entries = [entry for _, entry in entries]

    def load_entries(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            raw = self.read(layout.ENTRIES, LIMITS["log"])
        except Unreadable as exc:
            self.problem(f"log-missing: {layout.ENTRIES} is missing or unreadable: {exc}")
            return []
        out = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            value, problems = parse_canonical(line, "log-format", f"{layout.ENTRIES} line "
                                                                   f"{number}")
            entry = _entry(value)
            if value is None and problems:
                self.problem(problems[0])
                continue
            if entry is None:
                self.problem(f"log-format: {layout.ENTRIES} line {number} is not a log entry "
                             "{seq, at, kind, clip_id, body}")
                continue
            if problems:
                # Lines must be exactly JCS(entry) (FORMATS.md 10): then the line's bytes and
                # the canonical form give the same leaf, whichever a verifier hashes.
                self.problem(f"{problems[0]}: a log line must be exactly the entry's "
                             "canonical form", entry["clip_id"]
                             if isinstance(entry["clip_id"], str)
                             and layout.is_clip_id(entry["clip_id"]) else None)
            out.append((number, entry))
        return out

    def load_proofs(self) -> dict[int, dict[str, Any]]:
        doc, error = self.read_json(layout.PROOFS, LIMITS["log"])
        if error is not None or not isinstance(doc, dict):
            self.problem(f"log-missing: {layout.PROOFS}: {error or 'not a JSON object'}")
            return {}
        head = doc.get("checkpoint")
        if self.checkpoint is not None and (
                not isinstance(head, dict) or head.get("size") != self.checkpoint["size"]
                or head.get("root") != self.checkpoint["root"]):
            self.problem(f"log-inclusion: {layout.PROOFS} was made for checkpoint {head}, not "
                         f"the signed one (size {self.checkpoint['size']})")
        proofs: dict[int, dict[str, Any]] = {}
        items = doc.get("entries")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("seq"), int):
                proofs[item["seq"]] = item
        return proofs

    def check_earlier_checkpoints(self) -> None:
        try:
            raw = self.read(layout.CHECKPOINTS, LIMITS["log"])
        except Unreadable as exc:
            self.problem(f"checkpoint-missing: {layout.CHECKPOINTS}: {exc}")
            return
        if self.checkpoint is None:
            return
        new_size, new_root = self.checkpoint["size"], bytes.fromhex(self.checkpoint["root"])
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{layout.CHECKPOINTS} line {number}"
            item, error = parse_json(line, where, max_bytes=LIMITS["small"])
            if error is not None:
                self.problem(f"checkpoint-field: {error}")
                continue
            if not isinstance(item, dict):
                self.problem(f"checkpoint-field: {where} is not a JSON object")
                continue
            warnings: list[str] = []
            old, problems = open_checkpoint(item.get("envelope"),
                                            self.keys.for_checkpoint(item.get("envelope")),
                                            where, warnings)
            for w in warnings:
                self.report.warning(f"{self.source}: {w}")
            for p in problems:
                self.problem(p)
            if old is None:
                continue
            proof = _hex_list(item.get("consistency_proof"))
            if old["size"] > new_size or proof is None or not merkle.verify_consistency(
                    old["size"], new_size, bytes.fromhex(old["root"]), new_root, proof):
                self.problem(f"checkpoint-consistency: the checkpoint of size {old['size']} "
                             f"signed at {old.get('at')} is not a prefix of the newest "
                             f"(size {new_size}): the log was rewritten between them, or the "
                             "proof was altered")

    def check_clips(self) -> None:
        ids = {rel.split("/")[2] for rel in self.files if rel.startswith(layout.CLIPS_DIR + "/")}
        ids |= {rel.split("/")[2].removesuffix(layout.MANIFEST_SUFFIX) for rel in self.files
                if rel.startswith(layout.MANIFESTS_DIR + "/")}
        ids |= {e["clip_id"] for e in self.entries if e["clip_id"] is not None}
        for clip_id in sorted(ids):
            if not layout.is_clip_id(clip_id):
                self.problem(f"bag-format: unexpected name {clip_id!r} under data/ (not a "
                             "clip id)")
                continue
            self.check_clip(clip_id)

    def check_clip(self, clip_id: str) -> None:
        result = self.report.clip(clip_id, self.source)
        prefix = f"{layout.CLIPS_DIR}/{clip_id}/"
        files = sorted(rel for rel in self.files if rel.startswith(prefix))
        digest: Digest | None = None
        if not files:
            result.add(f"file-missing: no clip file under {prefix}")
        elif len(files) > 1:
            result.add(f"bag-format: {prefix} holds {len(files)} files, expected one")
        else:
            got = self.digests.get(files[0])
            digest = got if isinstance(got, tuple) else None
            result.name = result.name or files[0].rsplit("/", 1)[1]
        entries = [e for e in self.entries if e["clip_id"] == clip_id]
        history, state = history_problems(entries)
        result.state = state
        for p in history:
            result.add(p)
        if not entries:
            result.add(f"log-link: {layout.ENTRIES} has no entries for this clip")
        envelope, error = self.read_json(layout.manifest_path(clip_id), LIMITS["small"])
        if error is not None:
            result.add(f"manifest-missing: {layout.manifest_path(clip_id)}: {error}")
            return
        signer = self.keys.for_manifest(envelope, entries)
        warnings: list[str] = []
        payload, problems = open_envelope(envelope, signer, dsse.MANIFEST, "manifest",
                                          warnings)
        for w in warnings:
            self.report.warning(f"{clip_id}: {w}")
        for p in problems:
            result.add(p)
        if payload is None:
            return
        manifest, problems = parse_canonical(payload, "manifest-canonical", "manifest")
        more, warnings = manifest_problems(manifest, clip_id=clip_id, identity=signer,
                                           digest=digest)
        for p in problems + more:
            result.add(p)
        for w in warnings:
            self.report.warning(f"{clip_id}: {w}")
        file = manifest.get("file") if isinstance(manifest, dict) else None
        name = file.get("name") if isinstance(file, dict) else None
        if isinstance(name, str):
            result.name = name
            if files and files[0] != layout.clip_file_path(clip_id, name):
                self.report.warning(f"{clip_id}: clip file is {files[0]}, the exporter names "
                                    f"it {layout.clip_file_path(clip_id, name)}")
        for p in seal_link_problems(entries, sha256_hex(payload), manifest_digest(manifest)[0]):
            result.add(p)


_ENTRY_KEYS = ("seq", "at", "kind", "clip_id", "body")


def _entry(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or set(value) != set(_ENTRY_KEYS):
        return None
    seq, clip_id = value["seq"], value["clip_id"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not isinstance(value["at"], str) or not isinstance(value["kind"], str):
        return None
    if not (clip_id is None or isinstance(clip_id, str)) or not isinstance(value["body"], dict):
        return None
    return value


def _tag_limit(rel: str) -> int:
    if rel in (layout.ENTRIES, layout.PROOFS, layout.CHECKPOINTS):
        return LIMITS["log"]
    if rel.startswith("manifest-") or rel.startswith("tagmanifest-"):
        return LIMITS["tag-manifest"]
    return LIMITS["small"] if rel != layout.FORMATS else LIMITS["tag-manifest"]


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def _hex_list(value: Any) -> list[bytes] | None:
    if not isinstance(value, list):
        return None
    try:
        return [bytes.fromhex(item) for item in value]
    except (TypeError, ValueError):
        return None
