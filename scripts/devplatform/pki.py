"""The development platform's PKI: its CA, server and client certificates, its signing key.

One directory holds everything (made by ``make_dev_pki``, idempotently: what
exists and is still valid is kept, so a demo can be restarted without
re-enrolling its stations):

- ``ca.pem`` / ``ca.key`` — the development CA (agent.devpki.DevCA); stations
  trust it for TLS (``platform.ca_file``) and the platform trusts it for
  station signing certificates;
- ``server.pem`` / ``server.key`` — TLS server certificate for the broker
  and the tus server (CN localhost, SANs localhost, 127.0.0.1, ::1);
- ``platform-mqtt.pem`` / ``.key`` — the platform's MQTT client certificate
  (CN ``platform``: the broker ACL's platform user);
- ``platform.key`` (0600) / ``platform.pub`` — the platform's Ed25519 signing
  key for acks and commands; ``platform.pub`` (PEM SubjectPublicKeyInfo) is
  what a station names in ``platform.platform_key_file``;
- ``station-<id>-tls.pem`` / ``.key`` — station TLS client certificates.

Station IDs become file names here, so they are checked against a strict
pattern first (they are operator input, never device input).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.custody.keys import StationKey, issue_station_certificate
from agent.devpki import DevCA, Issued, cert_pem
from agent.durable import write_atomic
from agent.errors import ConfigError

log = logging.getLogger(__name__)

PLATFORM_CN = "platform"
STATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RENEW_BEFORE = dt.timedelta(days=1)

# The station policy of PROTOCOL.md section 3 (tests/support/mosquitto.py and
# config/mosquitto.conf carry the same): %u is the certificate CN.
BROKER_ACL = """\
# Stations (%u = certificate CN = station ID): write their own status, identity,
# events and command replies; read their own commands, acknowledgements, officer
# roster and case windows.
pattern write bwc/v1/stations/%u/status
pattern write bwc/v1/stations/%u/identity
pattern write bwc/v1/stations/%u/events
pattern write bwc/v1/stations/%u/reply/#
pattern read bwc/v1/stations/%u/cmd/+
pattern read bwc/v1/stations/%u/ack
pattern read bwc/v1/stations/%u/roster
pattern read bwc/v1/stations/%u/roster/update
pattern read bwc/v1/stations/%u/case-window

# The platform (certificate CN "platform"): everything below bwc/v1/.
user platform
topic readwrite bwc/v1/#
"""


def check_station_id(station_id: str) -> str:
    """``station_id`` if it is safe as a file name and an MQTT topic level, else ConfigError."""
    if not STATION_ID.fullmatch(station_id):
        raise ConfigError(
            f"station ID {station_id!r} is not 1-64 characters of letters, digits, '.', '_' "
            "or '-' starting with a letter or digit")
    return station_id


class DevPki:
    """The files of a development platform PKI in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.ca = DevCA(self.dir)
        self.ca_cert_path = self.ca.cert_path
        self.server = self._leaf("localhost", "server", server=True, client=False)
        self.platform_client = self._leaf(PLATFORM_CN, "platform-mqtt", server=False,
                                          client=True)
        self.platform_key_path = self.dir / "platform.key"
        self.platform_pub_path = self.dir / "platform.pub"
        self._signer = self._platform_key()
        self.platform_keyid = self._signer.keyid

    def signer(self) -> StationKey:
        """The platform's Ed25519 signing key (a dsse.Signer; StationKey is a generic one)."""
        return self._signer

    def station_tls(self, station_id: str) -> Issued:
        """A TLS client certificate with CN = ``station_id`` (kept if it exists and is valid)."""
        check_station_id(station_id)
        return self._leaf(station_id, f"station-{station_id}-tls", server=False, client=True)

    def enroll_station(self, data_dir: str | os.PathLike[str], station_id: str) -> Path:
        """Re-issue ``<data_dir>/keys/station.pem`` from the dev CA for the existing station key.

        The key itself is never touched: it is the identity the station's
        manifests are signed under.  Returns the certificate path.
        """
        check_station_id(station_id)
        keys_dir = Path(data_dir) / "keys"
        key = StationKey.load(keys_dir / "station.key")
        cert = issue_station_certificate(self.ca, key, station_id)
        cert_path = keys_dir / "station.pem"
        write_atomic(cert_path, cert_pem(cert))
        log.info("enrolled station %s (keyid %s): %s issued by the dev CA", station_id,
                 key.keyid, cert_path)
        return cert_path

    # -- internals -------------------------------------------------------------------

    def _leaf(self, cn: str, stem: str, *, server: bool, client: bool) -> Issued:
        issued = Issued(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        if self._still_good(issued):
            return issued
        log.info("issuing %s certificate %s (CN %s)", "server" if server else "client",
                 issued.cert_path, cn)
        return self.ca.issue(cn, stem, server=server, client=client)

    def _still_good(self, issued: Issued) -> bool:
        """True if the pair exists, the certificate is from this CA and valid for a while."""
        if not (issued.cert_path.is_file() and issued.key_path.is_file()):
            return False
        try:
            cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
            cert.verify_directly_issued_by(self.ca.cert)
        except Exception:  # unreadable, or another CA's: re-issue
            return False
        return cert.not_valid_after_utc - _RENEW_BEFORE > dt.datetime.now(dt.UTC)

    def _platform_key(self) -> StationKey:
        if self.platform_key_path.exists():
            signer = StationKey.load(self.platform_key_path)
        else:
            signer = StationKey(Ed25519PrivateKey.generate())
            signer.save(self.platform_key_path)
            log.info("created platform signing key %s (keyid %s)", self.platform_key_path,
                     signer.keyid)
        pub = signer.public_pem()
        if not self.platform_pub_path.exists() or self.platform_pub_path.read_bytes() != pub:
            write_atomic(self.platform_pub_path, pub)
        return signer


def make_dev_pki(directory: str | os.PathLike[str]) -> DevPki:
    """Create (or reuse) the development platform PKI in ``directory``."""
    return DevPki(directory)



def write_mosquitto_conf(pki: DevPki, directory: str | os.PathLike[str], port: int,
                         host: str = "127.0.0.1", *, crl_file: Path | None = None) -> Path:
    """A mosquitto.conf (and ACL) for a broker on ``host:port`` using ``pki``; returns its path.

    One TLS listener, client certificates required and checked against the
    dev CA, CN as user name, the station ACL, persistence in ``directory``.
    """
    state = Path(directory)
    state.mkdir(parents=True, exist_ok=True)
    acl_path = state / "acl"
    write_atomic(acl_path, BROKER_ACL.encode())
    lines = [
        "per_listener_settings false",
        "persistence true",
        f"persistence_location {state}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        f"listener {port} {host}",
        f"cafile {pki.ca_cert_path}",
        f"certfile {pki.server.cert_path}",
        f"keyfile {pki.server.key_path}",
        "require_certificate true",
        "use_identity_as_username true",
        f"acl_file {acl_path}",
    ]
    if crl_file is not None:
        lines.append(f"crlfile {crl_file}")  # a CRL of every issuing CA (OpenSSL CRL_CHECK)
    if os.getuid() == 0:
        # As root mosquitto switches to the "mosquitto" user, which cannot
        # read the dev PKI or write the persistence directory.
        lines.insert(0, "user root")
    conf = state / "mosquitto.conf"
    write_atomic(conf, ("\n".join(lines) + "\n").encode())
    return conf
