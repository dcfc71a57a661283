"""A whole development stand on loopback: PKI, mosquitto (TLS), the platform, station configs.

Stations it configures trust the platform's credential key (``officers``), so
the officer roster and case windows it publishes are checked as in production.

Used by ``scripts/demo`` and the station-level integration tests, so both
exercise the same real components: mosquitto with client certificates, the
HTTPS tus server, signed acks and commands.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

from agent.custody.keys import init_station_keys
from agent.devpki import Issued
from scripts.devplatform.est import EstServer
from scripts.devplatform.officers import OfficerAuthority
from scripts.devplatform.pki import DevPki, make_dev_pki, write_mosquitto_conf
from scripts.devplatform.platform import DevPlatform


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed (scripts/setup installs it with apt-get)")
    return found


class DevStand:
    """Start with ``start()``; ``stop()`` ends the platform and the broker."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki: DevPki = make_dev_pki(self.dir / "pki")
        self.broker_port = free_port()
        self.broker_conf = write_mosquitto_conf(self.pki, self.dir / "broker", self.broker_port)
        self.broker: subprocess.Popen[bytes] | None = None
        # A persistent session, as a real platform's consumers keep: events a station sends
        # while the platform's own connection is down (a broker restart) wait for it.
        self.platform = DevPlatform(self.dir / "platform", self.pki,
                                    broker_port=self.broker_port, session_expiry_s=3600)
        self.officers = OfficerAuthority(self.dir / "pki")
        self.est = EstServer(self.pki)

    # --- broker --------------------------------------------------------------------------

    def use_crl(self, crl_file: Path) -> None:
        """From the next broker start on, refuse client certificates revoked in ``crl_file``."""
        self.broker_conf = write_mosquitto_conf(self.pki, self.dir / "broker", self.broker_port,
                                                crl_file=crl_file)

    def start_broker(self, timeout: float = 10.0) -> None:
        log = open(self.dir / "broker" / "mosquitto.log", "ab")  # noqa: SIM115 - owned by Popen
        self.broker = subprocess.Popen([mosquitto_binary(), "-c", str(self.broker_conf)],
                                       stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.broker.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.broker.returncode}; see "
                                   f"{self.dir / 'broker' / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.broker_port}")

    def stop_broker(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            self.broker.wait(timeout=10)
        self.broker = None

    # --- the whole stand -----------------------------------------------------------------

    def start(self) -> DevStand:
        self.start_broker()
        self.est.start()
        self.platform.start()
        return self

    def stop(self) -> None:
        self.platform.stop()
        self.est.stop()
        self.stop_broker()

    def __enter__(self) -> DevStand:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def station(self, base: str | os.PathLike[str], station_id: str = "ST-0001",
                extra: str = "", platform_extra: str = "", *, est: bool = False,
                pki_extra: str = "") -> Path:
        """Write a station directory (config, enrolled keys, TLS cert); returns its config.

        With ``est``, the station is configured for the EST server ([pki]) and
        its TLS files are the enrolled ones (keys/tls.pem, keys/tls.key): run
        ``bwc-agent enroll`` (token from ``est.add_token``) before starting it.
        """
        base_dir = Path(base)
        (base_dir / "sim").mkdir(parents=True, exist_ok=True)
        data_dir = base_dir / "data"
        if est:
            tls = Issued(data_dir / "keys" / "tls.pem", data_dir / "keys" / "tls.key")
            extra = (f'[pki]\nest_url = "{self.est.url}"\n'
                     f'est_ca_file = "{self.pki.ca_cert_path}"\n' + textwrap.dedent(pki_extra)
                     + "\n" + textwrap.dedent(extra))
        else:
            init_station_keys(data_dir, station_id)
            self.pki.enroll_station(data_dir, station_id)
            tls = self.pki.station_tls(station_id)
        config = base_dir / "station.toml"
        config.write_text(textwrap.dedent(f"""\
            [station]
            id = "{station_id}"
            data_dir = "{data_dir}"

            [devices.simulated]
            root = "{base_dir / 'sim'}"

            [custody]
            credential_key_file = "{self.officers.pub_path}"

            [platform]
            mqtt_url = "mqtts://127.0.0.1:{self.broker_port}"
            upload_url = "{self.platform.upload_url}"
            ca_file = "{self.pki.ca_cert_path}"
            cert_file = "{tls.cert_path}"
            key_file = "{tls.key_path}"
            platform_key_file = "{self.pki.platform_pub_path}"
            """) + textwrap.dedent(platform_extra) + "\n" + textwrap.dedent(extra),
            encoding="utf-8")
        return config
