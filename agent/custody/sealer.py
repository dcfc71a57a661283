"""Sealing and checkpoints: the station's signature on each clip and on the log.

Sealing a clip is one transaction: the officer binding and the corrected
recording times are worked out (agent/officers/sealing.py), the signed
manifest is stored, the clip moves ``copied → sealed``, the custody log gets
a ``clip.sealed`` entry (with the manifest's digest), the platform event is
queued, and then the binding's alert and the case windows' tags follow.  A crash before the
commit leaves the clip ``copied``; start-up seals it again.  A crash after it
leaves it sealed; nothing is sealed twice (the transition is refused).

Checkpoints sign the log's Merkle root: after each burst of seals and every
``custody.checkpoint_interval_s`` seconds while the log grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.custody import dsse, merkle
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey, init_station_keys
from agent.custody.manifest import build_manifest
from agent.durable import remove_stale_temps
from agent.errors import AgentError, ConfigError, StoreError, StoreFullError
from agent.officers import sealing
from agent.officers.registry import Keys, load_keys
from agent.pki import files as pki_files
from agent.pki.files import KeyFiles
from agent.pki.identity import check_own_identity, rotated_to
from agent.store import ClipState, Store
from agent.timeutil import now
from agent.vault import Vault

log = logging.getLogger(__name__)
S = ClipState


def key_paths(config: Config) -> tuple[Any, Any]:
    keys = config.data_dir / "keys"
    return keys / "station.key", keys / "station.pem"


def identity_problem(key_path: Path, cert_path: Path, has_signed: bool) -> str | None:
    """Why the station identity cannot be completed at start, or None if it can.

    A missing key is made at the first start, like an SSH host key, but
    never once the station has signed: a new key cannot vouch for what the
    old one signed.  A missing certificate is made for the key, but never
    once clips are signed: a self-made one would silently replace the one the
    platform CA issued.  Used by the start-up and by the preflight check.
    """
    if not key_path.exists():
        if has_signed or cert_path.exists():
            return (f"station key {key_path} is missing, but this station has already signed "
                    f"(certificate {cert_path} exists or clips are sealed); restore the key "
                    "from the backup of the keys directory — a new key cannot vouch for "
                    "what the old one signed")
    elif not cert_path.exists() and has_signed:
        return (f"station certificate {cert_path} is missing, but this station has "
                "already signed clips; restore it from the backup of the keys directory "
                "(or have the platform CA issue a new one for the same key)")
    return None


class Custody:
    def __init__(self, config: Config, store: Store, vault: Vault) -> None:
        self.config = config
        self.store = store
        self.vault = vault
        self.key: StationKey | None = None
        self.credential_keys: Keys = {}
        self._seal_lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def start(self) -> None:
        key_path, cert_path = key_paths(self.config)
        remove_stale_temps(key_path.parent)
        # An enrolment, renewal or key rotation cut short by a crash: finish or undo it first.
        pki_files.recover(KeyFiles(key_path.parent), rotated_to(self.store))
        signed = self.store.query_one(
            "SELECT (SELECT COUNT(*) FROM checkpoints) + (SELECT COUNT(*) FROM clips "
            "WHERE manifest IS NOT NULL) AS n")
        has_signed = bool(signed is not None and signed["n"])
        problem = identity_problem(key_path, cert_path, has_signed)
        if problem is not None:
            raise ConfigError(problem)
        if not key_path.exists():
            # Like an SSH host key: a new station makes its identity on first start.
            log.warning("no station key yet: creating %s and a development certificate",
                        key_path)
            init_station_keys(self.config.data_dir, self.config.station.id)
        elif not cert_path.exists():
            init_station_keys(self.config.data_dir, self.config.station.id)  # cert for the key
        self.key = StationKey.load(key_path)
        # Key and certificate belong together, the certificate names station.id and its
        # chain holds: otherwise nothing sealed from now on could be verified.
        check_own_identity(self.config, self.key)
        self.credential_keys = load_keys(self.config.custody.credential_key_file)
        self._timer = threading.Thread(target=self._run_timer, name="checkpoint", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=10)
        try:
            self.checkpoint()
        except StoreError:
            log.exception("final checkpoint failed")

    @property
    def key_id(self) -> str:
        assert self.key is not None
        return self.key.keyid

    # --- sealing -------------------------------------------------------------------------

    def seal(self, clip_id: str) -> dict[str, Any] | None:
        """Seal a copied clip; returns its DSSE envelope (None if it is not ``copied``)."""
        assert self.key is not None
        with self._seal_lock, self.store.transaction() as tx:
            clip = tx.clip(clip_id)
            if clip["state"] != S.COPIED.value:
                return None
            facts = sealing.prepare(tx, clip, keys=self.credential_keys,
                                    tolerance_s=self.config.officers.time_tolerance_s)
            manifest = build_manifest(clip, station_id=self.config.station.id,
                                      key_id=self.key.keyid, officer=facts.officer,
                                      recorded=facts.recorded, flags=facts.flags)
            payload = canonicalize(manifest)
            envelope = dsse.sign_envelope(dsse.MANIFEST, payload, [self.key])
            manifest_sha = hashlib.sha256(payload).hexdigest()
            tx.transition(clip_id, S.SEALED, manifest=json.dumps(envelope), sealed_at=now(),
                          log_body={"sha256": clip["sha256"], "manifest_sha256": manifest_sha},
                          **facts.columns())
            tx.event("clip.sealed", {"clip_id": clip_id, "sha256": clip["sha256"],
                                     "size": clip["size"], "important": bool(clip["important"]),
                                     "manifest": envelope})
            sealing.after_seal(tx, clip, facts)
        return envelope

    def seal_pending(self) -> int:
        """Seal every clip left ``copied`` (after a crash or between sessions)."""
        rows = self.store.clips(S.COPIED.value)
        failed = 0
        for row in rows:
            try:
                self.seal(row["clip_id"])
            except AgentError:
                failed += 1  # one clip's failure does not hold back the others
                log.exception("sealing clip %s failed; tried again later", row["clip_id"])
        if rows:
            self.checkpoint()
        return len(rows) - failed

    # --- checkpoints ---------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the current log root, if the log grew since the last checkpoint."""
        assert self.key is not None
        with self._seal_lock, self.store.transaction() as tx:
            # Read and write in one transaction: another process (an export) may sign too.
            row = tx.one("SELECT COALESCE(MAX(seq), 0) AS n FROM custody_log")
            size = int(row["n"]) if row else 0
            last = tx.one("SELECT MAX(size) AS n FROM checkpoints")
            if size == 0 or (last is not None and last["n"] is not None and last["n"] >= size):
                return None
            leaves = [bytes(r["leaf"]) for r in tx.execute(
                "SELECT leaf FROM custody_log WHERE seq <= ? ORDER BY seq", (size,))]
            body = {"station_id": self.config.station.id, "size": size,
                    "root": merkle.root(leaves).hex(), "at": now()}
            envelope = dsse.sign_envelope(dsse.CHECKPOINT, canonicalize(body), [self.key])
            tx.execute("INSERT INTO checkpoints (size, root, at, envelope) VALUES (?,?,?,?)",
                       (size, body["root"], body["at"], json.dumps(envelope)))
            tx.event("log.checkpoint", {"checkpoint": envelope, **body})
        return envelope

    def _run_timer(self) -> None:
        interval = self.config.custody.checkpoint_interval_s
        while not self._stop.wait(interval):
            try:
                # A clip whose sealing failed in its dock session (a busy store) is still
                # copied: seal it here, or it would wait for the next restart.
                self.seal_pending()
                self.checkpoint()
            except StoreFullError as exc:  # alerted by the dock that met it; no traceback
                log.error("sealing or checkpoint failed (tried again next interval): %s", exc)
            except Exception:
                log.exception("sealing or checkpoint failed")  # tried again next interval
