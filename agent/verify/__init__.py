"""Offline verification of clips, manifests, export bundles and station data directories.

``verify_paths`` takes what an auditor has and returns a :class:`Report` of
every finding (never only the first).  A target is one of:

- an export bundle (a directory with ``bagit.txt``, ``data/`` or ``custody/``);
- a station data directory (a directory with ``state.db``);
- a clip file followed by its manifest (``*.json``), checked against ``cert``.

Trust: signatures are checked against the station certificate in the target
(or ``cert``); with ``trust`` the certificate must chain to one of those CA
certificates, without it the report warns that it is not anchored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from agent.errors import ConfigError
from agent.verify.bundle import verify_bundle
from agent.verify.datadir import verify_data_dir
from agent.verify.files import LIMITS, Unreadable, read_file
from agent.verify.pair import verify_clip_file
from agent.verify.report import ClipResult, Report

__all__ = ["ClipResult", "Report", "load_trust", "verify_paths"]


def load_trust(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every PEM certificate in ``path`` (the platform CA bundle); ConfigError if none."""
    target = Path(path)
    try:
        data = read_file(target, LIMITS["small"], follow=True)
    except Unreadable as exc:
        raise ConfigError(f"--trust: {exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"--trust: {target} holds no PEM certificate: {exc}") from None
    return certs


def _is_bundle(path: Path) -> bool:
    return any((path / name).exists() for name in ("bagit.txt", "data", "custody"))


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.name.endswith(".json")


def verify_paths(paths: Sequence[str | os.PathLike[str]], *,
                 cert: str | os.PathLike[str] | None = None,
                 trust: str | os.PathLike[str] | None = None,
                 officer_key: str | os.PathLike[str] | None = None) -> Report:
    """Verify every target named by ``paths``; ConfigError if one cannot be understood."""
    if not paths:
        raise ConfigError("give at least one bundle, data directory, or clip and manifest")
    anchors = load_trust(trust) if trust is not None else None
    plan: list[tuple[str, tuple[Path, ...]]] = []
    items = [Path(p) for p in paths]
    i = 0
    while i < len(items):
        path = items[i]
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        if path.is_dir():
            if (path / "state.db").exists():
                plan.append(("data_dir", (path,)))
            elif _is_bundle(path):
                plan.append(("bundle", (path,)))
            else:
                raise ConfigError(f"{path}: neither an export bundle (no bagit.txt) nor a "
                                  "station data directory (no state.db)")
            i += 1
            continue
        if _is_manifest(path):
            raise ConfigError(f"{path}: a manifest must follow its clip file "
                              "(verify CLIP MANIFEST --cert station.pem)")
        manifest = items[i + 1] if i + 1 < len(items) else None
        if manifest is None or not _is_manifest(manifest):
            raise ConfigError(f"{path}: a clip file must be followed by its manifest "
                              "(verify CLIP MANIFEST.dsse.json --cert station.pem)")
        if cert is None:
            raise ConfigError(f"{path}: verifying a clip and its manifest needs the station "
                              "certificate: --cert station.pem")
        plan.append(("clip", (path, manifest, Path(cert))))
        i += 2
    # An option that no target uses would be silently ignored, and the auditor would believe
    # the check it names was made: refuse it instead.
    kinds = {kind for kind, _ in plan}
    if officer_key is not None and "bundle" not in kinds:
        raise ConfigError("--officer-key checks the officer credentials of an export bundle, "
                          "and no target is a bundle")
    if cert is not None and "clip" not in kinds:
        raise ConfigError("--cert is the station certificate of a clip and its manifest, "
                          "and no target is a clip (bundles and data directories carry "
                          "their own)")
    report = Report()
    for kind, args in plan:
        if kind == "data_dir":
            verify_data_dir(args[0], report, anchors)
        elif kind == "bundle":
            verify_bundle(args[0], report, anchors,
                          Path(officer_key) if officer_key is not None else None)
        else:
            verify_clip_file(args[0], args[1], args[2], report, anchors)
    return report
