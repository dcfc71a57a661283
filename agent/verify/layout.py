"""The export bundle layout (bwc.bundle/v1), shared by the exporter and the verifier.

A bundle is a BagIt 1.0 bag (RFC 8493)::

    bagit.txt  bag-info.txt  manifest-sha256.txt  tagmanifest-sha256.txt  README.txt
    FORMATS.md                            the format specification (docs/FORMATS.md)
    data/clips/<clip_id>/<safe name>      the clip's bytes, exactly as in the vault
    data/manifests/<clip_id>.dsse.json    the clip's signed manifest (DSSE envelope)
    custody/entries.jsonl                 the clips' custody log entries, one JCS line each
    custody/proofs.json                   each entry's inclusion proof to the checkpoint
    custody/checkpoint.dsse.json          the signed checkpoint the proofs lead to
    custody/checkpoints.jsonl             earlier checkpoints, with consistency proofs
    certs/station.pem                     the station certificate (+ its intermediate CAs)
    certs/ca.pem                          the platform CA certificates (enrolled stations)
    certs/keys/<keyid>.pem                certificates of keys the station rotated away from

Invariant: a file name in a bundle never comes from a device as is; ``safe_name``
turns a device's name into one that is a single, visible, shell-friendly path
component.  The signed manifest keeps the true name.
"""

from __future__ import annotations

import importlib.resources
import re

BUNDLE_FORMAT = "bwc.bundle/v1"

BAGIT_TXT = "bagit.txt"
BAG_INFO = "bag-info.txt"
PAYLOAD_MANIFEST = "manifest-sha256.txt"
TAG_MANIFEST = "tagmanifest-sha256.txt"
README = "README.txt"
FORMATS = "FORMATS.md"
CLIPS_DIR = "data/clips"
MANIFESTS_DIR = "data/manifests"
MANIFEST_SUFFIX = ".dsse.json"
ENTRIES = "custody/entries.jsonl"
PROOFS = "custody/proofs.json"
CHECKPOINT = "custody/checkpoint.dsse.json"
CHECKPOINTS = "custody/checkpoints.jsonl"
CERTS_DIR = "certs"
STATION_CERT = "certs/station.pem"

BAGIT_TXT_CONTENT = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"

_CLIP_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KEYID = re.compile(r"[0-9a-f]{64}")
_SAFE_PUNCT = frozenset("._-+=@,#~")
_MAX_NAME_BYTES = 200


def formats_text() -> bytes:
    """docs/FORMATS.md as shipped with this bwc-agent (package data of agent.verify)."""
    return importlib.resources.files("agent.verify").joinpath(FORMATS).read_bytes()


def is_keyid(text: str) -> bool:
    """A station keyid: 64 lowercase hex digits (certs/keys/<keyid>.pem)."""
    return _KEYID.fullmatch(text) is not None


def is_clip_id(text: str) -> bool:
    """A clip ID as the station gives them: a lowercase hyphenated UUID."""
    return _CLIP_ID.fullmatch(text) is not None


def safe_name(name: str) -> str:
    """A device's file name made into one safe path component.

    Letters and digits of any script are kept, as are ``. _ - + = @ , # ~``;
    everything else (``/``, ``\\``, control and format characters, spaces,
    quotes, ``%``, shell metacharacters) becomes ``_``.  A leading dot becomes
    ``_`` (no hidden files, no ``..``), and the result is cut to 200 UTF-8
    bytes keeping the extension.  Safe names need no quoting in a shell and
    no escaping in a BagIt or ``sha256sum`` manifest.
    """
    chars = [ch if ch.isalnum() or ch in _SAFE_PUNCT else "_" for ch in name]
    text = "".join(chars)
    if text.startswith("."):
        text = "_" + text[1:]
    if not text:
        text = "clip"
    if len(text.encode("utf-8")) > _MAX_NAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        suffix = (dot + ext) if dot and 0 < len(ext.encode("utf-8")) <= 16 else ""
        stem = text[: len(text) - len(suffix)]
        budget = _MAX_NAME_BYTES - len(suffix.encode("utf-8"))
        while len(stem.encode("utf-8")) > budget:
            stem = stem[:-1]
        text = stem + suffix
    return text


def clip_file_path(clip_id: str, name: str) -> str:
    return f"{CLIPS_DIR}/{clip_id}/{safe_name(name)}"


def manifest_path(clip_id: str) -> str:
    return f"{MANIFESTS_DIR}/{clip_id}{MANIFEST_SUFFIX}"
