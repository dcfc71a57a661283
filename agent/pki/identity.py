"""Identity guards: the station ID, its certificate, and what the station has already signed.

A station's identity is the pair (station ID, signing key) bound by its
certificate.  Every sealed manifest and checkpoint names both, so:

- the agent refuses to start when ``station.id`` differs from the common name
  of its certificate (``keys/station.pem``) or of its TLS client certificate:
  everything sealed from then on could never be verified, and the broker
  would refuse its events (it takes the TLS certificate's CN as the user);
- a station that has signed (a sealed manifest, a checkpoint, a rotation) is
  never given a new key by ``keys init --force``: ``keys rotate`` replaces a
  key with a statement signed by both keys, so the past stays verifiable;
- the agent's own certificate chain is checked when it is loaded: a chain
  that does not hold (an issuer that is no CA, a path too long, a key usage
  that forbids signing, an issuer missing from ``ca.pem``) stops the start;
  an expired certificate does not (clips keep being offloaded and sealed;
  status and alerts say it, renewal fixes it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import Config
from agent.custody import dsse
from agent.custody.keys import StationKey, certificate_station_id, check_key_matches_certificate
from agent.errors import ConfigError
from agent.pki.chain import ChainResult, validate_chain
from agent.pki.files import KeyFiles, open_regular
from agent.store import Store

__all__ = [
    "ROTATION_KIND",
    "OwnCertificate",
    "check_may_replace_key",
    "check_own_identity",
    "identity_certificates",
    "load_anchors",
    "load_pem_chain",
    "open_history",
    "rotated_to",
    "signed_history",
    "station_id_problem",
]

log = logging.getLogger(__name__)

ROTATION_KIND = "key.rotated"
# Problems with the chain that stop the start; expiry does not (see the module docstring).
_FATAL = frozenset({"no-path", "not-ca", "pathlen", "usage"})
_MAX_PEM = 256 * 1024


def load_pem_chain(path: Path, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file (leaf first); ConfigError if none or unreadable."""
    try:
        with open_regular(path) as handle:
            data = handle.read(_MAX_PEM + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_PEM:
        raise ConfigError(f"{what} {path} is larger than {_MAX_PEM} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what} {path} holds no PEM certificate: {exc}") from None
    return certs


def station_id_problem(config: Config, cert: x509.Certificate, path: Path) -> str | None:
    """Why ``cert`` (at ``path``) does not belong to ``station.id``, or None."""
    cn = certificate_station_id(cert)
    if cn == config.station.id:
        return None
    where = f" in {config.source}" if config.source else ""
    return (f"station.id is {config.station.id!r}{where}, but the certificate {path} is for "
            f"{cn!r}: a station keeps its ID for life, since every clip it sealed names it. "
            f"Set station.id back to {cn!r}; a station that must have another ID is a new "
            "station (a new data directory, enrolled under that ID)")


def signed_history(store: Store) -> int:
    """How many things this station signed: sealed manifests, checkpoints, key rotations."""
    row = store.query_one(
        "SELECT (SELECT COUNT(*) FROM checkpoints) + (SELECT COUNT(*) FROM clips WHERE "
        "manifest IS NOT NULL) + (SELECT COUNT(*) FROM custody_log WHERE kind = ?) AS n",
        (ROTATION_KIND,))
    return int(row["n"]) if row is not None else 0


def check_may_replace_key(config: Config) -> None:
    """ConfigError unless the station has signed nothing (``keys init --force``)."""
    store = open_history(config.data_dir)
    if store is None:
        return
    try:
        signed = signed_history(store)
    finally:
        store.close()
    if signed:
        where = config.source or "<file>"
        raise ConfigError(
            f"station {config.station.id} has signed {signed} manifest(s), checkpoint(s) or "
            "key rotation(s) with its key: a new key from `keys init --force` would leave "
            f"every one of them unverifiable. Use `bwc-agent keys rotate --config {where} "
            "--reason <why>`: it makes the new key, signs a rotation statement with both "
            "keys and keeps the old one, so the past stays verifiable")


def rotated_to(store: Store) -> Callable[[str], bool]:
    """``f(keyid)``: does the custody log hold a rotation to ``keyid``?"""

    def check(keyid: str) -> bool:
        for row in store.query("SELECT body FROM custody_log WHERE kind = ?", (ROTATION_KIND,)):
            try:
                envelope = json.loads(row["body"])["statement"]
                payload = json.loads(dsse.b64decode(envelope["payload"]))
            except (KeyError, TypeError, ValueError):
                continue
            if payload.get("new_keyid") == keyid:
                return True
        return False

    return check


@dataclass
class OwnCertificate:
    """The result of checking the station's certificates at start."""

    cert: x509.Certificate
    chain: list[x509.Certificate]
    anchors: list[x509.Certificate] | None
    result: ChainResult | None
    warnings: list[str] = field(default_factory=list)


def load_anchors(files: KeyFiles) -> list[x509.Certificate] | None:
    """The platform CA certificates stored by enrolment (``keys/ca.pem``), if any."""
    if not files.ca_bundle.exists():
        return None
    return load_pem_chain(files.ca_bundle, "CA bundle")


def check_own_identity(config: Config, key: StationKey,
                       at: dt.datetime | None = None) -> OwnCertificate:
    """The guards of the module docstring for a loaded key; ConfigError naming what is wrong."""
    when = at or dt.datetime.now(dt.UTC)
    files = KeyFiles.of(config.data_dir)
    certs = load_pem_chain(files.station_cert, "station certificate")
    cert, chain = certs[0], certs[1:]
    check_key_matches_certificate(key, cert)
    problem = station_id_problem(config, cert, files.station_cert)
    if problem is not None:
        raise ConfigError(problem)
    tls = config.platform.cert_file if config.platform is not None else None
    if tls is not None and tls.exists():
        tls_problem = station_id_problem(config, load_pem_chain(tls, "TLS certificate")[0], tls)
        if tls_problem is not None:
            raise ConfigError(f"platform.cert_file: {tls_problem}")
    # A self-signed development certificate anchors itself (keys init, or a rotation on
    # a station without EST); verify --trust tells auditors it is not the platform's.
    anchors = [cert] if cert.issuer == cert.subject else load_anchors(files)
    own = OwnCertificate(cert=cert, chain=chain, anchors=anchors, result=None)
    if anchors is None:
        own.warnings.append(f"the station certificate {files.station_cert} is issued by "
                            f"{cert.issuer.rfc4514_string()}, and {files.ca_bundle} is "
                            "missing: its chain cannot be checked here")
    else:
        own.result = validate_chain(cert, chain, anchors, when, what="station certificate")
        fatal = [p.text for p in own.result.problems if p.code in _FATAL]
        if fatal:
            source = files.ca_bundle if files.ca_bundle.exists() else "itself"
            raise ConfigError(f"the station certificate {files.station_cert} does not hold "
                              f"as a certificate chain to {source}; enrol again "
                              "(bwc-agent enroll)", fatal)
        own.warnings.extend(p.text for p in own.result.problems)
    for text in own.warnings:
        log.warning("%s", text)
    return own


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def identity_certificates(config: Config) -> dict[str, Any]:
    """The certificates the identity message carries (PROTOCOL.md): the station's, its
    intermediate CAs, and those of the keys it rotated away from, by keyid."""
    files = KeyFiles.of(config.data_dir)
    certs = load_pem_chain(files.station_cert, "station certificate")
    previous = []
    if files.archive.is_dir():
        for path in sorted(files.archive.glob("*.pem")):
            old = load_pem_chain(path, "archived station certificate")
            previous.append({"keyid": path.stem, "certificate": _pem(old[0]),
                             "chain": [_pem(c) for c in old[1:]]})
    return {"certificate": _pem(certs[0]), "chain": [_pem(c) for c in certs[1:]],
            "previous": previous}


def open_history(data_dir: Path) -> Store | None:
    """The station's store read-only, or None if the agent never ran here."""
    path = Path(data_dir) / "state.db"
    if not path.exists():
        return None
    return Store(path, station_id="", readonly=True)
