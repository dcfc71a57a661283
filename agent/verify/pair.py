"""Verify one clip file against its signed manifest and the station certificate.

This proves the bytes are the ones the station sealed and who sealed them;
it cannot prove the clip's custody history (that needs the log: verify the
export bundle or the station's data directory for that).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.custody import dsse
from agent.timeutil import parse_rfc3339
from agent.verify.checks import (
    apply_trust,
    check_certificate,
    hash_all,
    load_identity,
    load_json_file,
    manifest_problems,
    open_envelope,
    parse_canonical,
    trust_status,
)
from agent.verify.files import hash_file
from agent.verify.layout import safe_name
from agent.verify.report import Report


def verify_clip_file(clip: Path, manifest_path: Path, cert: Path, report: Report,
                     trust: Sequence[x509.Certificate] | None = None) -> None:
    source = f"{clip} + {manifest_path}"
    report.targets.append({"path": source, "kind": "clip"})
    # Files the user named: a link they give is followed (a FIFO or device is not read).
    identity = load_identity(cert, report, source, follow=True)
    envelope, error = load_json_file(manifest_path, follow=True)
    warnings: list[str] = []
    payload, problems = (None, [f"manifest-missing: {error}"]) if error is not None else \
        open_envelope(envelope, identity, dsse.MANIFEST, "manifest", warnings)
    manifest = None
    if payload is not None:
        manifest, more = parse_canonical(payload, "manifest-canonical", "manifest")
        problems += more
    info: dict[str, Any] = manifest if isinstance(manifest, dict) else {}
    clip_id = info.get("clip_id") if isinstance(info.get("clip_id"), str) else clip.name
    file_info: dict[str, Any] = info["file"] if isinstance(info.get("file"), dict) else {}
    name = file_info.get("name") if isinstance(file_info.get("name"), str) else clip.name
    result = report.clip(str(clip_id), source, str(name))
    for p in problems:
        result.add(p)
    for w in warnings:
        report.warning(f"{source}: {w}")
    got = hash_all([clip], lambda path: hash_file(path, follow=True), report)[clip]
    if isinstance(got, str):
        result.add(f"file-missing: {got}")
    if manifest is not None:
        more, warnings = manifest_problems(manifest, clip_id=None, identity=identity,
                                           digest=got if isinstance(got, tuple) else None)
        for p in more:
            result.add(p)
        for w in warnings:
            report.warning(f"{clip_id}: {w}")
        if clip.name not in (name, safe_name(str(name))):
            report.warning(f"{clip_id}: the file is named {clip.name!r}, the manifest names "
                           f"it {name!r}")
    cert_problems: list[str] = []
    if identity is not None:
        cert_problems = check_certificate(identity, report, source, trust, _sealed_time(info))
    apply_trust(report, source, trust_status(identity, cert_problems, trust))
    report.warning(f"{source}: custody log not checked (a clip and its manifest carry no log "
                   "proof; verify the export bundle or the station data directory for that)")


def _sealed_time(manifest: dict[str, object]) -> dt.datetime | None:
    """When the clip was sealed, near enough: its copy time (the manifest has no other)."""
    ingest = manifest.get("ingest")
    copied = ingest.get("copied_at") if isinstance(ingest, dict) else None
    try:
        return parse_rfc3339(copied) if isinstance(copied, str) else None
    except ValueError:
        return None
