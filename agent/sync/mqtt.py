"""The station's MQTT connection: status birth and will, the outbox drainer, commands in.

One ``MqttLink`` owns one paho-mqtt 2.x client and three threads:

- paho's network loop (``loop_start``): connects, reconnects for ever, and runs
  the ``_on_*`` callbacks, which only record state and hand work to the other
  threads.  Before each reconnection attempt paho waits an exponential
  back-off with full jitter that this module sets (a random time between 0
  and ``reconnect_min_s x 2^n``, at most ``reconnect_max_s``): paho's own
  back-off has no jitter, and a fleet of stations that lost their broker at
  the same instant would come back in the same instant, again and again;
- the drainer: publishes outbox items while the link is ready, at most
  ``window`` of them awaiting a PUBACK at a time;
- the acker: turns PUBACKs into ``outbox.mark_delivered`` (SQLite writes stay
  off the network thread).

Topics, below ``<topic_prefix>/<station_id>/`` (DESIGN.md section 7):
``status`` (retained, QoS 1: birth on every connection, Last Will offline,
offline again on a clean stop), ``cmd/+``, ``ack``, ``roster`` (retained),
``roster/update`` and ``case-window`` (subscribed, QoS 1).

Invariants:

- an outbox item is marked delivered only after the broker acknowledged the
  packet that carried it with a success reason code (PUBACK for QoS 1,
  PUBCOMP for QoS 2, the socket write for QoS 0);
- an item awaiting its acknowledgement is never published again by the
  drainer.  If the connection drops, paho keeps it and retransmits it (same
  packet id, DUP flag) right after the next CONNACK, so it is re-sent after
  reconnect and acknowledged there; after a restart of the process, the
  outbox still holds it and the new link publishes it again.  Duplicates are
  possible, losses are not: the platform de-duplicates by event id;
- the birth message is published when the subscriptions are acknowledged,
  i.e. after paho has retransmitted the previous connection's messages, so
  a stale status can never overwrite the fresh one in the retained slot;
- the password is handed to paho and never logged;
- TLS files are loaded once, at construction: an unusable one is a ConfigError
  naming its configuration key (agent.sync.tlsfiles).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import __version__
from agent.errors import AgentError, ConfigError, TransportError
from agent.sync.outbox import Outbox
from agent.sync.tlsfiles import client_context
from agent.sync.tus import backoff_delay
from agent.timeutil import now, uuid7

log = logging.getLogger(__name__)
paho_log = logging.getLogger(f"{__name__}.paho")

# MQTT 5 CONNACK "Unsupported Protocol Version"; paho also reports a v3
# broker's "unacceptable protocol version" (CONNACK code 1) under this code.
_RC_UNSUPPORTED_PROTOCOL = 0x84
RECEIVE_MAXIMUM = 64


@dataclass(frozen=True)
class InboundMessage:
    """A message from the platform: a command (``cmd/<name>``), an acknowledgement (``ack``),
    or an officer message (``roster``, ``roster-update``, ``case-window``).

    ``response_topic`` and ``correlation_data`` are the MQTT 5 properties of
    the request (None over MQTT 3.1.1, where the payload carries reply_to and
    correlation_id instead).
    """

    topic: str
    name: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    mid: int = 0
    qos: int = 0
    connection: int = 0  # which connection it came on (acks are per connection)
    # The broker's DUP flag: it sent this message before (a publisher's own DUP flag is
    # not passed on to subscribers, so only the broker can set it here).
    dup: bool = False


class MqttLink:
    """The agent's one connection to the platform's MQTT broker.

    Call ``start()`` once and ``stop()`` once.  ``on_message`` and
    ``status_provider`` run on paho's network thread and must return quickly
    (``on_message`` should only put the message on a queue).
    """

    def __init__(
        self,
        *,
        station_id: str,
        url: str,
        ca_file: str | os.PathLike[str] | None,
        cert_file: str | os.PathLike[str] | None,
        key_file: str | os.PathLike[str] | None,
        username: str | None,
        password: str | None,
        protocol: str,
        keepalive: int,
        outbox: Outbox,
        status_provider: Callable[[], dict[str, Any]],
        on_message: Callable[[InboundMessage], None],
        topic_prefix: str = "bwc/v1/stations",
        insecure: bool = False,
        boot_id: str | None = None,
        window: int = 100,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 120,
        session_expiry_s: int = 86400,
    ) -> None:
        if not station_id or any(c in station_id for c in "/+#"):
            raise ConfigError(f"station id {station_id!r} cannot be used in an MQTT topic")
        if protocol not in ("5", "3.1.1"):
            raise ConfigError(f"platform.mqtt_protocol: {protocol!r} is not '5' or '3.1.1'")
        if (cert_file is None) != (key_file is None):
            raise ConfigError("platform.cert_file / platform.key_file: give both or neither")
        parts = urlsplit(url)
        if parts.scheme == "mqtts":
            self._tls = True
        elif parts.scheme == "mqtt" and insecure:
            self._tls = False
        elif parts.scheme == "mqtt":
            raise ConfigError("platform.mqtt_url: mqtt:// is clear text; use mqtts:// "
                              "or set platform.insecure = true for development")
        else:
            raise ConfigError(f"platform.mqtt_url: {parts.scheme!r} URLs are not supported; "
                              "use mqtts://host:port")
        if not parts.hostname:
            raise ConfigError("platform.mqtt_url: no host name")
        self.host = parts.hostname
        self.port = parts.port or (8883 if self._tls else 1883)
        self.station_id = station_id
        self.protocol = protocol
        self.boot_id = boot_id or uuid7()
        self.window = window
        self._ca_file = os.fspath(ca_file) if ca_file is not None else None
        self._cert_file = os.fspath(cert_file) if cert_file is not None else None
        self._key_file = os.fspath(key_file) if key_file is not None else None
        self._ssl_context: ssl.SSLContext | None = None
        self._reload_cert = False
        self._username = username
        self._password = password
        self._keepalive = keepalive
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        # Reconnection waits since the link was last ready (the back-off's exponent).
        self._attempts = 0
        self._session_expiry_s = session_expiry_s
        self._outbox = outbox
        self._status_provider = status_provider
        self._deliver = on_message

        base = f"{topic_prefix.rstrip('/')}/{station_id}"
        self.status_topic = f"{base}/status"
        self.events_topic = f"{base}/events"
        self.ack_topic = f"{base}/ack"
        self._cmd_prefix = f"{base}/cmd/"
        # Officer roster and case windows (PROTOCOL.md section 8): topic -> message name.
        self._officer_topics = {f"{base}/roster": "roster",
                                f"{base}/roster/update": "roster-update",
                                f"{base}/case-window": "case-window"}

        # _flight_lock guards the in-flight maps.  The drainer holds it across
        # publish() so the acker never sees a PUBACK before its mid is
        # recorded.  paho callbacks never take it: paho calls on_publish with
        # its own message lock held, which publish() also takes.
        self._flight_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # packet id -> outbox item id
        self._inflight_ids: set[int] = set()
        self._refused: set[int] = set()  # refused by the broker on this connection
        self._acks: queue.SimpleQueue[tuple[mqtt.Client, int, ReasonCode] | None] = (
            queue.SimpleQueue())

        self._ready = threading.Event()  # connected and subscribed
        self._wake = threading.Event()  # the drainer has something to look at
        self._stopping = threading.Event()
        self._status_lock = threading.Lock()  # orders the birth and the offline status
        self._connection_seq = 0  # bumped by every ready connection
        self._network_seq = 0  # bumped by every accepted CONNACK (acks belong to it)
        self._fallback_pending = False
        self._connack_seen = False  # for the connection attempt under way
        self._last_error: TransportError | None = None
        # (state, since): "connecting" until the first connection, then "connected" /
        # "disconnected" from the moment it changed (the daemon's status shows it).
        self._link_state: tuple[str, str] = ("connecting", now())
        self._threads: list[threading.Thread] = []
        self._client = self._make_client()

    # -- public API ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected, subscribed and announced online."""
        return self._ready.is_set()

    @property
    def last_error(self) -> TransportError | None:
        """Why the last connection attempt failed or the last connection ended, if it did."""
        return self._last_error

    def connection_state(self) -> dict[str, Any]:
        """``{"state": "connected" | "disconnected" | "connecting", "since", "last_error"}``."""
        state, since = self._link_state
        error = self._last_error
        return {"state": state, "since": since,
                "last_error": str(error) if error is not None else None}

    def _set_link_state(self, state: str) -> None:
        if self._link_state[0] != state:
            self._link_state = (state, now())

    @property
    def in_flight(self) -> int:
        """Outbox items published and awaiting their acknowledgement."""
        with self._flight_lock:
            return len(self._inflight_ids)

    def start(self) -> None:
        """Start connecting (in the background) and draining the outbox."""
        if self._threads:
            raise RuntimeError("MqttLink.start() called twice")
        log.info("MQTT: connecting to %s:%d as %s (MQTT %s)", self.host, self.port,
                 self.station_id, self.protocol)
        if not self._tls:
            log.warning("MQTT: TLS is off (mqtt:// with platform.insecure): development only")
        self._start_client()
        for name, target in (("mqtt-drainer", self._drain_loop), ("mqtt-acker", self._ack_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the link is ready (see ``connected``); False on timeout."""
        return self._ready.wait(timeout)

    def publish_status(self) -> bool:
        """Publish the current status (retained); False if not connected (the birth will do)."""
        if not self.connected:
            return False
        self._publish(self._client, self.status_topic, self._status_payload("online"),
                      qos=1, retain=True)
        return True

    def respond(self, response_topic: str, correlation_data: bytes | None,
                payload: bytes) -> None:
        """Answer a command on its response topic (MQTT 5: with its correlation data).

        Over MQTT 3.1.1 pass the request's ``reply_to`` as ``response_topic``
        and put its ``correlation_id`` in ``payload``.  Sent at QoS 1; while
        disconnected, paho keeps it and sends it after the reconnect.
        """
        props = None
        if correlation_data is not None and self.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        self._publish(self._client, response_topic, payload, qos=1, retain=False,
                      properties=props)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop draining, announce offline (a clean disconnect sends no will), disconnect."""
        if not self._threads or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            if thread.name == "mqtt-drainer":
                thread.join(timeout)
        client = self._client
        with self._status_lock:  # after a birth being published, never before it
            if self.connected:
                try:
                    info = client.publish(self.status_topic, self._status_payload("offline"),
                                          qos=1, retain=True)
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:
                    log.warning("MQTT: could not publish the offline status: %s", exc)
        client.disconnect()
        client.loop_stop()
        self._ready.clear()
        self._acks.put(None)
        for thread in self._threads:
            thread.join(timeout)
        log.info("MQTT: stopped")

    # -- the paho client ----------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        if self.protocol == "5":
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.station_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            # clean_session False: the broker keeps our QoS 1 subscriptions
            # and queues commands while the station is offline.
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.station_id,
                                 protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        client.on_log = self._on_log
        # A bug in a callback must not kill the network thread.
        client.suppress_exceptions = True
        # paho waits its reconnect delay, which _plan_reconnect sets before each wait.
        client.reconnect_delay_set(*self._reconnect)
        client.max_inflight_messages_set(self.window)
        if self._tls:
            if self._ca_file is None:
                raise ConfigError("platform.ca_file: mqtts:// needs the CA that verifies "
                                  "the broker")
            # ConfigError naming platform.ca_file / cert_file / key_file for a bad file.
            # Kept to load a renewed client certificate into it: reload_client_certificate.
            self._ssl_context = client_context(self._ca_file, self._cert_file, self._key_file)
            client.tls_set_context(self._ssl_context)
            client.tls_insecure_set(False)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.will_set(self.status_topic, self._will_payload(), qos=1, retain=True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _start_client(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            # Bounds how many messages to us the broker may have in flight (we acknowledge
            # each once handled), so a flood waits in the broker, not in this process.
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self.host, self.port, self._keepalive, **kwargs)
        self._client.loop_start()

    def _switch_to_311(self) -> None:
        """Replace the MQTT 5 client by a 3.1.1 one (the broker refused version 5)."""
        old = self._client
        old.loop_stop()
        with self._flight_lock:
            # The old client's memory queue is gone with it: what it held is
            # still pending in the outbox and is published again.
            self._inflight.clear()
            self._inflight_ids.clear()
            self._refused.clear()
            self.protocol = "3.1.1"
            self._client = self._make_client()
        self._fallback_pending = False
        self._start_client()

    def _publish(self, client: mqtt.Client, topic: str, payload: bytes, *, qos: int,
                 retain: bool, properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        """paho's publish with its failures converted to TransportError."""
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except ValueError as exc:
            raise TransportError(f"cannot publish to {topic!r}: {exc}", retryable=False) from exc
        # NO_CONN with QoS > 0 is fine: paho keeps the message and sends it on reconnect.
        if info.rc != mqtt.MQTT_ERR_SUCCESS and not (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
            raise TransportError(f"cannot publish to {topic!r}: {mqtt.error_string(info.rc)}")
        return info

    def _status_payload(self, state: str) -> bytes:
        status: dict[str, Any] = {}
        if state == "online":
            try:
                status.update(self._status_provider())
            except Exception:
                # The birth must go out even if a status source is broken.
                log.exception("MQTT: the status provider failed; publishing a bare status")
        status.update(state=state, boot_id=self.boot_id, version=__version__, at=now())
        return json.dumps(status, separators=(",", ":"), sort_keys=True).encode()

    def _will_payload(self) -> bytes:
        # The broker publishes the will as it is: "at" is when the connection
        # carrying it was opened; the platform takes the loss time from receipt.
        will = {"state": "offline", "boot_id": self.boot_id, "at": now()}
        return json.dumps(will, separators=(",", ":"), sort_keys=True).encode()

    # -- paho callbacks (network thread) ------------------------------------

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        # paho logs "Client is not connected" at ERROR on every retry while the
        # broker is away; this module reports connection trouble itself.  Only
        # exceptions raised in our callbacks are errors worth a line.
        if text.startswith("Caught exception"):
            log.error("MQTT (paho): %s", text)
        else:
            paho_log.debug("%s", text)

    def reload_client_certificate(self) -> None:
        """Present the client certificate as the files hold it now, from the next connection.

        Loaded on paho's thread just before it connects (``_on_pre_connect``),
        so no handshake ever sees a context being changed.
        """
        self._reload_cert = True

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._reload_cert and self._ssl_context is not None and self._cert_file is not None:
            self._reload_cert = False
            try:
                self._ssl_context.load_cert_chain(self._cert_file, self._key_file)
                log.info("MQTT: connecting with the renewed client certificate %s",
                         self._cert_file)
            except (OSError, ValueError) as exc:  # keep the one loaded before
                log.error("MQTT: cannot load the renewed client certificate %s: %s",
                          self._cert_file, exc)
        self._connack_seen = False
        client.will_set(self.status_topic, self._will_payload(), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if client is not self._client:
            return
        self._connack_seen = True
        if reason_code.is_failure:
            if self.protocol == "5" and reason_code.value == _RC_UNSUPPORTED_PROTOCOL:
                log.warning("MQTT: %s:%d does not support MQTT 5; falling back to 3.1.1",
                            self.host, self.port)
                self._fallback_pending = True
                client.disconnect()  # ends this client's loop; the drainer replaces it
                self._wake.set()
                return
            self._set_error(f"broker {self.host}:{self.port} refused the connection: "
                            f"{reason_code}")
            return
        log.info("MQTT: connected to %s:%d (MQTT %s, session present: %s)", self.host,
                 self.port, self.protocol, flags.session_present)
        # Messages the broker kept for us arrive right after CONNACK: tag them with this
        # connection, so that their acks are sent on it.
        self._network_seq += 1
        client.subscribe([(f"{self._cmd_prefix}+", 1), (self.ack_topic, 1),
                          *((topic, 1) for topic in self._officer_topics)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        if client is not self._client:
            return
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("MQTT: the broker refused our subscriptions (%s); commands and acks "
                      "will not arrive", ", ".join(refused))
        self._set_link_state("connected")  # before the birth, which reports it
        # The status reads the store, which a long transaction may hold for a while:
        # built off this network thread, so keepalives and PUBACKs never wait for it.
        threading.Thread(target=self._publish_birth, args=(client,), name="mqtt-birth",
                         daemon=True).start()
        self._last_error = None
        self._connection_seq += 1
        self._attempts = 0
        self._ready.set()
        self._wake.set()

    def _publish_birth(self, client: mqtt.Client) -> None:
        payload = self._status_payload("online")
        with self._status_lock:
            if self._stopping.is_set():
                return  # never an "online" after the "offline" of a clean stop
            try:
                self._publish(client, self.status_topic, payload, qos=1, retain=True)
            except TransportError as exc:
                log.error("MQTT: cannot publish the birth status: %s", exc)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its "except OSError" clause, so the
        # exception that made the attempt fail is the one being handled.
        self._set_error(self._describe(sys.exception()))
        self._plan_reconnect(client)

    def _plan_reconnect(self, client: mqtt.Client) -> None:
        """Set the wait before paho's next attempt: exponential back-off, full jitter.

        Called when a connection is lost or an attempt failed, before paho waits;
        the first wait after a lost connection is jittered too, so a broker that
        restarts does not get every station in the same instant.
        """
        if self._stopping.is_set() or client is not self._client:
            return
        delay = backoff_delay(self._attempts, base=float(self._reconnect[0]),
                              cap=float(self._reconnect[1]))
        self._attempts += 1
        log.info("MQTT: reconnecting to %s:%d in %.2f s (attempt %d)", self.host, self.port,
                 delay, self._attempts)
        # paho takes the delay in seconds as any number; min = max: exactly this wait.
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        if client is not self._client:
            return
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._wake.set()
        if was_ready:
            self._set_link_state("disconnected")
        if self._stopping.is_set() or self._fallback_pending:
            return
        self._plan_reconnect(client)
        if was_ready:
            log.warning("MQTT: connection to %s:%d lost (%s); reconnecting", self.host,
                        self.port, reason_code)
            self._set_error(f"connection to {self.host}:{self.port} lost: {reason_code}",
                            quiet=True)
        elif not self._connack_seen:
            # E.g. TLS 1.3: the broker rejects our client certificate after
            # the handshake looked complete from this side.
            self._set_error(f"{self.host}:{self.port} closed the connection before accepting "
                            f"it ({reason_code}); is the client certificate trusted there?")
        # else: a refusing CONNACK, already reported by _on_connect.

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties) -> None:
        # Called with paho's message lock held: only hand over to the acker.
        self._acks.put((client, mid, reason_code))

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic == self.ack_topic:
            name = "ack"
        elif topic in self._officer_topics:
            name = self._officer_topics[topic]
        elif topic.startswith(self._cmd_prefix) and "/" not in topic[len(self._cmd_prefix):]:
            name = topic[len(self._cmd_prefix):]
        else:
            log.warning("MQTT: ignoring a message on unexpected topic %r", topic)
            self._ack_message(client, message.mid, message.qos)
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        user = getattr(props, "UserProperty", None) if props else None
        inbound = InboundMessage(
            topic=topic, name=name, payload=bytes(message.payload),
            response_topic=response_topic,
            correlation_data=bytes(correlation) if correlation is not None else None,
            user_properties=tuple((str(k), str(v)) for k, v in (user or [])),
            mid=message.mid, qos=message.qos, connection=self._network_seq,
            dup=bool(message.dup))
        try:
            self._deliver(inbound)
        except Exception:
            log.exception("MQTT: the handler for %s failed", topic)
            self.ack(inbound)

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge a platform message once it was handled (committed or refused).

        The client runs with manual acknowledgements: a PUBACK sent on receipt would
        lose an ack or a command to a crash before it was handled; unacknowledged,
        the broker delivers it again after a reconnect.  An ack for a message of an
        earlier connection is not sent: the broker redelivers that one anyway.
        """
        if message.connection == self._network_seq:
            self._ack_message(self._client, message.mid, message.qos)

    @staticmethod
    def _ack_message(client: mqtt.Client, mid: int, qos: int) -> None:
        if qos > 0:
            try:
                client.ack(mid, qos)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not acknowledge message %d: %s", mid, exc)

    def _set_error(self, text: str, *, quiet: bool = False) -> None:
        """Remember why the link is down; log each new reason once, repeats at debug."""
        previous = self._last_error
        self._last_error = TransportError(text)
        if quiet or (previous is not None and str(previous) == text):
            log.debug("MQTT: %s", text)
        else:
            log.warning("MQTT: %s (retrying with back-off)", text)

    def _describe(self, exc: BaseException | None) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"TLS certificate verification failed for {where}: "
                    f"{exc.verify_message or exc} (is platform.ca_file the broker's CA?)")
        if isinstance(exc, ssl.SSLError):
            return f"TLS handshake with {where} failed: {exc.reason or exc}"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection to {where} refused (is the broker running?)"
        if isinstance(exc, TimeoutError):
            return f"connection to {where} timed out"
        if isinstance(exc, OSError):
            return f"cannot connect to {where}: {exc.strerror or exc}"
        return f"cannot connect to {where}: {exc!r}"

    # -- the drainer and the acker ------------------------------------------

    def _drain_loop(self) -> None:
        seen_connection = 0
        while not self._stopping.is_set():
            if self._fallback_pending:
                self._switch_to_311()
                continue
            self._wake.clear()
            if not self._ready.is_set():
                self._wake.wait(0.5)
                continue
            if seen_connection != self._connection_seq:
                seen_connection = self._connection_seq
                with self._flight_lock:
                    self._refused.clear()  # a new connection: try refused items once more
            try:
                sent, full = self._publish_pending()
            except AgentError as exc:
                log.error("MQTT: cannot read the outbox: %s", exc.diagnostics())
                self._wake.wait(1.0)
                continue
            if sent:
                continue
            if full:
                self._wake.wait(0.5)
            else:
                # Polls every half second too: connection changes and stop()
                # must be noticed while the outbox is idle.
                self._outbox.wait_for_new(0.5)

    def _note_refused(self, item_id: int, reason: str) -> None:
        """Record a refusal with the outbox, if it keeps them (for ``bwc-agent outbox``)."""
        mark = getattr(self._outbox, "mark_refused", None)
        if mark is None:
            return
        try:
            mark(item_id, reason)
        except AgentError as exc:
            log.error("MQTT: cannot record the refusal of outbox item %d: %s", item_id,
                      exc.diagnostics())

    def _forget_cleared_refusals(self) -> None:
        """Refused items IT staff asked to retry (or dropped) are tried again now."""
        cleared = getattr(self._outbox, "cleared", None)
        with self._flight_lock:
            refused = set(self._refused)
        if cleared is None or not refused:
            return
        again = cleared(refused)
        if again:
            log.info("MQTT: outbox items %s are tried again", sorted(again))
            with self._flight_lock:
                self._refused -= again

    def _publish_pending(self) -> tuple[int, bool]:
        """Publish what fits in the window; returns (items sent, window full)."""
        self._forget_cleared_refusals()
        with self._flight_lock:
            busy = self._inflight_ids | self._refused
            room = self.window - len(self._inflight_ids)
        if room <= 0:
            return 0, True
        fresh = [item for item in self._outbox.pending(self.window + len(busy))
                 if item.id not in busy][:room]
        sent = 0
        refused_now: tuple[int, str] | None = None
        for item in fresh:
            if self._stopping.is_set() or not self._ready.is_set():
                break
            with self._flight_lock:
                try:
                    info = self._publish(self._client, item.topic, item.payload, qos=item.qos,
                                         retain=item.retain)
                except TransportError as exc:
                    if not exc.retryable:
                        log.error("MQTT: outbox item %d cannot be published: %s", item.id, exc)
                        self._refused.add(item.id)
                        refused_now = (item.id, str(exc))
                        break
                    log.warning("MQTT: publishing outbox item %d failed: %s", item.id, exc)
                    break
                self._inflight[info.mid] = item.id
                self._inflight_ids.add(item.id)
            sent += 1
        if refused_now is not None:  # recorded off the flight lock (a store write)
            self._note_refused(*refused_now)
            return max(sent, 1), False  # look again at once: the next items may go
        return sent, False

    def _ack_loop(self) -> None:
        while True:
            event = self._acks.get()
            if event is None:
                return
            client, mid, reason_code = event
            with self._flight_lock:
                item_id = self._inflight.get(mid) if client is self._client else None
            if item_id is None:
                continue  # status, responses, or a replaced client
            if reason_code.is_failure:
                # Not delivered; retried on the next connection, not in a hot loop.
                log.error("MQTT: the broker refused outbox item %d: %s", item_id, reason_code)
                with self._flight_lock:
                    self._refused.add(item_id)
                self._note_refused(item_id, f"the broker refused it: {reason_code}")
            else:
                try:
                    self._outbox.mark_delivered(item_id)
                except AgentError as exc:
                    # Left undelivered: it is sent again, the platform de-duplicates.
                    log.error("MQTT: cannot mark outbox item %d delivered: %s", item_id,
                              exc.diagnostics())
            with self._flight_lock:
                # Only now: the drainer must not see it undelivered and not in flight.
                self._inflight.pop(mid, None)
                self._inflight_ids.discard(item_id)
            self._wake.set()

