"""MqttLink against a real mosquitto: TLS client certificates, birth and will, outbox, commands.

The "platform" is a paho client with its own certificate.  Broker faults are
real: ``pause()`` freezes the broker (SIGSTOP) so messages stay in flight,
``kill()`` ends it abruptly, ``start()`` brings it back with its persistence.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.devpki import DevCA
from agent.sync.mqtt import InboundMessage, MqttLink
from agent.sync.outbox import OutboxItem, SqliteOutbox
from tests.integration.conftest import ClientCert
from tests.support.mosquitto import STATION_ACL, Broker, PlatformClient, read_retained

pytestmark = pytest.mark.integration

STATION = "ST-0001"
BASE = f"bwc/v1/stations/{STATION}"
EVENTS = f"{BASE}/events"
STATUS = f"{BASE}/status"
REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def add_events(outbox: SqliteOutbox, count: int) -> list[str]:
    """Add ``count`` event envelopes; returns their ids."""
    ids = []
    for seq in range(count):
        event_id = str(uuid.uuid4())
        envelope = {"id": event_id, "type": "device.docked", "station_id": STATION,
                    "seq": seq, "at": "2024-05-01T08:00:00.000Z", "data": {"n": seq}}
        outbox.add(EVENTS, json.dumps(envelope).encode(), qos=1)
        ids.append(event_id)
    return ids


def event_ids(platform: PlatformClient) -> list[str]:
    return [m.json()["id"] for m in platform.messages(EVENTS)]


def has_all(platform: PlatformClient, ids: list[str]) -> Callable[[], bool]:
    return lambda: set(ids) <= set(event_ids(platform))


class Links:
    """Makes MqttLinks for one test and stops whatever is still running at the end."""

    def __init__(self, broker: Broker, cert: ClientCert, outbox: SqliteOutbox) -> None:
        self.broker, self.cert, self.outbox = broker, cert, outbox
        self.inbox: queue.Queue[InboundMessage] = queue.Queue()
        self.started: list[MqttLink] = []

    def make(self, **overrides: Any) -> MqttLink:
        kwargs: dict[str, Any] = {
            "station_id": STATION, "url": self.broker.url, "ca_file": self.broker.ca.cert_path,
            "cert_file": self.cert.cert_file, "key_file": self.cert.key_file,
            "username": None, "password": None, "protocol": "5", "keepalive": 30,
            "outbox": self.outbox, "status_provider": lambda: {"backlog": 0, "devices": []},
            "on_message": self.inbox.put,
        }
        kwargs.update(overrides)
        link = MqttLink(**kwargs)
        link.start()
        self.started.append(link)
        return link

    def connected(self, **overrides: Any) -> MqttLink:
        link = self.make(**overrides)
        assert link.wait_connected(5), f"link did not connect: {link.last_error}"
        return link


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SqliteOutbox]:
    box = SqliteOutbox(tmp_path / "outbox.db")
    yield box
    box.close()


@pytest.fixture
def links(broker: Broker, station_cert: ClientCert, outbox: SqliteOutbox) -> Iterator[Links]:
    made = Links(broker, station_cert, outbox)
    yield made
    broker.resume()
    for link in made.started:
        link.stop(timeout=1)


# -- status: birth, will, clean stop -------------------------------------------


def test_birth_is_retained_online_with_status(links: Links, broker: Broker,
                                              platform_cert: ClientCert) -> None:
    link = links.connected(status_provider=lambda: {"backlog": 7, "devices": ["CAM1"]})
    status = read_retained(broker, platform_cert.cert_file, platform_cert.key_file,
                           STATUS).json()
    assert status["state"] == "online"
    assert status["boot_id"] == link.boot_id
    assert status["version"] == __version__
    assert status["backlog"] == 7 and status["devices"] == ["CAM1"]
    assert status["at"].endswith("Z")


def test_a_slow_status_never_holds_the_connection(links: Links, outbox: SqliteOutbox,
                                                   platform: PlatformClient) -> None:
    # The store is busy (a long checkpoint): building the birth status waits for it.
    store_free = threading.Event()

    def busy_status() -> dict[str, Any]:
        store_free.wait(10)
        return {"backlog": 0, "devices": []}

    ids = add_events(outbox, 5)
    links.connected(status_provider=busy_status)
    try:
        # Events still go out and their PUBACKs are handled meanwhile.
        wait_until(lambda: outbox.backlog() == 0, what="events delivered while status waits")
    finally:
        store_free.set()
    assert sorted(set(event_ids(platform))) == sorted(ids)


_CHILD = """
import json, sys, time
from agent.sync.mqtt import MqttLink
from agent.sync.outbox import OutboxItem, SqliteOutbox
a = json.loads(sys.argv[1])
link = MqttLink(station_id=a["station"], url=a["url"], ca_file=a["ca"], cert_file=a["cert"],
                key_file=a["key"], username=None, password=None, protocol="5", keepalive=30,
                outbox=SqliteOutbox(a["db"]), status_provider=dict, on_message=print)
link.start()
print("ready" if link.wait_connected(10) else "failed", link.boot_id, flush=True)
time.sleep(60)
"""


def test_will_is_published_when_the_agent_process_dies(
        broker: Broker, station_cert: ClientCert, platform_cert: ClientCert,
        platform: PlatformClient, tmp_path: Path) -> None:
    args = {"station": STATION, "url": broker.url, "ca": str(broker.ca.cert_path),
            "cert": str(station_cert.cert_file), "key": str(station_cert.key_file),
            "db": str(tmp_path / "child.db")}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        state, boot_id = child.stdout.readline().split()
        assert state == "ready"
        platform.wait_for(lambda m: m.topic == STATUS and m.json()["state"] == "online",
                          what="birth")
        child.send_signal(signal.SIGKILL)  # no DISCONNECT, no offline status: only the will
        child.wait(5)
        [will] = platform.wait_for(
            lambda m: m.topic == STATUS and m.json()["state"] == "offline", what="will")
    finally:
        child.kill()
        child.wait()
    assert will.json()["boot_id"] == boot_id
    retained = read_retained(broker, platform_cert.cert_file, platform_cert.key_file, STATUS)
    assert retained.json() == will.json()  # the will is retained


def test_clean_stop_leaves_offline_retained(links: Links, broker: Broker,
                                            platform_cert: ClientCert) -> None:
    link = links.connected()
    link.stop()
    status = read_retained(broker, platform_cert.cert_file, platform_cert.key_file,
                           STATUS).json()
    assert status["state"] == "offline" and status["boot_id"] == link.boot_id


# -- the outbox ----------------------------------------------------------------


def test_outbox_events_arrive_and_are_marked_delivered(links: Links, outbox: SqliteOutbox,
                                                       platform: PlatformClient) -> None:
    ids = add_events(outbox, 250)  # more than the in-flight window of 100
    links.connected()
    wait_until(has_all(platform, ids), what="all events at the platform")
    wait_until(lambda: outbox.backlog() == 0, what="all events marked delivered")
    assert sorted(set(event_ids(platform))) == sorted(ids)


def test_items_are_marked_delivered_only_after_puback(
        links: Links, broker: Broker, outbox: SqliteOutbox, platform: PlatformClient) -> None:
    link = links.connected()
    broker.pause()  # the broker's socket stays open but acknowledges nothing
    ids = add_events(outbox, 3)
    wait_until(lambda: link.in_flight == 3, what="3 items published")
    assert outbox.backlog() == 3  # published, not acknowledged: still pending
    broker.resume()
    wait_until(lambda: outbox.backlog() == 0, what="PUBACKs")
    assert link.in_flight == 0
    assert set(ids) <= set(event_ids(platform))


def test_item_refused_by_the_broker_stays_pending(
        links: Links, outbox: SqliteOutbox, platform: PlatformClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="agent.sync.mqtt")
    # The ACL lets a station write only below its own topics: PUBACK 0x87.
    refused = outbox.add("bwc/v1/stations/ST-9999/events", b'{"id":"x"}', qos=1)
    ids = add_events(outbox, 1)
    link = links.connected()
    wait_until(has_all(platform, ids), what="the permitted event")
    wait_until(lambda: outbox.backlog() == 1, what="the permitted event marked")
    assert [item.id for item in outbox.pending(10)] == [refused]
    assert link.in_flight == 0
    assert f"refused outbox item {refused}: Not authorized" in caplog.text


def test_broker_killed_mid_run_loses_nothing(links: Links, broker: Broker,
                                             outbox: SqliteOutbox,
                                             platform: PlatformClient) -> None:
    link = links.connected()
    first = add_events(outbox, 5)
    wait_until(lambda: outbox.backlog() == 0, what="first batch delivered")
    broker.pause()
    in_flight = add_events(outbox, 5)
    wait_until(lambda: link.in_flight == 5, what="second batch in flight")
    broker.kill()  # the in-flight batch is never acknowledged on this connection
    wait_until(lambda: not link.connected, what="the link to notice")
    offline = add_events(outbox, 5)  # added while there is no broker at all
    broker.start()
    everything = first + in_flight + offline
    wait_until(has_all(platform, everything), timeout=10, what="every event after restart")
    wait_until(lambda: outbox.backlog() == 0, timeout=5, what="every event acknowledged")
    received = event_ids(platform)
    assert set(received) == set(everything)  # duplicates allowed, nothing foreign, nothing lost


def test_broker_restart_keeps_retained_status_and_reconnects(
        links: Links, broker: Broker, outbox: SqliteOutbox,
        platform_cert: ClientCert) -> None:
    link = links.connected()
    broker.restart()  # graceful: the broker saves its state, the link sees a disconnect
    wait_until(lambda: link.connected, timeout=10, what="reconnect")
    add_events(outbox, 3)
    wait_until(lambda: outbox.backlog() == 0, what="events after reconnect")
    status = read_retained(broker, platform_cert.cert_file, platform_cert.key_file,
                           STATUS).json()
    assert status["state"] == "online" and status["boot_id"] == link.boot_id


def test_reconnects_wait_a_jittered_back_off_also_after_a_lost_connection(
        links: Links, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.sync import mqtt as mqtt_mod

    asked: list[tuple[int, float, float]] = []

    def backoff(attempt: int, base: float, cap: float) -> float:
        asked.append((attempt, base, cap))
        return 0.05

    monkeypatch.setattr(mqtt_mod, "backoff_delay", backoff)
    link = links.connected(reconnect_min_s=2, reconnect_max_s=60)
    assert asked == []  # the first connection attempt does not wait
    broker.kill()
    wait_until(lambda: len(asked) >= 3, timeout=10, what="three attempts against no broker")
    # Each attempt waits a full-jitter back-off one step longer (tus.backoff_delay).
    assert asked[:3] == [(0, 2.0, 60.0), (1, 2.0, 60.0), (2, 2.0, 60.0)]
    broker.start()
    wait_until(lambda: link.connected, timeout=10, what="reconnect")
    asked.clear()
    broker.restart()
    wait_until(lambda: link.connected and bool(asked), timeout=10, what="reconnect")
    # Also the first attempt after a lost connection waits, from the shortest step again.
    assert asked[0] == (0, 2.0, 60.0)


def test_new_link_on_the_same_outbox_resends_unacknowledged_items(
        links: Links, broker: Broker, outbox: SqliteOutbox, platform: PlatformClient,
        tmp_path: Path) -> None:
    first = links.connected()
    broker.pause()
    ids = add_events(outbox, 4)
    wait_until(lambda: first.in_flight == 4, what="items in flight")
    first.stop(timeout=0.5)  # as if the agent restarted before any PUBACK
    broker.resume()
    reopened = SqliteOutbox(tmp_path / "outbox.db")
    try:
        assert [item.id for item in reopened.pending(10)] == [1, 2, 3, 4]
        links.connected(outbox=reopened)
        wait_until(lambda: reopened.backlog() == 0, what="re-sent items acknowledged")
    finally:
        reopened.close()
    wait_until(has_all(platform, ids), what="the re-sent items at the platform")


# -- commands and acknowledgements ---------------------------------------------


def test_command_with_mqtt5_response_topic_and_correlation(
        links: Links, platform: PlatformClient) -> None:
    link = links.connected()
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{BASE}/reply/req-1"
    props.CorrelationData = b"corr-\x00\x01"
    props.UserProperty = [("sender", "test")]
    platform.publish(f"{BASE}/cmd/tag", b'{"case_id":"C-1"}', properties=props)
    msg = links.inbox.get(timeout=5)
    assert (msg.name, msg.topic, msg.payload) == ("tag", f"{BASE}/cmd/tag",
                                                  b'{"case_id":"C-1"}')
    assert msg.response_topic == f"{BASE}/reply/req-1"
    assert msg.correlation_data == b"corr-\x00\x01"
    assert msg.user_properties == (("sender", "test"),)

    assert msg.response_topic is not None
    link.respond(msg.response_topic, msg.correlation_data, b'{"ok":true}')
    [reply] = platform.wait_for(lambda m: m.topic == f"{BASE}/reply/req-1", what="reply")
    assert reply.payload == b'{"ok":true}'
    assert reply.correlation_data == b"corr-\x00\x01"

    platform.publish(f"{BASE}/ack", b'{"clip_id":"c1"}')
    ack = links.inbox.get(timeout=5)
    assert (ack.name, ack.payload, ack.response_topic) == ("ack", b'{"clip_id":"c1"}', None)


def test_mqtt_311_mode(links: Links, outbox: SqliteOutbox, platform: PlatformClient) -> None:
    link = links.connected(protocol="3.1.1")
    platform.wait_for(lambda m: m.topic == STATUS and m.json()["state"] == "online",
                      what="birth")
    ids = add_events(outbox, 3)
    wait_until(has_all(platform, ids), what="events over 3.1.1")
    wait_until(lambda: outbox.backlog() == 0, what="events acknowledged over 3.1.1")

    request = {"reply_to": f"{BASE}/reply/r2", "correlation_id": "c-2"}
    platform.publish(f"{BASE}/cmd/sync_clock", json.dumps(request).encode())
    msg = links.inbox.get(timeout=5)
    assert msg.name == "sync_clock" and msg.response_topic is None
    body = json.loads(msg.payload)
    link.respond(body["reply_to"], None, json.dumps({"correlation_id": "c-2"}).encode())
    [reply] = platform.wait_for(lambda m: m.topic == f"{BASE}/reply/r2", what="reply")
    assert reply.json() == {"correlation_id": "c-2"} and reply.correlation_data is None


class V311OnlyGate:
    """A TLS front for the broker that behaves like a broker without MQTT 5.

    An MQTT 5 CONNECT gets the 3.1.1 CONNACK "unacceptable protocol version"
    (return code 1) and the connection is closed, as a 3.1.1-only broker does.
    Any other connection is relayed to mosquitto, which sees the station's
    certificate (the gate presents it upstream).
    """

    def __init__(self, broker: Broker, ca: DevCA, cert: ClientCert) -> None:
        self.broker = broker
        self.refused_v5 = 0
        self._server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server.load_cert_chain(broker.cert_file, broker.key_file)
        self._server.verify_mode = ssl.CERT_REQUIRED
        self._server.load_verify_locations(ca.cert_path)
        self._upstream = ssl.create_default_context(cafile=str(ca.cert_path))
        self._upstream.load_cert_chain(cert.cert_file, cert.key_file)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    @staticmethod
    def _read_packet(sock: ssl.SSLSocket) -> bytes:
        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            return data
        packet = read(1)
        length, shift = 0, 0
        while True:
            byte = read(1)
            packet += byte
            length |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                break
        return packet + read(length)

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._server.wrap_socket(raw, server_side=True) as down:
                connect = self._read_packet(down)
                header_len = 2 if connect[1] < 0x80 else 3
                level = connect[header_len + 6]  # after the length-prefixed "MQTT"
                if level == 5:
                    self.refused_v5 += 1
                    down.sendall(b"\x20\x02\x00\x01")
                    return
                upstream = socket.create_connection((self.broker.host, self.broker.port))
                with self._upstream.wrap_socket(upstream,
                                                server_hostname=self.broker.host) as up:
                    up.sendall(connect)
                    self._pump(down, up)
        except (OSError, ConnectionError):
            return

    @staticmethod
    def _pump(a: ssl.SSLSocket, b: ssl.SSLSocket) -> None:
        while True:
            ready = [s for s in (a, b) if s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b], [], [], 1.0)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)


def test_falls_back_to_311_when_the_broker_refuses_mqtt5(
        links: Links, outbox: SqliteOutbox, platform: PlatformClient) -> None:
    gate = V311OnlyGate(links.broker, links.broker.ca, links.cert)
    try:
        link = links.make(url=f"mqtts://127.0.0.1:{gate.port}")
        assert link.wait_connected(10), f"no connection through the gate: {link.last_error}"
        assert gate.refused_v5 >= 1
        assert link.protocol == "3.1.1"
        ids = add_events(outbox, 2)
        wait_until(has_all(platform, ids), what="events after the fallback")
        wait_until(lambda: outbox.backlog() == 0, what="events acknowledged after the fallback")
    finally:
        gate.close()


def test_wrong_ca_fails_with_certificate_verification_error(
        links: Links, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sync.mqtt")
    stranger = DevCA(tmp_path / "other-ca", name="not the broker's CA")
    link = links.make(ca_file=stranger.cert_path)
    wait_until(lambda: link.last_error is not None, what="a connection error")
    assert not link.connected
    assert "TLS certificate verification failed" in str(link.last_error)
    assert "TLS certificate verification failed" in caplog.text


def test_client_certificate_from_another_ca_is_rejected(
        links: Links, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sync.mqtt")
    stranger = DevCA(tmp_path / "other-ca", name="not the platform's CA")
    issued = stranger.issue(STATION, "impostor")
    link = links.make(cert_file=issued.cert_path, key_file=issued.key_path)
    wait_until(lambda: link.last_error is not None, what="a connection error")
    assert not link.connected
    assert "client certificate" in str(link.last_error)
    assert str(link.last_error) in caplog.text


# -- the reference outbox ------------------------------------------------------


def test_sqlite_outbox_order_wakeup_and_durability(tmp_path: Path) -> None:
    box = SqliteOutbox(tmp_path / "o.db")
    assert box.pending(10) == []
    woke = threading.Event()

    def waiter() -> None:
        box.wait_for_new(30)
        woke.set()

    threading.Thread(target=waiter, daemon=True).start()
    first = box.add("t/a", b"1")
    second = box.add("t/b", b"\x00\xff", qos=0, retain=True)
    assert woke.wait(5), "add() did not wake wait_for_new()"
    assert box.pending(10) == [OutboxItem(first, "t/a", b"1", 1, False),
                               OutboxItem(second, "t/b", b"\x00\xff", 0, True)]
    assert box.pending(1) == [OutboxItem(first, "t/a", b"1", 1, False)]
    box.mark_delivered(first)
    box.mark_delivered(first)  # idempotent
    box.close()

    reopened = SqliteOutbox(tmp_path / "o.db")
    try:
        assert [item.id for item in reopened.pending(10)] == [second]
        assert reopened.backlog() == 1
        # An add() between pending() and wait_for_new() is not missed.
        reopened.add("t/c", b"3")
        started = threading.Event()
        done = threading.Event()

        def late_waiter() -> None:
            started.set()
            reopened.wait_for_new(30)
            done.set()

        threading.Thread(target=late_waiter, daemon=True).start()
        assert started.wait(5) and done.wait(5), "wait_for_new() slept through an earlier add()"
        with pytest.raises(ValueError, match="qos"):
            reopened.add("t/d", b"", qos=3)
    finally:
        reopened.close()
    mode = sqlite3.connect(tmp_path / "o.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_development_broker_config_has_the_tested_acl() -> None:
    """config/mosquitto.conf documents the ACL these tests run under, verbatim."""
    text = (REPO / "config" / "mosquitto.conf").read_text(encoding="utf-8")
    assert "\nrequire_certificate true\n" in text
    assert "\nuse_identity_as_username true\n" in text
    assert "\nlistener 8883 127.0.0.1\n" in text
    block = text.split("# ---- dev-pki/mosquitto.acl ----\n")[1].split("# ---- end ----")[0]
    acl = "".join(line[2:] if line.startswith("# ") else line[1:]
                  for line in block.splitlines(keepends=True))
    assert acl == STATION_ACL


def test_unhandled_platform_message_is_delivered_again_after_a_crash(
        links: Links, broker: Broker, platform: PlatformClient) -> None:
    """Manual acks: a message received but not yet handled survives the agent dying."""
    first = links.connected()
    platform.publish(f"{BASE}/ack", b'{"clip_id":"c-crash"}')
    msg = links.inbox.get(timeout=5)
    assert msg.payload == b'{"clip_id":"c-crash"}'
    # The agent dies before handling it (no ack() call): its socket goes away abruptly.
    first._client._sock_close()  # type: ignore[attr-defined]
    first.stop(timeout=1)
    second = links.connected()
    again = links.inbox.get(timeout=10)
    assert again.payload == b'{"clip_id":"c-crash"}', "the broker delivers it again"
    second.ack(again)
    second.stop(timeout=1)
    third = links.connected()
    with pytest.raises(queue.Empty):
        links.inbox.get(timeout=1.5)  # handled and acknowledged: not delivered a third time
    third.stop(timeout=1)
