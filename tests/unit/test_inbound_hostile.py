"""Hostile platform messages: every malformed one is refused by name and answered, and junk
cannot grow the permanent custody log without bound.

A real sealed station (store on disk, real OpenCV clips) receives the
messages through the real Inbound worker; signed ones are signed with a
real Ed25519 platform key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.store import Store
from agent.sync.inbound import Inbound
from agent.sync.mqtt import InboundMessage
from agent.sync.refusals import RefusalLog
from agent.timeutil import rfc3339
from tests.support.stations import sealed_station

PLATFORM = StationKey.generate()


@pytest.fixture(scope="module")
def sealed_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sealed_station(tmp_path_factory.mktemp("sealed"))


@dataclass
class Rig:
    config: Config
    store: Store
    inbound: Inbound
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def log(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT kind, clip_id, body FROM custody_log ORDER BY seq")
        return [{"kind": r["kind"], "clip_id": r["clip_id"], **json.loads(r["body"])}
                for r in rows if kind is None or r["kind"] == kind]

    def alerts(self) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT payload FROM outbox WHERE topic LIKE '%/events' "
                                "ORDER BY id")
        return [e["data"] for e in (json.loads(r["payload"]) for r in rows)
                if e["type"] == "alert"]


@pytest.fixture
def rig(sealed_base: Path, tmp_path: Path) -> Iterator[Rig]:
    import shutil

    from agent import config as config_mod

    base = tmp_path / "station"
    shutil.copytree(sealed_base, base)
    text = (base / "station.toml").read_text().replace(str(sealed_base), str(base))
    (base / "station.toml").write_text(text)
    config = config_mod.load(base / "station.toml")
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    answers: list[tuple[str, dict[str, Any]]] = []
    tagged: list[dict[str, Any]] = []

    def tag(args: dict[str, Any]) -> dict[str, Any]:
        tagged.append(args)
        return {"tagged": args["clips"]}

    inbound = Inbound(config, store, {PLATFORM.keyid: PLATFORM.public_key},
                      respond=lambda topic, _c, body: answers.append((topic, json.loads(body))),
                      commands={"status": lambda _a: {"ok": 1}, "tag": tag,
                                "crash": lambda _a: {}[0]},
                      on_acknowledged=lambda _c: None)
    yield Rig(config, store, inbound, answers)
    store.close()


def _envelope(payload: bytes, payload_type: str = dsse.COMMAND,
              key: StationKey = PLATFORM) -> bytes:
    return json.dumps(dsse.sign_envelope(payload_type, payload, [key])).encode()


def _command(name: str = "status", **overrides: Any) -> dict[str, Any]:
    issued = dt.datetime.now(dt.UTC)
    body: dict[str, Any] = {
        "id": f"cmd-{os.urandom(6).hex()}", "name": name, "station_id": "ST-0001",
        "issued_at": rfc3339(issued), "expires_at": rfc3339(issued + dt.timedelta(minutes=5)),
        "args": {}, "reply_to": "bwc/v1/stations/ST-0001/reply/ops",
        "correlation_id": "corr-1"}
    body.update(overrides)
    return body


def _message(payload: bytes, name: str = "status") -> InboundMessage:
    return InboundMessage(topic=f"bwc/v1/stations/ST-0001/cmd/{name}", name=name,
                          payload=payload)


def _signed_command(name: str = "status", **overrides: Any) -> InboundMessage:
    return _message(_envelope(canonicalize(_command(name, **overrides))), name)


# --- every malformed command: a named refusal and an answer ---------------------------------

MALFORMED: dict[str, tuple[Callable[[], InboundMessage], str]] = {
    "args is a list": (lambda: _signed_command("tag", args=["CASE-1", "x"]), "args"),
    "args is a string": (lambda: _signed_command("tag", args="CASE-1"), "args"),
    "tag without clips": (lambda: _signed_command("tag", args={"case_id": "C-1"}), "args"),
    "tag clips not strings": (lambda: _signed_command("tag", args={"case_id": "C-1",
                                                                   "clips": [1, None]}), "args"),
    "status with an argument": (lambda: _signed_command(args={"verbose": True}), "args"),
    "id is a number": (lambda: _signed_command(id=7), "payload"),
    "id of a megabyte": (lambda: _signed_command(id="i" * 1_000_000), "too-large"),
    "id of 300 characters": (lambda: _signed_command(id="i" * 300), "payload"),
    "no expiry": (lambda: _signed_command(expires_at=None), "payload"),
    "times not RFC 3339": (lambda: _signed_command(issued_at="yesterday"), "times"),
    "expired": (lambda: _signed_command(expires_at="2000-01-01T00:00:00.000Z"), "expired"),
    "for another station": (lambda: _signed_command(station_id="ST-9999"), "station"),
    "name is not the topic": (lambda: _signed_command(name="tag") and _message(
        _envelope(canonicalize(_command("tag"))), "status"), "name"),
    "unknown command": (lambda: _signed_command("format-disk"), "unknown-command"),
    "payload is a list": (lambda: _message(_envelope(b"[1,2]")), "payload"),
    "payload nested deep": (lambda: _message(_envelope(b"[" * 50_000 + b"]" * 50_000)),
                            "payload"),
    "payload 100000-digit number": (lambda: _message(_envelope(
        b'{"id":' + b"9" * 100_000 + b"}")), "payload"),
    "payload with a duplicate key": (lambda: _message(_envelope(
        b'{"name":"status","name":"tag"}')), "payload"),
    "not signed by the platform": (lambda: _message(_envelope(
        canonicalize(_command()), key=StationKey.generate())), "signature"),
    "wrong payload type": (lambda: _message(_envelope(canonicalize(_command()), dsse.ACK)),
                           "signature"),
    "envelope nested 100k deep": (lambda: _message(b"[" * 100_000 + b"]" * 100_000),
                                  "not-json"),
    "not JSON": (lambda: _message(b"\xff\xfe junk"), "not-json"),
    "JSON but not an envelope": (lambda: _message(b'"hello"'), "not-envelope"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_command_is_refused_by_name_and_answered(rig: Rig, case: str) -> None:
    make, code = MALFORMED[case]
    message = make()
    response = rig.inbound.handle_command(message)
    assert response["ok"] is False
    assert response["error"].startswith(f"{code}: "), response["error"]
    assert len(response["error"]) < 700
    if code not in ("not-json", "not-envelope", "too-large", "signature", "payload"):
        assert rig.answers and rig.answers[-1][1] == response  # answered on its reply topic
    (refusal,) = rig.log("command.refused")
    assert refusal["code"] == code
    assert refusal["payload_sha256"] == hashlib.sha256(message.payload).hexdigest()
    assert len(json.dumps(refusal)) < 2000
    assert [a["refusal"] for a in rig.alerts()] == [code]
    # Nothing of it is remembered as a seen command: a later, valid one with that id runs.
    assert rig.store.query("SELECT id FROM seen_commands") == []


def test_a_signed_command_with_list_args_gets_an_answer_and_no_half_written_row(
        rig: Rig) -> None:
    message = _signed_command("tag", args=["CASE-1", "clip"])
    rig.inbound.start()
    rig.inbound.deliver(message)
    rig.inbound.queue.join()
    rig.inbound.stop()
    (topic, answer), = rig.answers
    assert topic == "bwc/v1/stations/ST-0001/reply/ops" and answer["ok"] is False
    assert answer["error"].startswith("args: tag args is a list, not a JSON object")
    assert answer["correlation_id"] == "corr-1"
    assert rig.store.query("SELECT * FROM seen_commands") == []


def test_a_handler_defect_is_answered_and_its_row_completed(rig: Rig) -> None:
    message = _signed_command("crash")
    response = rig.inbound.handle_command(message)
    assert response["ok"] is False and "command crash failed inside the station" in \
        response["error"]
    (row,) = rig.store.query("SELECT response FROM seen_commands")
    assert json.loads(row["response"]) == response
    # The broker's resend gets the same answer; the defect does not run again.
    again = rig.inbound.handle_command(InboundMessage(**{**message.__dict__, "dup": True}))
    assert again == response


# --- acks ------------------------------------------------------------------------------------

def _ack(rig: Rig, payload: bytes, key: StationKey = PLATFORM) -> bytes:
    return _envelope(payload, dsse.ACK, key)


def test_an_ack_nested_100k_deep_is_refused_not_a_recursion_error(rig: Rig) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000,
                _ack(rig, b"[" * 100_000 + b"]" * 100_000),
                _ack(rig, b'{"clip_id":' + b"1" * 100_000 + b"}")):
        assert rig.inbound.handle_ack(raw) is None
    codes = [r["code"] for r in rig.log("ack.refused")]
    assert codes == ["not-json", "payload"]  # the second payload refusal is only counted
    rig.inbound.refusals.flush(force=True)
    assert [(r["code"], r.get("repeated")) for r in rig.log("ack.refused")] == \
        [("not-json", None), ("payload", None), ("payload", 1)]


def test_a_two_megabyte_keyid_gives_a_small_bounded_entry(rig: Rig) -> None:
    clip = rig.store.clips()[0]
    payload = canonicalize({"clip_id": clip["clip_id"], "sha256": clip["sha256"],
                            "station_id": "ST-0001"})
    envelope = {"payloadType": dsse.ACK, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": "k" * 400_000, "sig": base64.b64encode(
                    b"s" * 64).decode()}]}
    raw = json.dumps(envelope).encode()
    assert rig.inbound.handle_ack(raw) is None
    (entry,) = rig.log("ack.refused")
    assert entry["code"] == "signature" and entry["payload_bytes"] == len(raw)
    assert entry["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(json.dumps(entry)) < 1500, "the sender's bytes are not kept"
    assert entry["reason"].endswith("characters)")
    big = json.dumps({**envelope, "signatures": [{"keyid": "k" * 2_000_000, "sig": "AA=="}]})
    assert rig.inbound.handle_ack(big.encode()) is None
    assert [r["code"] for r in rig.log("ack.refused")] == ["signature", "too-large"]


def test_a_duplicate_key_in_a_signed_ack_is_refused(rig: Rig) -> None:
    clip = rig.store.clips()[0]
    payload = (b'{"clip_id":"%s","sha256":"%s","sha256":"%s","station_id":"ST-0001"}'
               % (clip["clip_id"].encode(), b"0" * 64, clip["sha256"].encode()))
    assert rig.inbound.handle_ack(_ack(rig, payload)) is None
    (entry,) = rig.log("ack.refused")
    assert entry["code"] == "payload" and "appears more than once" in entry["reason"]


# --- floods ----------------------------------------------------------------------------------

def test_two_thousand_junk_commands_add_a_bounded_number_of_entries(rig: Rig) -> None:
    clock = [0.0]
    rig.inbound.refusals = RefusalLog(rig.store, window_s=300.0, clock=lambda: clock[0])
    before = len(rig.log())
    makers = [lambda i: _message(b"junk %d" % i),
              lambda i: _message(_envelope(canonicalize(_command(id=f"x{i}")),
                                           key=StationKey.generate())),
              lambda i: _signed_command(station_id=f"ST-{i}"),
              lambda i: _signed_command("tag", args=[i])]
    for i in range(2000):
        response = rig.inbound.handle_command(makers[i % 4](i))
        assert response["ok"] is False
    assert len(rig.log()) - before == 4, "one entry per refusal code in the window"
    assert len(rig.alerts()) == 4
    clock[0] = 301.0  # the window ends; the next refusal (or the idle worker) sums it up
    rig.inbound.handle_command(_message(b"junk again"))
    summaries = [r for r in rig.log("command.refused") if "repeated" in r]
    assert sorted((r["code"], r["repeated"]) for r in summaries) == \
        [("args", 499), ("not-json", 499), ("signature", 499), ("station", 499)]
    assert len(rig.log()) - before == 4 + 4 + 1
    assert len(rig.alerts()) == 4 + 4 + 1
