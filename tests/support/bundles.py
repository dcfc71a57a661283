"""A test's own copy of a real station's export bundle, and what a forger holding the
station's key can make of it: a manifest or a checkpoint changed and signed again.

``station`` is a directory tests/support/stations.exported_station filled: its
``bundle`` and the station's data directory (``data/keys/station.key``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey


def copy_bundle(station: Path, into: Path) -> Path:
    """A copy of the station's bundle under ``into``, for one test to change."""
    copy = into / "bundle"
    shutil.copytree(station / "bundle", copy)
    return copy


def clip_ids(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / "data" / "clips").iterdir())


def station_key(station: Path) -> StationKey:
    return StationKey.load(station / "data" / "keys" / "station.key")


def signed_payload(path: Path) -> dict[str, Any]:
    """The JSON payload of the DSSE envelope in ``path`` (a manifest, a checkpoint)."""
    value: dict[str, Any] = json.loads(base64.b64decode(
        json.loads(path.read_text(encoding="utf-8"))["payload"]))
    return value


def sign_manifest(bundle: Path, station: Path, clip_id: str, payload: bytes) -> None:
    """``payload`` as ``clip_id``'s manifest, signed with the station's own key."""
    path = bundle / "data" / "manifests" / f"{clip_id}.dsse.json"
    path.write_text(json.dumps(dsse.sign_envelope(dsse.MANIFEST, payload,
                                                  [station_key(station)])), encoding="utf-8")


def resign_manifest(bundle: Path, station: Path, clip_id: str,
                    change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``clip_id``'s manifest changed by ``change``, in canonical form, signed again with the
    station's own key; returns the manifest as signed."""
    manifest = signed_payload(bundle / "data" / "manifests" / f"{clip_id}.dsse.json")
    change(manifest)
    sign_manifest(bundle, station, clip_id, canonicalize(manifest))
    return manifest


def sign_checkpoint(bundle: Path, station: Path, payload: bytes) -> None:
    """``payload`` as the bundle's checkpoint (custody/checkpoint.dsse.json), signed with the
    station's own key."""
    (bundle / "custody" / "checkpoint.dsse.json").write_text(json.dumps(dsse.sign_envelope(
        dsse.CHECKPOINT, payload, [station_key(station)])), encoding="utf-8")


def relist(bundle: Path, rel: str) -> None:
    """Record ``rel``'s SHA-256 in the tag manifest (as a careful forger would)."""
    tags = bundle / "tagmanifest-sha256.txt"
    sha = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    lines = [line for line in tags.read_text(encoding="utf-8").splitlines()
             if not line.endswith(f"  {rel}")]
    tags.write_text("\n".join(sorted([*lines, f"{sha}  {rel}"], key=lambda x: x[66:])) + "\n",
                    encoding="utf-8")
