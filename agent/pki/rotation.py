"""``keys rotate``: a new station signing key, without breaking what the old one signed.

The rotation statement (DSSE payloadType
``application/vnd.bwc.key-rotation.v1+json``, JCS payload)::

    {"schema": "bwc.key-rotation/v1", "station_id": ..., "old_keyid": ...,
     "new_keyid": ..., "at": ..., "reason": ..., "log_size": N}

is signed by BOTH keys (old first) and logged as the custody log entry
``key.rotated`` (body ``{"statement": <envelope>}``) at seq ``N + 1``: the
old key vouches for its successor, the new key proves it is held, and the
log position says from where on the new key signs.  Entries up to ``N`` and
checkpoints of size up to ``N`` are the old key's; from ``N + 1`` on (the
rotation entry itself included) the new key's.

Order, each step durable before the next (daemon stopped: the data
directory's lock):

1. a checkpoint signed by the old key covers the whole log so far;
2. the new key gets its certificate: from the platform CA over EST
   (``simplereenroll``, authenticated by the TLS certificate) when
   ``pki.est_url`` is set, else a self-signed development certificate;
3. the new key, its certificate and the archived old key and certificate
   (``keys/archive/<old keyid>.key|.pem``, 0600 for the key) are staged
   (agent/pki/files.py), conditional on the rotation being logged;
4. one transaction: the ``key.rotated`` entry and its platform event (with
   the new certificate); this is the commit point;
5. the staged files are put in place;
6. a checkpoint signed by the new key covers the rotation entry.

A crash before 4 leaves the old key in force (the staged files are thrown
away at the next start); after 4, the next start finishes 5 (and the
checkpoint timer 6).  Sealed manifests and the vault are never rewritten;
old keys are never deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import Config
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey, make_dev_certificate
from agent.custody.sealer import Custody
from agent.errors import ConfigError
from agent.pki import files as pki_files
from agent.pki.enroll import certificate_facts, issue_for_new_key
from agent.pki.files import KeyFiles, data_dir_lock
from agent.pki.identity import ROTATION_KIND, check_own_identity, rotated_to
from agent.store import Store
from agent.timeutil import now
from agent.vault import Vault

__all__ = ["SCHEMA", "Rotation", "rotate_key", "rotation_statement"]

log = logging.getLogger(__name__)

SCHEMA = "bwc.key-rotation/v1"
MAX_REASON = 200


@dataclass(frozen=True)
class Rotation:
    old_keyid: str
    new_keyid: str
    seq: int
    certificate: x509.Certificate
    via: str  # "est" or "development"
    envelope: dict[str, Any]


def rotation_statement(station_id: str, old: StationKey, new: StationKey, *, at: str,
                       reason: str, log_size: int) -> dict[str, Any]:
    """The DSSE envelope of a rotation statement, signed by ``old`` then ``new``."""
    body = {"schema": SCHEMA, "station_id": station_id, "old_keyid": old.keyid,
            "new_keyid": new.keyid, "at": at, "reason": reason, "log_size": log_size}
    return dsse.sign_envelope(dsse.KEY_ROTATION, canonicalize(body), [old, new])


def _private_pem(key: StationKey) -> bytes:
    return key.private_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())


def _check_reason(reason: str) -> str:
    text = reason.strip()
    if not text or len(text) > MAX_REASON or not all(ch.isprintable() for ch in text):
        raise ConfigError(f"--reason: give 1 to {MAX_REASON} printable characters (why the key "
                          "is replaced: it is part of the signed statement)")
    return text


def rotate_key(config: Config, *, reason: str) -> Rotation:
    """Replace the station signing key (see the module docstring); returns what was done."""
    reason = _check_reason(reason)
    files = KeyFiles.of(config.data_dir)
    store_path = config.data_dir / "state.db"
    with data_dir_lock(config.data_dir):
        if not store_path.exists():
            raise ConfigError(f"no station database at {store_path}: this station has not "
                              "signed anything yet, so there is nothing to keep verifiable; "
                              "`bwc-agent keys init --force` makes a new key")
        store = Store(store_path, station_id=config.station.id)
        try:
            return _rotate(config, store, files, reason)
        finally:
            store.close()


def _rotate(config: Config, store: Store, files: KeyFiles, reason: str) -> Rotation:
    pki_files.recover(files, rotated_to(store))
    old = StationKey.load(files.station_key)
    check_own_identity(config, old)
    if config.pki.est_url is None and files.ca_bundle.exists():
        raise ConfigError(
            f"this station's certificate comes from the platform CA ({files.ca_bundle}), but "
            "pki.est_url is not set: the new key would get a self-signed certificate that "
            "chains to nothing. Set [pki] est_url (and est_ca_file) in the configuration, then "
            "rotate again")
    old_certs = files.station_cert.read_bytes()
    custody = Custody(config, store, Vault(config.data_dir / "vault"))
    custody.key = old
    custody.checkpoint()  # step 1: the old key signs everything it is responsible for

    new = StationKey.generate()
    changes: dict[str, bytes] = {}
    if config.pki.est_url is not None:
        issued, anchors = issue_for_new_key(config, new)
        cert, cert_pem, via = issued.cert, issued.pem(), "est"
        changes["ca.pem"] = b"".join(a.public_bytes(serialization.Encoding.PEM)
                                     for a in anchors)
    else:
        cert = make_dev_certificate(new, config.station.id)
        cert_pem, via = cert.public_bytes(serialization.Encoding.PEM), "development"
        log.warning("no pki.est_url: the new key %s gets a self-signed development "
                    "certificate", new.keyid)
    changes.update({"station.key": _private_pem(new), "station.pem": cert_pem,
                    f"archive/{old.keyid}.key": _private_pem(old),
                    f"archive/{old.keyid}.pem": old_certs})

    with store.transaction() as tx:
        row = tx.one("SELECT COALESCE(MAX(seq), 0) AS n FROM custody_log")
        size = int(row["n"]) if row is not None else 0
        envelope = rotation_statement(config.station.id, old, new, at=now(), reason=reason,
                                      log_size=size)
        pending = pki_files.stage(files, changes, rotation_to=new.keyid)
        entry = tx.log(ROTATION_KIND, None, {"statement": envelope})
        tx.event(ROTATION_KIND, {"statement": envelope, "certificate": cert_pem.decode("ascii"),
                                 "certificate_facts": certificate_facts(cert)})
    pending.apply()
    custody.key = new
    custody.checkpoint()
    log.warning("station key rotated: %s -> %s (log entry %d, certificate via %s)",
                old.keyid, new.keyid, entry.seq, via)
    return Rotation(old.keyid, new.keyid, entry.seq, cert, via, envelope)
