"""The development platform against a real mosquitto and its real tus server.

The station side is a fake made of plain library calls (a StationKey, a
DSSE-signed manifest of a real file, paho publishes, a TusClient upload), so
that these tests check the platform's contract, not the agent's sync code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import (
    StationKey,
    init_station_keys,
    issue_station_certificate,
    load_certificate,
    load_public_key,
    make_dev_certificate,
)
from agent.devpki import cert_pem
from agent.sync.tus import TusClient
from agent.timeutil import now, uuid7
from scripts.devplatform.pki import DevPki, make_dev_pki
from scripts.devplatform.platform import DevPlatform
from tests.support.mosquitto import STATION_ACL, Broker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The identity topic of PROTOCOL.md section 3, in case the shared ACL lacks it.
ACL = "pattern write bwc/v1/stations/%u/identity\n" + STATION_ACL


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker"), pki.ca, acl=ACL) as running:
        yield running


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
             broker: Broker) -> Iterator[DevPlatform]:
    with DevPlatform(tmp_path_factory.mktemp("platform"), pki, broker.host,
                     broker.port) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset_knobs(platform: DevPlatform) -> Iterator[None]:
    yield
    platform.ack_delay_s = 0.0
    platform.sign_acks_with = None
    platform.ack_sha_override = None


class FakeStation:
    """A station made of library calls: its own key, certificate, MQTT client and uploads."""

    def __init__(self, pki: DevPki, broker: Broker, platform: DevPlatform, station_id: str,
                 *, enrolled: bool = True) -> None:
        self.pki, self.platform, self.id = pki, platform, station_id
        self.key = StationKey.generate()
        cert = (issue_station_certificate(pki.ca, self.key, station_id) if enrolled
                else make_dev_certificate(self.key, station_id))
        self.cert_pem = cert_pem(cert).decode()
        self.tls = pki.station_tls(station_id)
        self.received: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=station_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(pki.ca_cert_path), certfile=str(self.tls.cert_path),
                            keyfile=str(self.tls.key_path))
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(self.topic("ack"), 1), (self.topic("cmd/+"), 1)])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        assert subscribed.wait(5), broker.log_text()[-2000:]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topic(self, kind: str) -> str:
        return f"bwc/v1/stations/{self.id}/{kind}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append(msg)
            self._cond.notify_all()

    def wait_messages(self, topic: str, count: int = 1, timeout: float = 10) -> list[Any]:
        def matching() -> list[mqtt.MQTTMessage]:
            return [m for m in self.received if m.topic == self.topic(topic)]
        with self._cond:
            assert self._cond.wait_for(lambda: len(matching()) >= count, timeout), (
                f"{self.id}: expected {count} message(s) on {topic}, got "
                f"{[(m.topic, m.payload[:80]) for m in self.received]}")
            return [json.loads(m.payload) for m in matching()]

    def publish(self, kind: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        info = self.client.publish(self.topic(kind), json.dumps(payload), qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()

    def publish_identity(self) -> None:
        self.publish("identity", {"station_id": self.id, "key_id": self.key.keyid,
                                  "certificate": self.cert_pem}, retain=True)

    def event(self, type_: str, data: dict[str, Any], event_id: str | None = None) -> dict:
        event = {"id": event_id or str(uuid.uuid4()), "type": type_, "station_id": self.id,
                 "seq": 1, "at": now(), "data": data}
        self.publish("events", event)
        return event

    def seal(self, path: Path, *, signer: StationKey | None = None) -> tuple[str, str]:
        """Sign a manifest of ``path`` and send clip.sealed; returns (clip_id, sha256)."""
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        clip_id = uuid7()
        manifest = {
            "schema": "bwc.manifest/v1", "clip_id": clip_id,
            "file": {"name": path.name, "path": f"DCIM/{path.name}", "size": len(data),
                     "mtime": now(), "digests": {"sha256": sha}},
            "station": {"id": self.id, "key_id": self.key.keyid},
            "case_id": None, "flags": [],
        }
        envelope = dsse.sign_envelope(dsse.MANIFEST, canonicalize(manifest),
                                      [signer or self.key])
        self.event("clip.sealed", {"clip_id": clip_id, "sha256": sha, "size": len(data),
                                   "important": False, "manifest": envelope})
        return clip_id, sha

    def upload(self, path: Path, clip_id: str, sha: str) -> None:
        with TusClient(self.platform.upload_url, ca_file=self.pki.ca_cert_path,
                       cert=(self.tls.cert_path, self.tls.key_path)) as client:
            size = path.stat().st_size
            url = client.create(size, {"clip_id": clip_id, "sha256": sha,
                                       "station_id": self.id, "filename": path.name})
            assert client.upload(url, path, start=0, total=size) == size

    def no_ack_so_far(self) -> list[Any]:
        """Acks received before a marker the platform sends now (MQTT keeps their order)."""
        marker = {"marker": str(uuid.uuid4())}
        self.platform.flush()  # an ack for work done so far is published (and PUBACKed) by now
        self.platform.publish_raw(self.topic("ack"), marker)
        acks = self.wait_messages("ack")
        while marker not in acks:
            acks = self.wait_messages("ack", count=len(acks) + 1)
        return acks[:acks.index(marker)]


@pytest.fixture
def station_factory(pki: DevPki, broker: Broker,
                    platform: DevPlatform) -> Iterator[Any]:
    made: list[FakeStation] = []

    def make(station_id: str, **kwargs: Any) -> FakeStation:
        station = FakeStation(pki, broker, platform, station_id, **kwargs)
        made.append(station)
        return station

    yield make
    for station in made:
        station.close()


def clip_file(directory: Path, size: int = 300_000, seed: int = 1) -> Path:
    path = directory / f"clip-{seed}.mp4"
    path.write_bytes(hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))
    return path


def verdict_of(platform: DevPlatform, clip_id: str) -> dict[str, Any]:
    return platform.wait_for(
        lambda: next((v for v in platform.verdicts() if v["clip_id"] == clip_id), None),
        10, f"verdict for {clip_id}")


@pytest.mark.parametrize("upload_first", [False, True], ids=["event-first", "upload-first"])
def test_valid_clip_gets_an_ack_signed_by_the_platform_key(
        platform: DevPlatform, pki: DevPki, station_factory: Any, tmp_path: Path,
        upload_first: bool) -> None:
    station = station_factory(f"ST-OK-{int(upload_first)}")
    station.publish_identity()
    path = clip_file(tmp_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if upload_first:
        clip_id = uuid7()
        # Upload first, then a manifest for that very clip id.
        station.upload(path, clip_id, sha)
        platform.wait_for(lambda: (platform.clip(clip_id) or {}).get("upload_id"), 10)
        data = path.read_bytes()
        manifest = {"schema": "bwc.manifest/v1", "clip_id": clip_id,
                    "file": {"name": path.name, "path": path.name, "size": len(data),
                             "mtime": now(), "digests": {"sha256": sha}},
                    "station": {"id": station.id, "key_id": station.key.keyid}}
        envelope = dsse.sign_envelope(dsse.MANIFEST, canonicalize(manifest), [station.key])
        station.event("clip.sealed", {"clip_id": clip_id, "sha256": sha, "size": len(data),
                                      "important": True, "manifest": envelope})
    else:
        clip_id, _ = station.seal(path)
        station.upload(path, clip_id, sha)

    (envelope,) = station.wait_messages("ack")
    platform_key = load_public_key(pki.platform_pub_path)
    payload = json.loads(dsse.verify_envelope(envelope, {pki.platform_keyid: platform_key},
                                              dsse.ACK))
    assert payload["clip_id"] == clip_id
    assert payload["sha256"] == sha
    assert payload["station_id"] == station.id
    assert payload["stored_at"].endswith("Z")
    stored = Path(payload["location"].removeprefix("file://"))
    assert payload["location"].startswith("file:///")
    assert stored.read_bytes() == path.read_bytes()
    verdict = verdict_of(platform, clip_id)
    assert verdict["verdict"] == "accepted" and verdict["reasons"] == []
    assert verdict["sha256"] == sha
    platform.wait_for(lambda: verdict_of(platform, clip_id)["ack_sent"], 5)
    # verdicts.json follows each change (written after the database).
    platform.wait_for(lambda: any(
        v["clip_id"] == clip_id and v["verdict"] == "accepted" and v["ack_sent"]
        for v in json.loads(platform.verdicts_path.read_text())), 5, "verdicts.json")


def test_manifest_signed_under_a_certificate_not_from_the_ca_is_rejected(
        platform: DevPlatform, station_factory: Any, tmp_path: Path) -> None:
    station = station_factory("ST-SELF", enrolled=False)  # self-signed station certificate
    station.publish_identity()
    path = clip_file(tmp_path, seed=2)
    clip_id, sha = station.seal(path)
    station.upload(path, clip_id, sha)

    verdict = verdict_of(platform, clip_id)
    assert verdict["verdict"].startswith("rejected: ")
    assert any("station certificate" in r and "trust anchor" in r for r in verdict["reasons"])
    assert station.no_ack_so_far() == []
    assert platform.clip(clip_id)["ack"] is None


def test_manifest_signed_by_another_key_is_rejected(
        platform: DevPlatform, station_factory: Any, tmp_path: Path) -> None:
    station = station_factory("ST-OTHERKEY")
    station.publish_identity()
    path = clip_file(tmp_path, seed=3)
    clip_id, sha = station.seal(path, signer=StationKey.generate())
    station.upload(path, clip_id, sha)

    verdict = verdict_of(platform, clip_id)
    assert verdict["verdict"].startswith("rejected: ")
    assert any("keyid is not among" in r for r in verdict["reasons"]), verdict["reasons"]
    assert station.no_ack_so_far() == []


def test_upload_whose_bytes_differ_from_the_manifest_is_rejected(
        platform: DevPlatform, station_factory: Any, tmp_path: Path) -> None:
    station = station_factory("ST-BADBYTES")
    station.publish_identity()
    path = clip_file(tmp_path, seed=4)
    clip_id, sha = station.seal(path)
    damaged = tmp_path / "damaged.mp4"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    damaged.write_bytes(bytes(data))
    station.upload(damaged, clip_id, sha)  # the metadata still claims the manifest digest

    verdict = verdict_of(platform, clip_id)
    stored = hashlib.sha256(bytes(data)).hexdigest()
    assert verdict["verdict"].startswith("rejected: ")
    assert verdict["sha256"] == stored
    assert verdict["reasons"] == [
        f"SHA-256 of the stored upload {stored!r} differs from the manifest's {sha}"]
    assert station.no_ack_so_far() == []


def test_duplicate_event_ids_are_recorded_once_and_counted(
        platform: DevPlatform, station_factory: Any) -> None:
    station = station_factory("ST-DUP")
    docked = station.event("device.docked", {"serial": "SIM0001"})
    for _ in range(2):
        station.publish("events", docked)
    undocked = station.event("device.undocked", {"serial": "SIM0001"})

    platform.wait_for(lambda: len(platform.events(station.id)) == 2
                      and platform.duplicates(station.id) == 2, 10, "two events, two dups")
    assert [e["id"] for e in platform.events(station.id)] == [docked["id"], undocked["id"]]
    assert platform.events(station.id)[0] == docked


def test_ack_fault_knobs_make_acks_the_station_must_refuse(
        platform: DevPlatform, pki: DevPki, station_factory: Any, tmp_path: Path) -> None:
    station = station_factory("ST-KNOBS")
    station.publish_identity()
    platform_key = {pki.platform_keyid: load_public_key(pki.platform_pub_path)}

    platform.sign_acks_with = StationKey.generate()
    path = clip_file(tmp_path, seed=5)
    clip_id, sha = station.seal(path)
    station.upload(path, clip_id, sha)
    (forged,) = station.wait_messages("ack")
    assert dsse.envelope_problems(forged, platform_key, dsse.ACK)

    platform.sign_acks_with = None
    platform.ack_sha_override = "0" * 64
    path = clip_file(tmp_path, seed=6)
    clip_id, sha = station.seal(path)
    station.upload(path, clip_id, sha)
    wrong = station.wait_messages("ack", count=2)[1]
    payload = json.loads(dsse.verify_envelope(wrong, platform_key, dsse.ACK))
    assert payload["clip_id"] == clip_id and payload["sha256"] == "0" * 64 != sha


def answer_commands(station: FakeStation, pki: DevPki) -> None:
    """Make ``station`` answer each command it can verify with the platform key."""
    platform_key = {pki.platform_keyid: load_public_key(pki.platform_pub_path)}

    def respond(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        command = json.loads(dsse.verify_envelope(json.loads(msg.payload), platform_key,
                                                  dsse.COMMAND))
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        response = {"command_id": command["id"], "name": command["name"], "ok": True,
                    "result": {"tagged": command["args"]["clips"], "unknown": [],
                               "station": command["station_id"]},
                    "error": None, "at": now(), "correlation_id": None}
        client.publish(msg.properties.ResponseTopic, json.dumps(response), qos=1,
                       properties=props)

    station.client.on_message = respond


def test_send_command_returns_the_station_response(
        platform: DevPlatform, pki: DevPki, station_factory: Any) -> None:
    station = station_factory("ST-CMD")
    answer_commands(station, pki)
    first = platform.send_command(station.id, "tag", {"case_id": "CASE-1", "clips": ["a"]},
                                  response_timeout=5)
    second = platform.send_command(station.id, "tag", {"case_id": "CASE-2", "clips": ["b"]},
                                   response_timeout=5)
    assert first["ok"] is True and first["result"]["tagged"] == ["a"]
    assert second["result"] == {"tagged": ["b"], "unknown": [], "station": station.id}
    assert first["command_id"] != second["command_id"]


def test_command_subcommand_prints_the_response(
        pki: DevPki, broker: Broker, station_factory: Any) -> None:
    station = station_factory("ST-CLI")
    answer_commands(station, pki)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.devplatform", "command", "--dir", str(pki.dir),
         "--broker-port", str(broker.port), "--station", station.id, "tag",
         "--args", '{"case_id": "CASE-9", "clips": ["c1", "c2"]}', "--timeout", "5"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["ok"] is True
    assert response["result"]["tagged"] == ["c1", "c2"]


def test_dev_pki_is_idempotent_and_enrolls_station_keys(tmp_path: Path) -> None:
    first = make_dev_pki(tmp_path / "pki")
    server_pem = first.server.cert_path.read_bytes()
    again = make_dev_pki(tmp_path / "pki")
    assert again.platform_keyid == first.platform_keyid
    assert again.server.cert_path.read_bytes() == server_pem
    assert os.stat(again.platform_key_path).st_mode & 0o777 == 0o600
    assert load_public_key(again.platform_pub_path) is not None
    assert again.station_tls("ST-0001").cert_path.name == "station-ST-0001-tls.pem"
    with pytest.raises(Exception, match="station ID"):
        again.station_tls("../evil")

    key_path, cert_path = init_station_keys(tmp_path / "data", "ST-0001")
    before = load_certificate(cert_path)
    assert before.issuer == before.subject  # self-signed by `keys init`
    again.enroll_station(tmp_path / "data", "ST-0001")
    after = load_certificate(cert_path)
    after.verify_directly_issued_by(again.ca.cert)
    assert after.public_key() == StationKey.load(key_path).public_key


def test_serve_command_runs_until_sigterm(tmp_path: Path, pki: DevPki, broker: Broker) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.devplatform", "serve", "--dir", str(pki.dir),
         "--workdir", str(tmp_path / "work"), "--broker-port", str(broker.port),
         "--tus-port", "0", "--client-id", "platform-serve-test"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=(tmp_path / "serve.log").open("wb"), text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY tus=https://127.0.0.1:"), (
            line, (tmp_path / "serve.log").read_text())
        assert (tmp_path / "work" / "verdicts.json").read_text() == "[]"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pki_command_prints_the_paths(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "scripts.devplatform", "pki", "--dir",
                          str(tmp_path / "p")], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    paths = dict(line.split("=", 1) for line in out.splitlines())
    assert Path(paths["ca"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert base64.b64decode(
        "".join(Path(paths["platform_pub"]).read_text().splitlines()[1:-1]))


def test_acks_a_station_never_confirmed_are_sent_again_at_its_birth(
        platform: DevPlatform, station_factory: Any, tmp_path: Path) -> None:
    # A broker that crashed lost the sessions: an ack published while the station was
    # away went nowhere.  The station's next birth brings it again, until it confirms.
    station = station_factory("ST-REACK")
    station.publish_identity()
    path = clip_file(tmp_path, seed=7)
    clip_id, sha = station.seal(path)
    station.upload(path, clip_id, sha)
    (first,) = station.wait_messages("ack")
    station.publish("status", {"state": "online"})
    again = station.wait_messages("ack", count=2)[1]
    assert again["payload"] == first["payload"]  # the same signed acknowledgement
    station.event("clip.acknowledged", {"clip_id": clip_id, "sha256": sha})
    station.publish("status", {"state": "online"})
    assert station.no_ack_so_far() == [first, again]  # confirmed: not sent any more


def test_an_upload_whose_notice_died_with_the_platform_is_checked_at_start(
        pki: DevPki, broker: Broker, station_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "platform"
    crashed = DevPlatform(workdir, pki, broker.host, broker.port, client_id="platform-crash")
    # The upload completes (stored, fsynced, 204), but the notice queued for the worker
    # is lost, as it is when the process is killed right then.
    monkeypatch.setattr(crashed, "_upload_completed", lambda upload: None)
    crashed.tus.on_complete = crashed._upload_completed
    crashed.start()
    station = station_factory("ST-LOSTNOTE")
    station.platform = crashed
    station.publish_identity()
    path = clip_file(tmp_path, seed=8)
    clip_id, sha = station.seal(path)
    station.upload(path, clip_id, sha)
    crashed.flush()
    assert (crashed.clip(clip_id) or {}).get("upload_id") is None
    crashed.stop()
    restarted = DevPlatform(workdir, pki, broker.host, broker.port,
                            client_id="platform-crash", tus_port=crashed.tus.port)
    with restarted:
        (ack,) = station.wait_messages("ack")
        assert json.loads(base64.b64decode(ack["payload"]))["clip_id"] == clip_id
        assert verdict_of(restarted, clip_id)["verdict"] == "accepted"


def test_a_message_is_acknowledged_to_the_broker_only_once_recorded(
        pki: DevPki, broker: Broker, station_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "platform"
    first = DevPlatform(workdir, pki, broker.host, broker.port, client_id="platform-ack",
                        session_expiry_s=600)
    received = threading.Event()
    release = threading.Event()

    def stuck(*args: Any) -> None:  # the worker takes the event and never records it
        received.set()
        release.wait(30)

    monkeypatch.setattr(first, "_handle_message", stuck)
    first.start()
    station = station_factory("ST-PUBACK")
    event = station.event("device.docked", {"serial": "SIM0009"})
    assert received.wait(10)
    # The platform dies before recording it: its connection is cut, its session stays.
    first._client.loop_stop()
    first._client.socket().close()  # type: ignore[union-attr]
    release.set()
    second = DevPlatform(workdir, pki, broker.host, broker.port, client_id="platform-ack",
                         session_expiry_s=600)
    with second:
        # The broker kept the message unacknowledged in the session and delivers it again.
        second.wait_for(lambda: any(e["id"] == event["id"]
                                    for e in second.events(station.id)), 10, "the event")
    first.stop()


def test_events_a_broker_lost_are_asked_for_again(
        platform: DevPlatform, pki: DevPki, station_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import scripts.devplatform.platform as platform_mod

    monkeypatch.setattr(platform_mod, "GAP_CHECK_DELAY_S", 0.1)
    station = station_factory("ST-GAPS")
    for seq in (1, 2, 4):  # the broker acknowledged 3 and 5, then lost them
        station.publish("events", {"id": str(uuid.uuid4()), "type": "device.docked",
                                   "station_id": station.id, "seq": seq, "at": now(),
                                   "data": {}})
    platform.wait_for(lambda: len(platform.events(station.id)) == 3, 10, "three events")
    # Still sending (outbox not empty): nothing is asked for yet.
    station.publish("status", {"state": "online", "event_seq": 5, "outbox": 2})
    platform.flush()
    time.sleep(0.5)  # five times the check's delay
    platform.flush()
    assert not [m for m in station.received if m.topic == station.topic("cmd/resend-events")]
    station.publish("status", {"state": "online", "event_seq": 5, "outbox": 0})
    (command,) = station.wait_messages("cmd/resend-events")
    platform_key = load_public_key(pki.platform_pub_path)
    payload = json.loads(dsse.verify_envelope(command, {pki.platform_keyid: platform_key},
                                              dsse.COMMAND))
    assert (payload["name"], payload["station_id"]) == ("resend-events", station.id)
    assert payload["args"] == {"from_seq": 3, "to_seq": 5}
