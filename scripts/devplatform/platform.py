"""The development platform: MQTT intake, tus uploads, custody checks, signed acks, commands.

``DevPlatform`` plays the central platform of docs/PROTOCOL.md against a real
broker and the real ``TusServer``:

- it subscribes (MQTT 5, mutual TLS as CN ``platform``) to every station's
  ``status``, ``identity``, ``events`` and command ``reply/#`` topics;
- it records stations, events (de-duplicated by ``id``, duplicates counted)
  and clips in SQLite (``<workdir>/platform.db``), so a restart remembers
  what it has seen and which acks it still owes;
- once a clip has both its ``clip.sealed`` event and a completed upload (in
  either order) and its station's identity certificate is known, it checks
  the clip (``clip_problems``) and records the verdict, ``accepted`` or
  ``rejected: <reasons>``; only an accepted clip gets a DSSE ack, signed by
  the platform key, on ``bwc/v1/stations/<id>/ack`` (QoS 1); the acks a
  station has not confirmed (no ``clip.acknowledged`` event yet) are sent
  again at its next birth, and uploads completed before a crash of the
  platform are checked again when it starts;
- events are numbered per station (``seq``): once a station's status says
  every event up to ``event_seq`` is with the broker (``outbox`` 0), the seqs
  missing here (lost by a broker that crashed) are asked for again with the
  signed ``resend-events`` command;
- ``send_command`` publishes a signed command with an MQTT 5 response topic
  and correlation data and returns the station's response.

Threads: paho's network loop only parses and queues (and completes command
responses); one worker thread does every check, database write and ack, so
the checks of a clip never race; tus handler threads only queue completed
uploads.  A station's message is acknowledged to the broker (PUBACK) only
once it is recorded, as a platform consumer must: killed before that, the
platform gets it again from its broker session.  Every state change
notifies ``wait_for`` and rewrites ``<workdir>/verdicts.json``.

Fault knobs, settable at run time, for the station's refusal paths:
``ack_delay_s`` (acks sent that much later), ``sign_acks_with`` (another
dsse.Signer), ``ack_sha_override`` (a wrong sha256 in the ack).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import certificate_keyid, certificate_problems
from agent.durable import makedirs_durable, write_atomic
from agent.errors import TransportError
from agent.timeutil import now, rfc3339
from scripts.devplatform.pki import DevPki, check_station_id
from scripts.devplatform.tusserver import CompletedUpload, TusServer

log = logging.getLogger(__name__)

PREFIX = "bwc/v1/stations"
GAP_CHECK_DELAY_S = 3.0  # after a status saying every event is with the broker
RESEND_MAX = 10000  # the most events one resend-events command asks for
RESEND_AGAIN_S = 60.0  # the same events are asked for again after this long
MANIFEST_SCHEMA = "bwc.manifest/v1"
_HASH_BLOCK = 1024 * 1024
_SHA256_HEX = frozenset("0123456789abcdef")
T = TypeVar("T")


def file_sha256(path: Path) -> tuple[str, int]:
    """Hex SHA-256 and size of ``path``, read in 1 MiB blocks (memory stays bounded)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def clip_problems(
    *,
    station_id: str,
    clip_id: str,
    manifest_envelope: Any,
    event_sha256: Any,
    identity: dict[str, Any],
    upload_metadata: dict[str, str],
    stored_sha256: str,
    stored_size: int,
    ca_cert: x509.Certificate,
    at: dt.datetime,
) -> list[str]:
    """Every reason the platform must not acknowledge this clip; empty if it may.

    The manifest must verify under the station certificate of ``identity``,
    which must chain to ``ca_cert`` and name ``station_id``; the manifest's
    ``file.digests.sha256`` must equal the event's, the upload metadata's and
    the digest of the bytes stored (``stored_sha256``, computed here).
    """
    problems: list[str] = []
    keyid: str | None = None
    trusted: dict[str, dsse.PublicKey] = {}
    if identity.get("station_id") != station_id:
        problems.append(f"identity message names station {identity.get('station_id')!r}, "
                        f"published under {station_id!r}")
    try:
        cert = x509.load_pem_x509_certificate(str(identity.get("certificate", "")).encode())
        chain = [x509.load_pem_x509_certificate(str(c).encode())
                 for c in identity.get("chain") or []]
    except ValueError as exc:
        problems.append(f"station identity certificate is not a PEM certificate: {exc}")
    else:
        problems.extend(f"station certificate: {p}"
                        for p in certificate_problems(cert, at, [ca_cert], station_id=station_id,
                                                      intermediates=chain))
        public_key = cert.public_key()
        if isinstance(public_key, Ed25519PublicKey):
            keyid = certificate_keyid(cert)
            trusted[keyid] = public_key
            if identity.get("key_id") != keyid:
                problems.append(f"identity key_id {identity.get('key_id')!r} is not the "
                                f"certificate's keyid {keyid}")
        trusted.update(_previous_keys(identity, ca_cert, station_id))
    problems.extend(f"manifest: {p}"
                    for p in dsse.envelope_problems(manifest_envelope, trusted, dsse.MANIFEST))
    manifest = _manifest_payload(manifest_envelope, problems)
    digest: str | None = None
    if manifest is not None:
        if manifest.get("schema") != MANIFEST_SCHEMA:
            problems.append(f"manifest schema is {manifest.get('schema')!r}, "
                            f"expected {MANIFEST_SCHEMA!r}")
        if manifest.get("clip_id") != clip_id:
            problems.append(f"manifest clip_id {manifest.get('clip_id')!r} is not {clip_id!r}")
        station = _obj(manifest.get("station"))
        if station.get("id") != station_id:
            problems.append(f"manifest station.id {station.get('id')!r} is not the sending "
                            f"station {station_id!r}")
        if keyid is not None and station.get("key_id") not in trusted:
            problems.append(f"manifest station.key_id {station.get('key_id')!r} is not the "
                            f"certificate's keyid {keyid}")
        digest = _manifest_digest(manifest, problems)
        size = _obj(manifest.get("file")).get("size")
        if size != stored_size:
            problems.append(f"stored upload is {stored_size} bytes, the manifest says {size!r}")
    if digest is not None:
        for what, value in (("clip.sealed event sha256", event_sha256),
                            ("upload metadata sha256", upload_metadata.get("sha256")),
                            ("SHA-256 of the stored upload", stored_sha256)):
            if value != digest:
                problems.append(f"{what} {value!r} differs from the manifest's {digest}")
    if upload_metadata.get("station_id") != station_id:
        problems.append(f"upload metadata station_id {upload_metadata.get('station_id')!r} "
                        f"is not {station_id!r}")
    return problems


def _previous_keys(identity: dict[str, Any], ca_cert: x509.Certificate,
                   station_id: str) -> dict[str, dsse.PublicKey]:
    """Keys the station rotated away from (its identity's ``previous``): clips sealed
    before a rotation may reach the platform after it.  Each must chain to the CA and
    name the station; its validity is checked at its own end (it may have expired since)."""
    trusted: dict[str, dsse.PublicKey] = {}
    previous = identity.get("previous")
    for item in previous if isinstance(previous, list) else []:
        try:
            old = x509.load_pem_x509_certificate(str(item["certificate"]).encode())
            chain = [x509.load_pem_x509_certificate(str(c).encode()) for c in item["chain"]]
        except (KeyError, TypeError, ValueError):
            continue
        key = old.public_key()
        when = old.not_valid_after_utc - dt.timedelta(seconds=1)
        if isinstance(key, Ed25519PublicKey) and not certificate_problems(
                old, when, [ca_cert], station_id=station_id, intermediates=chain):
            trusted[certificate_keyid(old)] = key
    return trusted


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (for optional nested fields)."""
    return value if isinstance(value, dict) else {}


def _manifest_payload(envelope: Any, problems: list[str]) -> dict[str, Any] | None:
    # Parsed for the field checks even when the signature failed, so that the
    # verdict lists every problem; the verdict is a rejection either way.
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), str):
        return None
    try:
        payload = dsse.b64decode(envelope["payload"])
        manifest = json.loads(payload)
    except ValueError as exc:
        problems.append(f"manifest payload is not base64 JSON: {exc}")
        return None
    if not isinstance(manifest, dict):
        problems.append("manifest payload is not a JSON object")
        return None
    try:
        if canonicalize(manifest) != payload:
            problems.append("manifest payload is not RFC 8785 canonical JSON")
    except (TypeError, ValueError) as exc:
        problems.append(f"manifest payload cannot be canonicalized: {exc}")
    return manifest


def _manifest_digest(manifest: dict[str, Any], problems: list[str]) -> str | None:
    file = manifest.get("file")
    digests = file.get("digests") if isinstance(file, dict) else None
    digest = digests.get("sha256") if isinstance(digests, dict) else None
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _SHA256_HEX):
        problems.append(f"manifest file.digests.sha256 {digest!r} is not 64 lowercase hex digits")
        return None
    return digest


class DevPlatform:
    """The platform side of the protocol, on a real broker and a real tus server.

    ``start()`` once, ``stop()`` once (also a context manager).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        pki: DevPki,
        broker_host: str = "127.0.0.1",
        broker_port: int = 8883,
        *,
        tus_port: int = 0,
        tus_host: str = "127.0.0.1",
        client_id: str = "platform",
        session_expiry_s: int = 0,
        require_client_cert: bool = True,
        intake: bool = True,
        max_uploads: int | None = None,
        busy_retry_after: int = 5,
    ) -> None:
        self.workdir = makedirs_durable(workdir)
        self.pki = pki
        self.broker_host, self.broker_port = broker_host, broker_port
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        # intake=False: commands only (no subscriptions to station topics, no
        # uploads), for a command-line client beside a running platform.
        self.intake = intake
        self.verdicts_path = self.workdir / "verdicts.json"
        # Fault knobs (see the module docstring).
        self.ack_delay_s = 0.0
        self.sign_acks_with: dsse.Signer | None = None
        self.ack_sha_override: str | None = None

        self.records = Records(self.workdir / "platform.db")
        self.tus = TusServer(self.workdir / "uploads", tus_host, tus_port,
                             certfile=pki.server.cert_path, keyfile=pki.server.key_path,
                             client_ca=pki.ca_cert_path if require_client_cert else None,
                             on_complete=self._upload_completed, max_active=max_uploads,
                             busy_retry_after=busy_retry_after)
        self._work: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()  # notified on every recorded change
        self._responses: dict[str, dict[str, Any]] = {}
        self._timers: list[threading.Timer] = []
        # station -> (first, last, when): the events last asked for again
        self._resend_asked: dict[str, tuple[int, int, float]] = {}
        self._subscribed = threading.Event()
        self._connection = 0  # bumped by every CONNACK
        self._connect_error: str | None = None
        self._worker: threading.Thread | None = None
        self._client = self._make_client()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> DevPlatform:
        """Start the worker, connect and subscribe (waits for SUBACK), start the tus server."""
        self._worker = threading.Thread(target=self._work_loop, name="devplatform-worker",
                                        daemon=True)
        self._worker.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            self._client.connect(self.broker_host, self.broker_port, 30,
                                 clean_start=self.session_expiry_s == 0, properties=props)
        except (OSError, ssl.SSLError) as exc:
            self._stop_worker()
            raise TransportError(f"dev platform cannot connect to the broker at "
                                 f"{self.broker_host}:{self.broker_port}: {exc}") from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self._client.loop_stop()
            self._stop_worker()
            raise TransportError(f"dev platform: no subscription at {self.broker_host}:"
                                 f"{self.broker_port} within {timeout}s "
                                 f"({self._connect_error or 'no CONNACK/SUBACK'})")
        if self.intake:
            # Uploads completed before a crash whose notice was lost with it (the
            # worker's queue is memory): checked again, so every clip gets its ack.
            for upload, completed_at in self.tus.completed_uploads():
                known = self.records.clip(upload.metadata.get("clip_id", ""))
                if known is None or known["verdict"] != "accepted":
                    self._work.put(("upload", (upload, completed_at)))
            self.tus.start()
            self._changed()
        log.info("dev platform up: broker %s:%d, uploads %s", self.broker_host,
                 self.broker_port, self.tus.url if self.intake else "off")
        return self

    def stop(self) -> None:
        """Stop in reverse order; queued work is finished, acks not sent are owed on restart."""
        self.tus.stop()
        for timer in self._timers:
            timer.cancel()
        # paho's network thread may take one more turn after the socket closed and log
        # "Client is not connected" as an error: at a stop that is no error.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()
        self._stop_worker()
        self.records.close()

    def __enter__(self) -> DevPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def upload_url(self) -> str:
        return self.tus.url

    # -- queries -----------------------------------------------------------------------

    def verdicts(self) -> list[dict[str, Any]]:
        """One dict per clip that has a verdict, in the order they were first checked."""
        return self.records.verdicts()

    def clip(self, clip_id: str) -> dict[str, Any] | None:
        """Everything recorded about one clip (also while it waits for its parts)."""
        return self.records.clip(clip_id)

    def events(self, station_id: str) -> list[dict[str, Any]]:
        """The distinct events of ``station_id`` in the order received."""
        return self.records.events(station_id)

    def duplicates(self, station_id: str | None = None) -> int:
        """How many event deliveries repeated an id already recorded."""
        return self.records.duplicates(station_id)

    def stations(self) -> dict[str, dict[str, Any]]:
        return self.records.stations()

    def responses(self) -> list[dict[str, Any]]:
        """Every command response received, by correlation id."""
        with self._cond:
            return list(self._responses.values())

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0,
                 what: str = "condition") -> T:
        """Wait until ``predicate()`` is truthy and return it; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"dev platform: {what} not reached within {timeout}s")
                # Wake at least every 0.2 s: a predicate may depend on state
                # (files, other services) that does not notify us.
                self._cond.wait(min(remaining, 0.2))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every message and upload queued so far is handled (acks included)."""
        done = threading.Event()
        self._work.put(("flush", done))
        if not done.wait(timeout):
            raise TimeoutError(f"dev platform: work queue not drained within {timeout}s")

    # -- commands and raw publishing ---------------------------------------------------

    def reply_topic(self, station_id: str) -> str:
        return f"{PREFIX}/{station_id}/reply/{self.client_id}"

    def command_envelope(self, station_id: str, name: str, args: dict[str, Any], *,
                         expires_in: float = 600, issued_at: dt.datetime | None = None,
                         command_id: str | None = None,
                         signer: dsse.Signer | None = None) -> dict[str, Any]:
        """A signed command (PROTOCOL.md section 6); ``reply_to``/``correlation_id`` set too."""
        issued = issued_at or dt.datetime.now(dt.UTC)
        command_id = command_id or str(uuid.uuid4())
        payload = {
            "id": command_id, "name": name, "station_id": station_id,
            "issued_at": rfc3339(issued),
            "expires_at": rfc3339(issued + dt.timedelta(seconds=expires_in)),
            "args": args, "reply_to": self.reply_topic(station_id),
            "correlation_id": command_id,
        }
        return dsse.sign_envelope(dsse.COMMAND, canonicalize(payload),
                                  [signer or self.pki.signer()])

    def send_command(self, station_id: str, name: str, args: dict[str, Any], *,
                     expires_in: float = 600, response_timeout: float = 10) -> dict[str, Any]:
        """Sign and send a command; returns the station's response payload."""
        envelope = self.command_envelope(station_id, name, args, expires_in=expires_in)
        return self.send_envelope(station_id, name, envelope, response_timeout=response_timeout)

    def send_envelope(self, station_id: str, name: str, envelope: Any, *,
                      response_timeout: float = 10) -> dict[str, Any]:
        """Publish any envelope (forged, replayed, ...) as command ``name``; return the response.

        The correlation data is the payload's ``correlation_id`` when it has
        one, else a fresh id; raises TransportError if no response arrives.
        """
        check_station_id(station_id)
        correlation = _payload_field(envelope, "correlation_id") or str(uuid.uuid4())
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic(station_id)
        props.CorrelationData = correlation.encode()
        with self._cond:
            self._responses.pop(correlation, None)
        self.publish_raw(f"{PREFIX}/{station_id}/cmd/{name}", envelope, properties=props)
        try:
            return self.wait_for(lambda: self._responses.get(correlation), response_timeout,
                                 f"response to command {name!r} ({correlation})")
        except TimeoutError as exc:
            raise TransportError(f"station {station_id} did not answer command {name!r} "
                                 f"(correlation {correlation}) within {response_timeout}s",
                                 retryable=True) from exc

    def publish_raw(self, topic: str, payload: bytes | str | dict[str, Any] | list[Any], *,
                    qos: int = 1, retain: bool = False, properties: Properties | None = None,
                    timeout: float = 5.0) -> None:
        """Publish anything anywhere the platform may (tests: forged commands, wrong acks)."""
        if isinstance(payload, dict | list):
            payload = json.dumps(payload, separators=(",", ":"))
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            info = self._client.publish(topic, data, qos=qos, retain=retain,
                                        properties=properties)
            info.wait_for_publish(timeout)
        except (ValueError, RuntimeError) as exc:
            raise TransportError(f"dev platform cannot publish to {topic!r}: {exc}") from exc
        if qos and not info.is_published():
            raise TransportError(f"dev platform: publish to {topic!r} not acknowledged "
                                 f"within {timeout}s")

    # -- MQTT (paho's network thread) --------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.tls_set(ca_certs=str(self.pki.ca_cert_path),
                       certfile=str(self.pki.platform_client.cert_path),
                       keyfile=str(self.pki.platform_client.key_path),
                       cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(1, 10)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._connect_error = f"broker refused the connection: {reason_code}"
            log.error("dev platform: %s", self._connect_error)
            return
        self._connection += 1  # acks of messages from an earlier connection are not sent
        kinds = ("status", "identity", "events", "reply/#") if self.intake else ("reply/#",)
        client.subscribe([(f"{PREFIX}/+/{kind}", 1) for kind in kinds])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            self._connect_error = f"broker refused subscriptions: {', '.join(refused)}"
            log.error("dev platform: %s", self._connect_error)
            return
        self._subscribed.set()
        if self.intake:
            self._work.put(("owed-acks", None))  # acks not sent before a disconnect or restart

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 5 or "/".join(parts[:3]) != PREFIX:
            log.warning("dev platform: ignoring message on %r", msg.topic)
            self._ack(msg.mid, msg.qos, self._connection)
            return
        station_id, kind = parts[3], "/".join(parts[4:])
        if kind.startswith("reply/"):
            correlation = getattr(msg.properties, "CorrelationData", None)
            self._response(station_id, bytes(msg.payload),
                           bytes(correlation) if correlation is not None else None)
            self._ack(msg.mid, msg.qos, self._connection)
        else:
            self._work.put(("message", (station_id, kind, bytes(msg.payload),
                                        (msg.mid, msg.qos, self._connection))))

    def _ack(self, mid: int, qos: int, connection: int) -> None:
        """PUBACK a message handled; not on a later connection (the broker sends it again)."""
        if qos > 0 and connection == self._connection:
            try:
                self._client.ack(mid, qos)
            except (RuntimeError, ValueError) as exc:
                log.warning("dev platform: could not acknowledge message %d: %s", mid, exc)

    def _response(self, station_id: str, payload: bytes, correlation: bytes | None) -> None:
        try:
            response = json.loads(payload)
        except ValueError:
            log.warning("dev platform: non-JSON command response from %s", station_id)
            return
        if not isinstance(response, dict):
            return
        key = (correlation.decode(errors="replace") if correlation is not None
               else str(response.get("correlation_id") or response.get("command_id")))
        log.info("dev platform: response from %s to %s: ok=%s", station_id, key,
                 response.get("ok"))
        with self._cond:
            self._responses[key] = response
            self._cond.notify_all()

    # -- the worker --------------------------------------------------------------------

    def _upload_completed(self, upload: CompletedUpload) -> None:
        # A tus handler thread, with the upload's lock held: only queue.
        self._work.put(("upload", (upload, now())))

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._work.put(None)
            self._worker.join()
            self._worker = None

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            kind, value = item
            try:
                if kind == "message":
                    *message, ack = value
                    try:
                        self._handle_message(*message)
                    finally:
                        self._ack(*ack)  # recorded (or refused, logged): the broker forgets it
                elif kind == "upload":
                    self._handle_upload(*value)
                elif kind == "flush":
                    value.set()
                elif kind == "ack":
                    self._send_ack(value)
                elif kind == "gaps":
                    self._check_gaps(*value)
                elif kind == "owed-acks":
                    for clip_id in self.records.owed_acks():
                        self._schedule_ack(clip_id)
            except Exception:
                log.exception("dev platform: handling %s failed", kind)
            self._changed()

    def _handle_message(self, station_id: str, kind: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            log.warning("dev platform: %s/%s payload is not JSON", station_id, kind)
            return
        if kind == "status":
            self.records.station_status(station_id, body)
            if isinstance(body, dict) and body.get("state") == "online":
                # A broker that lost its sessions (a crash) dropped the acks published
                # while the station was away: send again what the station never confirmed.
                for clip_id in self.records.unconfirmed_acks(station_id):
                    self._schedule_ack(clip_id)
                self._schedule_gap_check(station_id, body)
        elif kind == "identity":
            if self.records.station_identity(station_id, body):
                for clip_id in self.records.unsettled_clips(station_id):
                    self._evaluate(clip_id)
        elif kind == "events":
            self._handle_event(station_id, body)

    def _handle_event(self, station_id: str, event: Any) -> None:
        if not (isinstance(event, dict) and isinstance(event.get("id"), str)
                and isinstance(event.get("type"), str)):
            log.warning("dev platform: malformed event from %s: %.200r", station_id, event)
            return
        if event.get("station_id") != station_id:
            log.warning("dev platform: event %s published under %s names station %r; ignored",
                        event["id"], station_id, event.get("station_id"))
            return
        if not self.records.add_event(station_id, event):
            log.info("dev platform: duplicate event %s (%s) from %s", event["id"],
                     event["type"], station_id)
            return
        data = _obj(event.get("data"))
        if event["type"] == "clip.sealed" and isinstance(data.get("clip_id"), str) \
                and self.records.clip_sealed(station_id, data):
            self._evaluate(data["clip_id"])

    def _handle_upload(self, upload: CompletedUpload, completed_at: str) -> None:
        clip_id = upload.metadata.get("clip_id")
        if not clip_id:
            log.warning("dev platform: upload %s has no clip_id metadata; not a clip",
                        upload.id)
            return
        sha256, size = file_sha256(upload.path)
        if self.records.clip_uploaded(clip_id, upload, completed_at, sha256, size):
            self._evaluate(clip_id)

    def _evaluate(self, clip_id: str) -> None:
        clip = self.records.clip(clip_id)
        if clip is None or clip["manifest"] is None or clip["upload_id"] is None \
                or clip["verdict"] == "accepted":
            return
        identity = self.records.identity(clip["station_id"])
        if identity is None:
            log.info("dev platform: clip %s waits for the identity of %s", clip_id,
                     clip["station_id"])
            return
        problems = clip_problems(
            station_id=clip["station_id"], clip_id=clip_id,
            manifest_envelope=clip["manifest"], event_sha256=clip["event_sha256"],
            identity=identity, upload_metadata=clip["upload_metadata"],
            stored_sha256=clip["stored_sha256"], stored_size=clip["stored_size"],
            ca_cert=self.pki.ca.cert, at=dt.datetime.now(dt.UTC))
        verdict = "accepted" if not problems else "rejected: " + "; ".join(problems)
        self.records.set_verdict(clip_id, verdict, problems)
        log.info("dev platform: clip %s from %s %s", clip_id, clip["station_id"], verdict)
        if not problems:
            self._schedule_ack(clip_id)

    # -- acknowledgements --------------------------------------------------------------

    def _schedule_gap_check(self, station_id: str, status: dict[str, Any]) -> None:
        """Once a station says every event it made is with the broker, find those lost since.

        ``event_seq`` is its newest event; with ``outbox`` 0 each one was acknowledged
        by the broker.  Checked a moment later (the broker may still be delivering
        them); a seq missing then was lost by the broker (a crash), and the station
        is asked to send those events again (resend-events, PROTOCOL.md section 6).
        """
        seq, outbox = status.get("event_seq"), status.get("outbox")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or outbox != 0:
            return
        timer = threading.Timer(GAP_CHECK_DELAY_S, self._work.put,
                                (("gaps", (station_id, seq)),))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _check_gaps(self, station_id: str, seq: int) -> None:
        missing = self.records.missing_events(station_id, seq)
        if not missing:
            return
        first, last = missing[0], min(missing[-1], missing[0] + RESEND_MAX - 1)
        asked = self._resend_asked.get(station_id)
        if asked is not None and asked[:2] == (first, last) \
                and time.monotonic() - asked[2] < RESEND_AGAIN_S:
            return  # asked just now; a later status shows whether the events came
        self._resend_asked[station_id] = (first, last, time.monotonic())
        log.warning("dev platform: %d events of %s missing (seq %d..%d); asking it to send "
                    "them again", len(missing), station_id, first, last)
        envelope = self.command_envelope(station_id, "resend-events",
                                         {"from_seq": first, "to_seq": last})
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic(station_id)
        props.CorrelationData = str(_payload_field(envelope, "correlation_id")).encode()
        try:
            self.publish_raw(f"{PREFIX}/{station_id}/cmd/resend-events", envelope,
                             properties=props)
        except TransportError as exc:
            self._resend_asked.pop(station_id, None)
            log.warning("dev platform: resend-events to %s not sent (%s)", station_id, exc)

    def _schedule_ack(self, clip_id: str) -> None:
        if self.ack_delay_s > 0:
            timer = threading.Timer(self.ack_delay_s, self._work.put, (("ack", clip_id),))
            timer.daemon = True
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()
        else:
            self._send_ack(clip_id)

    def _send_ack(self, clip_id: str) -> None:
        clip = self.records.clip(clip_id)
        if clip is None or clip["verdict"] != "accepted":
            return
        ack = {
            "clip_id": clip_id,
            "sha256": self.ack_sha_override or clip["stored_sha256"],
            "station_id": clip["station_id"],
            "stored_at": clip["uploaded_at"],
            "location": Path(clip["upload_path"]).resolve().as_uri(),
        }
        signer = self.sign_acks_with or self.pki.signer()
        envelope = dsse.sign_envelope(dsse.ACK, canonicalize(ack), [signer])
        try:
            self.publish_raw(f"{PREFIX}/{clip['station_id']}/ack", envelope)
        except TransportError as exc:
            log.warning("dev platform: ack for %s not sent (%s); owed until reconnect",
                        clip_id, exc)
            return
        self.records.ack_sent(clip_id, envelope)
        log.info("dev platform: acknowledged clip %s (sha256 %s)", clip_id, ack["sha256"])

    def _changed(self) -> None:
        verdicts = self.records.verdicts()
        with contextlib.suppress(OSError):
            write_atomic(self.verdicts_path,
                         json.dumps(verdicts, indent=2, ensure_ascii=False).encode())
        with self._cond:
            self._cond.notify_all()


def _payload_field(envelope: Any, name: str) -> str | None:
    """A string field of an envelope's JSON payload, unverified (for correlation only)."""
    try:
        value = json.loads(base64.b64decode(envelope["payload"])).get(name)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station_id TEXT PRIMARY KEY, state TEXT, status TEXT, identity TEXT, last_seen TEXT);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, station_id TEXT NOT NULL, type TEXT NOT NULL, seq INTEGER,
    received_at TEXT NOT NULL, body TEXT NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS clips (
    clip_id TEXT PRIMARY KEY, station_id TEXT, event_id TEXT, event_sha256 TEXT,
    manifest TEXT, upload_id TEXT, upload_path TEXT, upload_metadata TEXT,
    stored_sha256 TEXT, stored_size INTEGER, uploaded_at TEXT,
    verdict TEXT, reasons TEXT, checked_at TEXT, ack TEXT, ack_sent_at TEXT);
"""
_JSON_COLUMNS = ("event_sha256", "manifest", "upload_metadata", "reasons", "ack")


class Records:
    """What the platform has seen, in SQLite; one connection shared under a lock.

    Writes come from the platform's worker thread, reads from any thread
    (tests, the command line).  Each method is one transaction.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock, self._db:
            return self._db.execute(sql, args).rowcount

    # -- stations ----------------------------------------------------------------------

    def _touch(self, station_id: str) -> None:
        self._db.execute("INSERT INTO stations (station_id, last_seen) VALUES (?, ?) "
                         "ON CONFLICT (station_id) DO UPDATE SET last_seen = excluded.last_seen",
                         (station_id, now()))

    def station_status(self, station_id: str, status: Any) -> None:
        state = status.get("state") if isinstance(status, dict) else None
        with self._lock, self._db:
            self._touch(station_id)
            self._db.execute("UPDATE stations SET state = ?, status = ? WHERE station_id = ?",
                             (state, json.dumps(status), station_id))

    def station_identity(self, station_id: str, identity: Any) -> bool:
        """Record the station's identity message; True if it changed."""
        if not isinstance(identity, dict):
            log.warning("dev platform: identity of %s is not a JSON object", station_id)
            return False
        text = json.dumps(identity, sort_keys=True)
        with self._lock, self._db:
            self._touch(station_id)
            return self._db.execute(
                "UPDATE stations SET identity = ? WHERE station_id = ? "
                "AND identity IS NOT ?", (text, station_id, text)).rowcount > 0

    def identity(self, station_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT identity FROM stations WHERE station_id = ?", (station_id,))
        return json.loads(rows[0]["identity"]) if rows and rows[0]["identity"] else None

    def stations(self) -> dict[str, dict[str, Any]]:
        result = {}
        for row in self._rows("SELECT * FROM stations ORDER BY station_id"):
            result[row["station_id"]] = {
                "state": row["state"], "last_seen": row["last_seen"],
                "status": json.loads(row["status"]) if row["status"] else None,
                "identity": json.loads(row["identity"]) if row["identity"] else None}
        return result

    # -- events ------------------------------------------------------------------------

    def add_event(self, station_id: str, event: dict[str, Any]) -> bool:
        """Record ``event``; False (and one more duplicate counted) if its id was seen."""
        seq = event.get("seq") if isinstance(event.get("seq"), int) else None
        with self._lock, self._db:
            self._touch(station_id)
            added = self._db.execute(
                "INSERT OR IGNORE INTO events (id, station_id, type, seq, received_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)", (event["id"], station_id, event["type"], seq,
                                              now(), json.dumps(event))).rowcount
            if not added:
                self._db.execute("UPDATE events SET duplicates = duplicates + 1 WHERE id = ?",
                                 (event["id"],))
            return bool(added)

    def events(self, station_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT body FROM events WHERE station_id = ? ORDER BY rowid",
                          (station_id,))
        return [json.loads(row["body"]) for row in rows]

    def duplicates(self, station_id: str | None = None) -> int:
        rows = self._rows("SELECT coalesce(sum(duplicates), 0) AS n FROM events "
                          "WHERE ? IS NULL OR station_id = ?", (station_id, station_id))
        return int(rows[0]["n"])

    # -- clips -------------------------------------------------------------------------

    def clip(self, clip_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM clips WHERE clip_id = ?", (clip_id,))
        if not rows:
            return None
        clip = dict(rows[0])
        for column in _JSON_COLUMNS:
            clip[column] = json.loads(clip[column]) if clip[column] is not None else None
        return clip

    def clip_sealed(self, station_id: str, data: dict[str, Any]) -> bool:
        """Record a clip.sealed event's manifest; False if the clip already has one."""
        clip_id = data["clip_id"]
        with self._lock, self._db:
            row = self._db.execute("SELECT station_id, manifest FROM clips WHERE clip_id = ?",
                                   (clip_id,)).fetchone()
            if row is not None and row["manifest"] is not None:
                # A sealed manifest is never rewritten; a second one is kept out.
                log.warning("dev platform: clip %s already has a manifest (from %s); the one "
                            "from %s is ignored", clip_id, row["station_id"], station_id)
                return False
            self._db.execute(
                "INSERT INTO clips (clip_id, station_id, event_sha256, manifest) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (clip_id) DO UPDATE SET "
                "station_id = excluded.station_id, event_sha256 = excluded.event_sha256, "
                "manifest = excluded.manifest",
                (clip_id, station_id, json.dumps(data.get("sha256")),
                 json.dumps(data.get("manifest"))))
            return True

    def clip_uploaded(self, clip_id: str, upload: CompletedUpload, completed_at: str,
                      sha256: str, size: int) -> bool:
        """Record a completed upload of ``clip_id``; False if the clip is already accepted."""
        with self._lock, self._db:
            row = self._db.execute("SELECT verdict FROM clips WHERE clip_id = ?",
                                   (clip_id,)).fetchone()
            if row is not None and row["verdict"] == "accepted":
                log.info("dev platform: clip %s is already accepted; upload %s ignored",
                         clip_id, upload.id)
                return False
            self._db.execute(
                "INSERT INTO clips (clip_id) VALUES (?) ON CONFLICT (clip_id) DO NOTHING",
                (clip_id,))
            self._db.execute(
                "UPDATE clips SET upload_id = ?, upload_path = ?, upload_metadata = ?, "
                "stored_sha256 = ?, stored_size = ?, uploaded_at = ? WHERE clip_id = ?",
                (upload.id, str(upload.path), json.dumps(upload.metadata), sha256, size,
                 completed_at, clip_id))
            return True

    def unsettled_clips(self, station_id: str) -> list[str]:
        """Clips of ``station_id`` with manifest and upload but no acceptance yet."""
        rows = self._rows("SELECT clip_id FROM clips WHERE station_id = ? AND manifest IS NOT "
                          "NULL AND upload_id IS NOT NULL AND verdict IS NOT 'accepted' "
                          "ORDER BY rowid", (station_id,))
        return [row["clip_id"] for row in rows]

    def set_verdict(self, clip_id: str, verdict: str, reasons: list[str]) -> None:
        self._write("UPDATE clips SET verdict = ?, reasons = ?, checked_at = ? "
                    "WHERE clip_id = ?", (verdict, json.dumps(reasons), now(), clip_id))

    def ack_sent(self, clip_id: str, envelope: dict[str, Any]) -> None:
        self._write("UPDATE clips SET ack = ?, ack_sent_at = ? WHERE clip_id = ?",
                    (json.dumps(envelope), now(), clip_id))

    def missing_events(self, station_id: str, up_to: int) -> list[int]:
        """The seqs 1..``up_to`` of ``station_id``'s events never received, in order."""
        have = {row["seq"] for row in self._rows(
            "SELECT seq FROM events WHERE station_id = ? AND seq BETWEEN 1 AND ?",
            (station_id, up_to))}
        return [seq for seq in range(1, up_to + 1) if seq not in have]

    def unconfirmed_acks(self, station_id: str) -> list[str]:
        """Clips of ``station_id`` acknowledged but without its ``clip.acknowledged`` event."""
        rows = self._rows(
            "SELECT clip_id FROM clips WHERE station_id = ? AND verdict = 'accepted' "
            "AND ack_sent_at IS NOT NULL AND clip_id NOT IN (SELECT json_extract(body, "
            "'$.data.clip_id') FROM events WHERE station_id = ? AND type = "
            "'clip.acknowledged') ORDER BY rowid", (station_id, station_id))
        return [row["clip_id"] for row in rows]

    def owed_acks(self) -> list[str]:
        rows = self._rows("SELECT clip_id FROM clips WHERE verdict = 'accepted' "
                          "AND ack_sent_at IS NULL ORDER BY rowid")
        return [row["clip_id"] for row in rows]

    def verdicts(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM clips WHERE verdict IS NOT NULL ORDER BY rowid")
        return [{
            "clip_id": row["clip_id"], "station_id": row["station_id"],
            "verdict": row["verdict"], "reasons": json.loads(row["reasons"] or "[]"),
            "sha256": row["stored_sha256"], "size": row["stored_size"],
            "upload_id": row["upload_id"], "checked_at": row["checked_at"],
            "ack_sent": row["ack_sent_at"] is not None, "ack_sent_at": row["ack_sent_at"],
        } for row in rows]
