"""A real mosquitto broker for the integration tests.

``Broker`` runs ``mosquitto`` as a child process with the same policy as
config/mosquitto.conf: one TLS listener on 127.0.0.1 (a free port), client
certificates required and verified against a DevCA, the certificate CN used
as the user name, the station ACL, and persistence on, so that ``restart()``
keeps sessions, queued messages and retained messages.  ``pause()`` freezes
the broker (SIGSTOP): the TCP connections stay open but nothing is
acknowledged, which is how tests hold messages in flight.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.devpki import DevCA, cert_pem, key_pem
from agent.durable import write_atomic
from scripts.devplatform.pki import BROKER_ACL

# The station policy of config/mosquitto.conf and PROTOCOL.md section 1: one copy,
# shared with the development platform's broker.
STATION_ACL = BROKER_ACL


def mosquitto_executable() -> str:
    """Path of the mosquitto binary; a clear failure if it is not installed."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: the integration tests need a real broker "
            "(Debian/Ubuntu: apt-get install mosquitto; scripts/setup does it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def issue_files(ca: DevCA, directory: Path, cn: str, stem: str, *,
                server: bool = False) -> tuple[Path, Path]:
    """A new key and certificate from ``ca`` written to ``directory`` (key 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_for_key(key.public_key(), cn, server=server, client=not server)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    write_atomic(key_path, key_pem(key), mode=0o600)
    write_atomic(cert_path, cert_pem(cert))
    return cert_path, key_path


class Broker:
    """One mosquitto process with TLS client-certificate authentication on 127.0.0.1."""

    def __init__(self, directory: str | os.PathLike[str], ca: DevCA, *,
                 acl: str | None = STATION_ACL) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.port = free_port()
        self.host = "127.0.0.1"
        self.cert_file, self.key_file = issue_files(ca, self.dir, "127.0.0.1", "broker",
                                                    server=True)
        self._probe = issue_files(ca, self.dir, "readiness-probe", "probe")
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.acl_path = self.dir / "acl" if acl is not None else None
        if self.acl_path is not None and acl is not None:
            self.acl_path.write_text(acl, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            # As root mosquitto would switch to the "mosquitto" user, which
            # cannot write the persistence file in a test directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            # Save after every change, so that even kill() keeps subscriptions.
            "autosave_on_changes true",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            f"listener {self.port} {self.host}",
            f"cafile {self.ca.cert_path}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if self.acl_path is not None:
            lines.append(f"acl_file {self.acl_path}")
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until its port completes a TLS handshake."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("broker already running")
        with open(self.dir / "mosquitto.stdout", "ab") as out:
            self.proc = subprocess.Popen([mosquitto_executable(), "-c", str(self.conf_path)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n"
                                   f"{self.log_text()}")
            if self._accepts_tls():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not accept TLS on port {self.port} within "
                                   f"{timeout}s:\n{self.log_text()}")
            time.sleep(0.02)

    def _accepts_tls(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        ctx.load_cert_chain(*map(str, self._probe))
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as raw, \
                    ctx.wrap_socket(raw, server_hostname=self.host):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto saves its persistence file."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # in case it is paused
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Abrupt end (SIGKILL): connections reset, only autosaved state survives."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence file."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing is read or acknowledged."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        parts = []
        for name in ("mosquitto.stdout", "mosquitto.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    """One message as the platform received it."""

    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None
    response_topic: str | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


class PlatformClient:
    """A paho client playing the platform: subscribes, records every message, publishes.

    MQTT 5 with a persistent session (clean_start False, session expiry), so
    that QoS 1 messages published while it reconnects after a broker restart
    are queued for it rather than lost.
    """

    def __init__(self, broker: Broker, cert_file: Path, key_file: Path, *,
                 client_id: str = "platform",
                 subscriptions: tuple[str, ...] = ("bwc/v1/stations/+/#",)) -> None:
        self.broker = broker
        self.subscriptions = subscriptions
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.ca.cert_path), certfile=str(cert_file),
                            keyfile=str(key_file))
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> PlatformClient:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect_async(self.broker.host, self.broker.port, 30,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"platform client did not subscribe within {timeout}s:\n"
                                 f"{self.broker.log_text()[-3000:]}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        received = Received(
            topic=msg.topic, payload=bytes(msg.payload), retain=bool(msg.retain),
            correlation_data=getattr(props, "CorrelationData", None) if props else None,
            response_topic=getattr(props, "ResponseTopic", None) if props else None)
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def wait_for(self, predicate: Callable[[Received], bool], *, count: int = 1,
                 timeout: float = 5.0, what: str = "message") -> list[Received]:
        """Wait until ``count`` received messages satisfy ``predicate``; returns them."""
        def matching() -> list[Received]:
            return [m for m in self._messages if predicate(m)]
        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                seen = [(m.topic, m.payload[:120]) for m in self._messages]
                raise AssertionError(f"platform: expected {count} x {what} within {timeout}s; "
                                     f"received {seen}")
            return matching()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                properties: Properties | None = None, timeout: float = 5.0) -> None:
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"platform publish to {topic} not acknowledged"


def read_retained(broker: Broker, cert_file: Path, key_file: Path, topic: str,
                  timeout: float = 5.0) -> Received:
    """Connect a fresh client, subscribe to ``topic`` and return its retained message."""
    reader = PlatformClient(broker, cert_file, key_file, client_id=f"retained-{uuid.uuid4()}",
                            subscriptions=(topic,))
    reader.start(timeout)
    try:
        return reader.wait_for(lambda m: m.topic == topic and m.retain, timeout=timeout,
                               what=f"retained message on {topic}")[-1]
    finally:
        reader.stop()
