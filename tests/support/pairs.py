"""What ``bwc-agent verify CLIP MANIFEST --cert CERT`` takes: an auditor's copy of one clip,
its signed manifest and the station certificate, taken from a station that exported it
(tests/support/stations.exported_station)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.verify.pair import verify_clip_file
from agent.verify.report import ClipResult, Report


class Pair:
    """One clip file, its manifest and the station certificate, in a directory of its own."""

    def __init__(self, station: Path, into: Path) -> None:
        bundle = station / "bundle"
        (self.clip_id,) = (p.name for p in (bundle / "data" / "clips").iterdir())
        (original,) = (bundle / "data" / "clips" / self.clip_id).iterdir()
        into.mkdir()
        self.clip = into / original.name
        self.manifest = into / f"{self.clip_id}.dsse.json"
        self.cert = into / "station.pem"
        shutil.copyfile(original, self.clip)
        shutil.copyfile(bundle / "data" / "manifests" / f"{self.clip_id}.dsse.json",
                        self.manifest)
        shutil.copyfile(bundle / "certs" / "station.pem", self.cert)
        self.key = StationKey.load(station / "data" / "keys" / "station.key")

    @property
    def source(self) -> str:
        return f"{self.clip} + {self.manifest}"

    def envelope(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.manifest.read_text(encoding="utf-8"))
        return value

    def payload(self) -> bytes:
        return base64.b64decode(self.envelope()["payload"])

    def signed(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.payload())
        return value

    def write(self, payload_type: str, payload: bytes, keys: list[StationKey]) -> None:
        self.manifest.write_text(json.dumps(dsse.sign_envelope(payload_type, payload, keys)),
                                 encoding="utf-8")

    def resign(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The manifest changed by ``change`` and signed again with the station's own key."""
        manifest = self.signed()
        change(manifest)
        self.write(dsse.MANIFEST, canonicalize(manifest), [self.key])
        return manifest

    def verify(self, *, clip: Path | None = None, manifest: Path | None = None,
               cert: Path | None = None,
               trust: list[x509.Certificate] | None = None) -> tuple[Report, ClipResult]:
        report = Report()
        verify_clip_file(clip or self.clip, manifest or self.manifest, cert or self.cert,
                         report, trust)
        (result,) = report.clips
        return report, result

    def unanchored_warning(self, source: str | None = None) -> str:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return (f"{source or self.source}: station certificate "
                f"{cert.subject.rfc4514_string()} is self-signed / not anchored (no --trust "
                f"given); its SHA-256 fingerprint is {cert.fingerprint(hashes.SHA256()).hex()}: "
                "compare it with the platform's record of the station")
