"""The station identity's life: enrolment and renewal, with their guards and custody records.

``enroll_station`` is what ``bwc-agent enroll`` runs: with the daemon stopped
(the data directory's lock), after finishing or discarding any interrupted
change of the identity files, and refusing what would break the past:

- a station that has signed keeps its key and its station ID: enrolment
  never makes a new key for it (a missing key is restored from backup), and
  a ``station.id`` that differs from its certificate's is refused (the guard
  of agent/pki/identity.py);

then agent/pki/enroll.py does the EST exchange and stores every file at
once.  A station whose store exists records ``station.enrolled`` in the
custody log (and the platform event); renewals record
``station.cert_renewed``.  Bodies carry the certificates' facts (subject,
issuer, serial, SHA-256, validity), never a secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from agent.config import Config
from agent.errors import ConfigError
from agent.pki import files as pki_files
from agent.pki.enroll import Enrolment, Renewal, certificate_facts, enroll, renew
from agent.pki.est import Token
from agent.pki.files import KeyFiles, data_dir_lock
from agent.pki.identity import (
    load_pem_chain,
    rotated_to,
    signed_history,
    station_id_problem,
)
from agent.store import Store

__all__ = ["EnrolResult", "enroll_station", "record", "renew_station"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrolResult:
    enrolment: Enrolment
    recorded: bool


def record(store: Store, kind: str, body: dict[str, Any]) -> None:
    """One custody log entry and its platform event, in one transaction."""
    with store.transaction() as tx:
        tx.log(kind, None, body)
        tx.event(kind, body)


def _facts(station: x509.Certificate, tls: x509.Certificate, via: str) -> dict[str, Any]:
    return {"via": via, "station_certificate": certificate_facts(station),
            "tls_certificate": certificate_facts(tls)}


def enroll_station(config: Config, token: Token, *, est_url: str | None = None) -> EnrolResult:
    """``bwc-agent enroll``: guards, EST enrolment, files, custody record."""
    files = KeyFiles.of(config.data_dir)
    with data_dir_lock(config.data_dir):
        store_path = config.data_dir / "state.db"
        store = Store(store_path, station_id=config.station.id) if store_path.exists() else None
        try:
            pki_files.recover(files, rotated_to(store) if store is not None else None)
            signed = signed_history(store) if store is not None else 0
            if signed and not files.station_key.exists():
                raise ConfigError(
                    f"station key {files.station_key} is missing, but this station has signed "
                    f"{signed} manifest(s), checkpoint(s) or rotation(s); restore the key from "
                    "the backup of the keys directory before enrolling: a new key cannot "
                    "vouch for what the old one signed")
            if files.station_cert.exists() and files.station_key.exists():
                current = load_pem_chain(files.station_cert, "station certificate")[0]
                problem = station_id_problem(config, current, files.station_cert)
                if problem is not None and (signed or current.issuer != current.subject):
                    raise ConfigError(problem)
            enrolment = enroll(config, token, est_url=est_url)
            if store is not None:
                record(store, "station.enrolled",
                       _facts(enrolment.station.cert, enrolment.tls.cert, "est"))
            return EnrolResult(enrolment, store is not None)
        finally:
            if store is not None:
                store.close()


def renew_station(config: Config, store: Store) -> Renewal:
    """The daemon's renewal (it holds the data directory): EST, files, custody record."""
    renewal = renew(config)
    record(store, "station.cert_renewed",
           _facts(renewal.station.cert, renewal.tls.cert, "est"))
    return renewal
