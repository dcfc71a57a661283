"""The trust rules of acknowledgements and commands, each at its edge (docs/PROTOCOL.md §5, §6).

An ack is what lets the station delete evidence from a camera, so every way it
could be wrongly taken for a good one is tried here: a field missing, the digest
of the mutable clip row instead of the signed manifest, a digest that differs
only in case or spacing.  Commands are checked at the exact instants their
validity window opens and closes, with the station's clock held still.

A real sealed station (store on disk, real clips, manifests signed by its key)
and a real Ed25519 platform key; messages go through ``Inbound`` as the MQTT
worker hands them over.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import Config
from agent.custody import dsse
from agent.custody.jcs import canonicalize
from agent.custody.keys import StationKey
from agent.store import Store
from agent.sync import inbound as inbound_mod
from agent.sync.inbound import Inbound
from agent.sync.mqtt import InboundMessage
from agent.timeutil import rfc3339
from tests.conftest import write_station_config
from tests.support.stations import sealed_station

PLATFORM = StationKey.generate()
NOW = dt.datetime(2026, 11, 28, 1, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sealed_station(tmp_path_factory.mktemp("sealed"))


@dataclass
class Platform:
    """The station's side of the platform's messages, and what it did with them."""

    config: Config
    store: Store
    inbound: Inbound
    acknowledged: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def clip(self, index: int = 0) -> Any:
        return self.store.query("SELECT * FROM clips ORDER BY clip_id")[index]

    def refusals(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.store.query(
            "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]

    def set_row(self, sql: str, *params: Any) -> None:
        db = sqlite3.connect(self.config.data_dir / "state.db")
        db.execute(sql, params)
        db.commit()
        db.close()


@pytest.fixture
def platform(template: Path, tmp_path: Path) -> Iterator[Platform]:
    shutil.copytree(template / "data", tmp_path / "data")
    config = config_mod.load(write_station_config(tmp_path))
    db = sqlite3.connect(config.data_dir / "state.db")
    db.execute("UPDATE clips SET state = 'uploaded'")
    db.commit()
    db.close()
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    acknowledged: list[str] = []
    answers: list[dict[str, Any]] = []
    yield Platform(config, store, Inbound(
        config, store, {PLATFORM.keyid: PLATFORM.public_key},
        respond=lambda _topic, _corr, body: answers.append(json.loads(body)),
        commands={"status": lambda _args: {"ok": 1}},
        on_acknowledged=acknowledged.append), acknowledged, answers)
    store.close()


def _signed(payload: Any, payload_type: str = dsse.ACK) -> bytes:
    return json.dumps(dsse.sign_envelope(payload_type, canonicalize(payload),
                                         [PLATFORM])).encode()


def _ack(row: Any, **changes: Any) -> bytes:
    payload = {"clip_id": row["clip_id"], "sha256": row["sha256"], "station_id": "ST-0001",
               "stored_at": "2026-11-28T00:00:00.000Z", "location": "s3://evidence/x"}
    payload.update(changes)
    return _signed({k: v for k, v in payload.items() if v is not _DROP})


_DROP = object()


def _refused_ack(platform: Platform, raw: bytes, code: str) -> None:
    before = {r["clip_id"]: r["state"] for r in platform.store.clips()}
    assert platform.inbound.handle_ack(raw) is None
    assert platform.acknowledged == []
    assert {r["clip_id"]: r["state"] for r in platform.store.clips()} == before
    assert platform.refusals("ack.refused")[-1]["code"] == code


# --- acknowledgements ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip_id", "sha256", "station_id"])
@pytest.mark.parametrize("value", [_DROP, None, ""])
def test_an_ack_missing_a_required_field_never_acknowledges_a_clip(
        platform: Platform, name: str, value: Any) -> None:
    """Rule: an ack whose clip_id, sha256 or station_id is missing, null or empty never
    acknowledges a clip (a missing field is not a matching one)."""
    _refused_ack(platform, _ack(platform.clip(), **{name: value}), "payload")
    reason = platform.refusals("ack.refused")[-1]["reason"]
    assert f"field {name!r}" in reason


def test_optional_ack_fields_of_the_wrong_type_are_refused(platform: Platform) -> None:
    """Rule: stored_at and location, when present, are strings of bounded length."""
    _refused_ack(platform, _ack(platform.clip(), stored_at=12), "payload")
    _refused_ack(platform, _ack(platform.clip(), location="x" * 2049), "payload")
    assert platform.inbound.handle_ack(_ack(platform.clip(), stored_at=_DROP,
                                            location="x" * 2048)) == platform.clip()["clip_id"]


def test_an_ack_matching_only_the_clip_row_is_refused_the_signed_manifest_decides(
        platform: Platform) -> None:
    """Rule: an ack's sha256 must equal the digest in the clip's signed manifest; a clip
    row changed after sealing (a damaged or edited database) never makes an ack match."""
    row = platform.clip()
    forged = "ab" * 32
    platform.set_row("UPDATE clips SET sha256 = ? WHERE clip_id = ?", forged, row["clip_id"])
    _refused_ack(platform, _ack(row, sha256=forged), "digest")
    assert platform.refusals("ack.refused")[-1]["reason"] == (
        f"ack sha256 {forged} does not match the sealed digest {row['sha256']} of clip "
        f"{row['clip_id']}")
    _refused_ack(platform, _ack(row), "digest")  # the row no longer agrees either


def test_an_ack_for_a_clip_without_a_manifest_is_refused(platform: Platform) -> None:
    """Rule: no signed manifest, nothing to match: the ack is refused."""
    row = platform.clip()
    platform.set_row("UPDATE clips SET manifest = NULL WHERE clip_id = ?", row["clip_id"])
    _refused_ack(platform, _ack(row), "digest")


@pytest.mark.parametrize("how", ["upper case", "space after", "prefixed", "one digit off",
                                 "truncated"])
def test_an_ack_digest_is_compared_exactly(platform: Platform, how: str) -> None:
    """Rule: the ack's sha256 is the sealed digest character for character (lowercase
    hex), never a loose match."""
    digest = platform.clip()["sha256"]
    variant = {"upper case": digest.upper(), "space after": digest + " ",
               "prefixed": "sha256:" + digest,
               "one digit off": digest[:-1] + ("0" if digest[-1] != "0" else "1"),
               "truncated": digest[:63]}[how]
    _refused_ack(platform, _ack(platform.clip(), sha256=variant), "digest")


def test_an_ack_for_another_station_or_an_unknown_clip_is_refused(platform: Platform) -> None:
    """Rule: an ack names this station and one of its clips, or it is refused."""
    row = platform.clip()
    _refused_ack(platform, _ack(row, station_id="ST-0002"), "station")
    assert platform.refusals("ack.refused")[-1]["reason"] == \
        "ack names station 'ST-0002', not 'ST-0001'"
    _refused_ack(platform, _ack(row, clip_id="0193-not-a-clip"), "unknown-clip")


def test_an_ack_for_a_clip_not_uploaded_is_refused(platform: Platform) -> None:
    """Rule: a clip is acknowledged only after it was uploaded (or is being uploaded)."""
    row = platform.clip()
    for state in ("sealed", "copied", "quarantined"):
        platform.set_row("UPDATE clips SET state = ? WHERE clip_id = ?", state, row["clip_id"])
        _refused_ack(platform, _ack(row), "state")


def test_a_valid_ack_acknowledges_once_and_a_second_is_ignored(platform: Platform) -> None:
    """Rule: a valid ack moves exactly its clip to acknowledged, records the signed ack,
    and a repeated ack changes nothing."""
    first, second = platform.clip(0), platform.clip(1)
    raw = _ack(first)
    assert platform.inbound.handle_ack(raw) == first["clip_id"]
    assert platform.acknowledged == [first["clip_id"]]
    row = platform.store.clip(first["clip_id"])
    assert row["state"] == "acknowledged"
    assert json.loads(row["ack"]) == json.loads(raw)
    assert platform.store.clip(second["clip_id"])["state"] == "uploaded"
    entries = platform.store.log_size()
    assert platform.inbound.handle_ack(raw) is None
    assert platform.acknowledged == [first["clip_id"]]
    assert platform.store.log_size() == entries
    assert platform.refusals("ack.refused") == []


def test_an_ack_signed_by_another_key_or_as_another_type_is_refused(platform: Platform) -> None:
    """Rule: only the platform key's signature over an ack makes an ack."""
    row = platform.clip()
    payload = json.loads(dsse.b64decode(json.loads(_ack(row))["payload"]))
    _refused_ack(platform, json.dumps(dsse.sign_envelope(
        dsse.ACK, canonicalize(payload), [StationKey.generate()])).encode(), "signature")
    _refused_ack(platform, _signed(payload, dsse.COMMAND), "signature")


# --- commands, with the station's clock held still ------------------------------------------

@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls.fromtimestamp(NOW.timestamp(), tz)

    monkeypatch.setattr(inbound_mod, "datetime", Frozen)


def _command(issued: dt.datetime, expires: dt.datetime, **changes: Any) -> InboundMessage:
    body: dict[str, Any] = {
        "id": f"cmd-{os.urandom(6).hex()}", "name": "status", "station_id": "ST-0001",
        "issued_at": rfc3339(issued.timestamp()), "expires_at": rfc3339(expires.timestamp()),
        "args": {}, "reply_to": "bwc/v1/stations/ST-0001/reply/ops", "correlation_id": "c-1"}
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not _DROP}
    return InboundMessage(topic="bwc/v1/stations/ST-0001/cmd/status", name="status",
                          payload=_signed(body, dsse.COMMAND))


def _code(response: dict[str, Any]) -> str:
    return "ok" if response["ok"] else str(response["error"]).split(":", 1)[0]


S = dt.timedelta(seconds=1)
MS = dt.timedelta(milliseconds=1)


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(("issued", "expires", "code"), [
    (NOW - 5 * 60 * S, NOW - S, "expired"),         # issued before, expiry already past
    (NOW - 5 * 60 * S, NOW, "expired"),             # expires at this very instant
    (NOW - 5 * 60 * S, NOW + MS, "ok"),
    (NOW - 2 * 3600 * S, NOW + 365 * 86400 * S, "stale"),  # old, with a far expiry
    (NOW - 600 * S - MS, NOW + 60 * S, "stale"),    # command_max_age_s = 600
    (NOW - 600 * S, NOW + 60 * S, "ok"),
    (NOW + 60 * S + MS, NOW + 600 * S, "future"),   # beyond 60 s of clock skew
    (NOW + 60 * S, NOW + 600 * S, "ok"),
])
def test_a_command_runs_only_inside_its_validity_window(
        platform: Platform, issued: dt.datetime, expires: dt.datetime, code: str) -> None:
    """Rule: a command runs only if not expired (expires_at after now), not issued more
    than 60 s ahead, and not older than command_max_age_s; at the edges, to the ms."""
    response = platform.inbound.handle_command(_command(issued, expires))
    assert _code(response) == code, response
    seen = platform.store.query("SELECT id FROM seen_commands")
    assert len(seen) == (1 if code == "ok" else 0)
    if code != "ok":
        assert platform.refusals("command.refused")[-1]["code"] == code


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("value", [_DROP, None, ""])
@pytest.mark.parametrize("name", ["station_id", "id", "issued_at", "expires_at", "name"])
def test_a_command_missing_a_required_field_is_refused(platform: Platform, name: str,
                                                       value: Any) -> None:
    """Rule: a command without its station id (or id, name, issue or expiry time) never
    runs, whatever else it carries."""
    message = _command(NOW - S, NOW + 60 * S, **{name: value})
    response = platform.inbound.handle_command(message)
    assert _code(response) == "payload", response
    assert f"field {name!r}" in response["error"]
    assert platform.store.query("SELECT id FROM seen_commands") == []


@pytest.mark.usefixtures("frozen")
def test_a_command_for_another_station_is_refused(platform: Platform) -> None:
    """Rule: a command names this station, or it is refused."""
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S,
                                                        station_id="ST-0002"))
    assert _code(response) == "station"
    assert response["error"] == "station: command is for station 'ST-0002'"


@pytest.mark.usefixtures("frozen")
def test_a_replayed_command_is_refused_and_its_id_remembered_past_its_expiry(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a command id runs once; it is remembered until a day after the command expires."""
    message = _command(NOW - S, NOW + 60 * S, id="cmd-once")
    assert _code(platform.inbound.handle_command(message)) == "ok"
    assert _code(platform.inbound.handle_command(message)) == "replay"
    stored = platform.store.query_one("SELECT expires_at FROM seen_commands WHERE id = ?",
                                      ("cmd-once",))
    assert stored is not None and stored["expires_at"] == rfc3339((NOW + 60 * S).timestamp())
    # A day later a new command prunes expired ids, but not this one yet (expired < 1 day).
    later = NOW + 86400 * S

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Later:  # type: ignore[override]
            return cls.fromtimestamp(later.timestamp(), tz)

    monkeypatch.setattr(inbound_mod, "datetime", Later)
    assert _code(platform.inbound.handle_command(_command(later - S, later + 60 * S))) == "ok"
    ids = {r["id"] for r in platform.store.query("SELECT id FROM seen_commands")}
    assert "cmd-once" in ids
    later = NOW + 86400 * S + 61 * S
    assert _code(platform.inbound.handle_command(_command(later - S, later + 60 * S))) == "ok"
    ids = {r["id"] for r in platform.store.query("SELECT id FROM seen_commands")}
    assert "cmd-once" not in ids


# --- the tag command and where answers go ---------------------------------------------------

def _case_ids(platform: Platform, clip_id: str) -> list[str]:
    row = platform.store.clip(clip_id)
    return [row["case_id"]] if row["case_id"] else []


def test_the_tag_command_tags_removes_and_corrects_cases_and_says_what_it_did(
        platform: Platform) -> None:
    """Rule: a platform tag command adds a case to the clips it names, takes it off with
    remove, or corrects it with replaces; its answer lists the clips tagged, unknown and
    unchanged (already so, or not in the case to remove)."""
    from agent.sync.inbound import tag_command

    run = tag_command(platform.config, platform.store)
    first, second = platform.clip(0)["clip_id"], platform.clip(1)["clip_id"]
    assert run({"case_id": "CASE-1", "clips": [first, "0193-unknown"]}) == \
        {"tagged": [first], "unknown": ["0193-unknown"], "unchanged": []}
    assert _case_ids(platform, first) == ["CASE-1"]
    assert run({"case_id": "CASE-1", "clips": [first]}) == \
        {"tagged": [], "unknown": [], "unchanged": [first]}
    assert run({"case_id": "CASE-2", "replaces": "CASE-1", "clips": [first, second]}) == \
        {"tagged": [first], "unknown": [], "unchanged": [second]}
    assert _case_ids(platform, first) == ["CASE-2"]
    assert run({"case_id": "CASE-2", "remove": True, "clips": [first, second]}) == \
        {"tagged": [first], "unknown": [], "unchanged": [second]}
    assert _case_ids(platform, first) == []
    sources = {json.loads(r["body"]).get("source") for r in platform.store.query(
        "SELECT body FROM custody_log WHERE kind = 'clip.tagged'")}
    assert sources == {"platform-command"}


def test_the_tag_command_refuses_a_case_id_or_args_it_cannot_take(platform: Platform) -> None:
    """Rule: a case ID the station's pattern refuses is not added (a removal is always
    allowed: it undoes), and an unknown argument refuses the whole command."""
    from agent.sync.inbound import Refused, tag_command
    from agent.tagging import TagError

    run = tag_command(platform.config, platform.store)
    first = platform.clip(0)["clip_id"]
    with pytest.raises(TagError):
        run({"case_id": "bad case\u0000", "clips": [first]})
    assert _case_ids(platform, first) == []
    with pytest.raises(Refused) as err:
        run({"case_id": "CASE-1", "clips": [first], "force": True})
    assert err.value.code == "args"


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(("reply_to", "answered"), [
    ("bwc/v1/stations/ST-0001/reply/ops", True),
    ("bwc/v1/stations/ST-0001/reply/", False),        # the subtree itself, no topic
    ("bwc/v1/stations/ST-0001/reply/+", False),       # a filter, not a topic
    ("bwc/v1/stations/ST-0001/reply/a/#", False),
    ("bwc/v1/stations/ST-0002/reply/ops", False),     # another station's
    ("bwc/v1/stations/ST-0001/events", False),
])
def test_answers_go_only_to_a_topic_under_the_stations_reply_subtree(
        platform: Platform, reply_to: str, answered: bool) -> None:
    """Rule: a command's answer is published only on a topic below the station's own
    reply/ subtree (no wildcard); any other reply_to refuses the command, unanswered."""
    sent: list[str] = []
    platform.inbound.respond = lambda topic, _corr, _body: sent.append(topic)
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S,
                                                        reply_to=reply_to))
    if answered:
        assert response["ok"] is True and sent == [reply_to]
    else:
        assert _code(response) == "reply-topic" and sent == []


@pytest.mark.usefixtures("frozen")
def test_an_mqtt5_response_topic_wins_and_the_correlation_is_echoed(platform: Platform) -> None:
    """Rule: over MQTT 5 the answer goes to the request's response topic with its
    correlation data; over 3.1.1 the payload's reply_to and correlation_id are used."""
    import dataclasses

    sent: list[tuple[str, bytes | None, dict[str, Any]]] = []
    platform.inbound.respond = lambda topic, corr, body: sent.append(
        (topic, corr, json.loads(body)))
    message = dataclasses.replace(_command(NOW - S, NOW + 60 * S),
                                  response_topic="bwc/v1/stations/ST-0001/reply/v5",
                                  correlation_data=b"corr-5")
    platform.inbound.handle_command(message)
    ((topic, corr, body),) = sent
    assert (topic, corr, body["ok"]) == ("bwc/v1/stations/ST-0001/reply/v5", b"corr-5", True)
    sent.clear()
    platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, correlation_id="c-311"))
    ((topic, corr, body),) = sent
    assert (topic, corr, body["correlation_id"]) == ("bwc/v1/stations/ST-0001/reply/ops",
                                                     None, "c-311")


@pytest.mark.usefixtures("frozen")
def test_an_answer_is_utf8_json_with_the_platforms_text_as_it_was_sent(
        platform: Platform) -> None:
    """Rule: the answer to a command is UTF-8 JSON like every message of the protocol: text
    the platform sent (here a Chinese correlation id) comes back as the same UTF-8 bytes,
    not as \\u escapes."""
    sent: list[bytes] = []
    platform.inbound.respond = lambda _topic, _corr, body: sent.append(body)
    platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, correlation_id="关联-7"))
    (body,) = sent
    assert "关联-7".encode() in body and b"\\u" not in body
    assert json.loads(body.decode("utf-8"))["correlation_id"] == "关联-7"


# --- the worker thread: every message handled once, settled only when handled ---------------

def _message(name: str, payload: bytes) -> InboundMessage:
    return InboundMessage(topic=f"bwc/v1/stations/ST-0001/{name}", name=name, payload=payload)


def _worker(platform: Platform, monkeypatch: pytest.MonkeyPatch,
            messages: dict[str, Any] | None = None) -> tuple[Inbound, list[InboundMessage],
                                                             list[tuple[float, float]]]:
    """The platform's Inbound worker, with its retry delays recorded (and made short)."""
    settled: list[InboundMessage] = []
    delays: list[tuple[float, float]] = []

    def short(a: float, b: float) -> float:
        delays.append((a, b))
        return 0.01

    monkeypatch.setattr(inbound_mod, "min", short, raising=False)
    worker = Inbound(platform.config, platform.store, {PLATFORM.keyid: PLATFORM.public_key},
                     respond=lambda *_a: None, commands={"status": lambda _a: {"ok": 1}},
                     on_acknowledged=platform.acknowledged.append, settle=settled.append,
                     messages=messages)
    return worker, settled, delays


@pytest.mark.usefixtures("frozen")
def test_the_worker_handles_every_kind_of_message_and_settles_each_once(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: acks, commands and the other platform messages are each handled once, in
    order, and each is settled with the broker only once it was handled (applied or
    refused); the worker is idle only when nothing waits."""
    received: list[bytes] = []
    worker, settled, _delays = _worker(platform, monkeypatch,
                                       {"roster": received.append})
    good = _message("ack", _ack(platform.clip()))
    bad = _message("ack", b"not json")
    command = _command(NOW - S, NOW + 60 * S)
    roster = _message("roster", b'{"roster": 1}')
    for message in (good, bad, command, roster):
        worker.deliver(message)
    assert not worker.idle()
    worker.start()
    worker.queue.join()
    assert worker.idle()
    worker.stop()
    assert settled == [good, bad, command, roster]
    assert platform.acknowledged == [platform.clip()["clip_id"]]
    assert received == [b'{"roster": 1}']


def test_a_message_the_store_cannot_take_yet_is_retried_with_a_growing_delay(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a message the station fails to apply (a busy store) is tried again after
    0.5 s, 1 s, 2 s ... (at most 30 s) and settled only once applied."""
    from agent.errors import StoreError

    failures = iter([StoreError("database is locked")] * 3)
    applied: list[bytes] = []

    def roster(payload: bytes) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        applied.append(payload)

    worker, settled, delays = _worker(platform, monkeypatch, {"roster": roster})
    message = _message("roster", b"{}")
    worker.start()
    worker.deliver(message)
    worker.queue.join()
    worker.stop()
    assert applied == [b"{}"] and settled == [message]
    assert delays == [(30.0, 0.5), (30.0, 1.0), (30.0, 2.0)]


def test_a_defect_in_a_handler_is_settled_not_retried_forever(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a message whose handler has a bug (not a passing condition) is settled once,
    so it cannot block every later message."""
    calls: list[bytes] = []

    def broken(payload: bytes) -> None:
        calls.append(payload)
        raise KeyError("a bug")

    worker, settled, delays = _worker(platform, monkeypatch, {"roster": broken})
    message = _message("roster", b"{}")
    worker.start()
    worker.deliver(message)
    worker.queue.join()
    worker.stop()
    assert calls == [b"{}"] and settled == [message] and delays == []


def test_stopping_while_a_message_waits_for_its_retry_leaves_it_unsettled(
        platform: Platform) -> None:
    """Rule: a message not yet applied when the station stops is not settled: the broker
    delivers it again in the next session."""
    import time

    from agent.errors import StoreError

    tries: list[int] = []

    def busy(_payload: bytes) -> None:
        tries.append(1)
        raise StoreError("database is locked")

    settled: list[InboundMessage] = []
    worker = Inbound(platform.config, platform.store, {PLATFORM.keyid: PLATFORM.public_key},
                     respond=lambda *_a: None, commands={}, on_acknowledged=lambda _c: None,
                     settle=settled.append, messages={"roster": busy})
    worker.start()
    worker.deliver(_message("roster", b"{}"))
    deadline = time.monotonic() + 5
    while not tries and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert tries and settled == []


def test_stopping_writes_the_summary_of_refusals_counted_so_far(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: refusals repeated within a window are counted, and the count is written when
    the station stops, not lost."""
    worker, settled, _delays = _worker(platform, monkeypatch)
    worker.start()
    for _ in range(3):
        worker.deliver(_message("ack", b"junk"))
    worker.queue.join()
    worker.stop()
    assert len(settled) == 3
    bodies = platform.refusals("ack.refused")
    assert bodies[0]["code"] == "not-json"
    assert bodies[-1]["repeated"] == 2 and bodies[-1]["code"] == "not-json"


# --- what an ack records, and what a refusal says ---------------------------------------------

def _events(platform: Platform, kind: str) -> list[dict[str, Any]]:
    events = [json.loads(r["payload"]) for r in platform.store.query(
        "SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")]
    return [e["data"] for e in events if e["type"] == kind]


def _entries(platform: Platform, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
    return [(r["clip_id"], json.loads(r["body"])) for r in platform.store.query(
        "SELECT clip_id, body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]


def test_an_ack_is_recorded_with_the_signed_digest_and_where_the_platform_keeps_the_clip(
        platform: Platform) -> None:
    """Rule: an accepted ack is a custody entry and a clip.acknowledged event carrying the
    sealed SHA-256 and the platform's stored_at and location, with the time it arrived."""
    from agent.timeutil import parse_rfc3339

    row = platform.clip()
    before = dt.datetime.now(dt.UTC) - S
    assert platform.inbound.handle_ack(_ack(row)) == row["clip_id"]
    body = {"sha256": row["sha256"], "stored_at": "2026-11-28T00:00:00.000Z",
            "location": "s3://evidence/x"}
    assert _entries(platform, "clip.acknowledged") == [
        (row["clip_id"], {"from": "uploaded", "to": "acknowledged", **body})]
    assert _events(platform, "clip.acknowledged") == [{"clip_id": row["clip_id"], **body}]
    at = parse_rfc3339(platform.store.clip(row["clip_id"])["acknowledged_at"])
    assert before <= at <= dt.datetime.now(dt.UTC) + S
    assert _events(platform, "clip.uploaded") == []


def test_an_ack_without_optional_fields_records_them_as_absent(platform: Platform) -> None:
    """Rule: stored_at and location the platform did not send are recorded as null, never
    invented."""
    row = platform.clip()
    assert platform.inbound.handle_ack(_ack(row, stored_at=_DROP, location=_DROP)) == \
        row["clip_id"]
    assert _events(platform, "clip.acknowledged") == [
        {"clip_id": row["clip_id"], "sha256": row["sha256"], "stored_at": None,
         "location": None}]


def test_an_ack_for_a_clip_still_uploading_records_the_upload_then_the_ack(
        platform: Platform) -> None:
    """Rule: an ack that arrives before the station processed its last upload response
    first records the clip uploaded (whole, by the platform's word), then acknowledged:
    two custody entries and two events, in that order."""
    from agent.timeutil import parse_rfc3339

    row = platform.clip()
    url = "https://platform.example/files/abc"
    platform.set_row("UPDATE clips SET state = 'uploading', upload_offset = 0, "
                     "upload_url = ? WHERE clip_id = ?", url, row["clip_id"])
    before = dt.datetime.now(dt.UTC) - S
    assert platform.inbound.handle_ack(_ack(row)) == row["clip_id"]
    clip = platform.store.clip(row["clip_id"])
    assert clip["state"] == "acknowledged" and clip["upload_offset"] == row["size"]
    assert before <= parse_rfc3339(clip["uploaded_at"]) <= dt.datetime.now(dt.UTC) + S
    assert _entries(platform, "clip.uploaded") == [
        (row["clip_id"], {"from": "uploading", "to": "uploaded", "sha256": row["sha256"],
                          "by": "platform ack"})]
    assert _events(platform, "clip.uploaded") == [
        {"clip_id": row["clip_id"], "sha256": row["sha256"], "size": row["size"],
         "upload_url": url}]
    kinds = [r["kind"] for r in platform.store.query(
        "SELECT kind FROM custody_log WHERE clip_id = ? ORDER BY seq", (row["clip_id"],))]
    assert kinds[-2:] == ["clip.uploaded", "clip.acknowledged"]


@pytest.mark.parametrize(("make", "code", "reason"), [
    (lambda row: b"not json", "not-json", "ack is not acceptable JSON: "),
    (lambda row: b"[]", "not-envelope", "ack is not a DSSE envelope (JSON object)"),
    (lambda row: _signed([1]), "payload", "ack payload is a list, not a JSON object"),
    (lambda row: json.dumps(dsse.sign_envelope(dsse.ACK, b"{", [PLATFORM])).encode(),
     "payload", "ack payload is not acceptable JSON: "),
    (lambda row: _ack(row, sha256=5), "payload",
     "ack payload: field 'sha256' is a number, not a non-empty string"),
    (lambda row: _ack(row, clip_id="0193-gone"), "unknown-clip",
     "ack for unknown clip '0193-gone'"),
])
def test_an_ack_refusal_says_what_was_refused_and_names_no_clip_it_does_not_know(
        platform: Platform, make: Any, code: str, reason: str) -> None:
    """Rule: every ack refusal is recorded with its code and a reason naming the part that
    failed; a refusal names a clip only once the clip is known to the station."""
    _refused_ack(platform, make(platform.clip()), code)
    assert platform.refusals("ack.refused")[-1]["reason"].startswith(reason)
    assert _entries(platform, "ack.refused")[-1][0] is None
    (alert,) = _events(platform, "alert")
    assert alert["clip_id"] is None and alert["refusal"] == code


def test_an_ack_refused_for_its_clip_names_the_clip_and_its_state(platform: Platform) -> None:
    """Rule: an ack for a known clip in the wrong state is refused naming the clip (its
    custody record and the alert) and the state it is in."""
    row = platform.clip()
    platform.set_row("UPDATE clips SET state = 'sealed' WHERE clip_id = ?", row["clip_id"])
    _refused_ack(platform, _ack(row), "state")
    assert platform.refusals("ack.refused")[-1]["reason"] == (
        f"ack for clip {row['clip_id']} in state sealed: it was not uploaded")
    assert _entries(platform, "ack.refused")[-1][0] == row["clip_id"]
    assert [a["clip_id"] for a in _events(platform, "alert")] == [row["clip_id"]]


@pytest.mark.parametrize(("value", "kind", "words"), [
    (None, "object", "is a null, not an object"),
    (True, "object", "is a boolean, not an object"),
    (7, "object", "is a number, not an object"),
    (1.5, "bool", "is a number, not a boolean"),
    ("x", "object", "is a string, not an object"),
    (["x"], "object", "is a list, not an object"),
    ({}, "text", "is a object, not a non-empty string"),
    ({}, "text-list", "is a object, not a list of strings"),
    (("x",), "text", "is a tuple, not a non-empty string"),
])
def test_a_field_of_the_wrong_type_is_named_by_its_json_type(value: Any, kind: str,
                                                               words: str) -> None:
    """Rule: a refused field says which JSON type it was and which it must be, so the
    platform's developers can fix the sender."""
    from agent.sync.inbound import Field

    assert Field(kind).problem(value) == words


# --- commands: their configured age, their refusal reasons, their args --------------------

@pytest.mark.usefixtures("frozen")
def test_a_command_older_than_the_configured_max_age_is_stale(template: Path,
                                                              tmp_path: Path) -> None:
    """Rule: platform.command_max_age_s, when set, is the oldest a command may be (here
    120 s instead of the default 600 s)."""
    shutil.copytree(template / "data", tmp_path / "data")
    config = config_mod.load(write_station_config(tmp_path, """
        [platform]
        mqtt_url = "mqtts://127.0.0.1:1"
        upload_url = "https://127.0.0.1:1/files/"
        ca_file = "ca.pem"
        platform_key_file = "platform.pub"
        command_max_age_s = 120
        """))
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    try:
        worker = Inbound(config, store, {PLATFORM.keyid: PLATFORM.public_key},
                         respond=lambda *_a: None, commands={"status": lambda _a: {"ok": 1}},
                         on_acknowledged=lambda _c: None)
        assert _code(worker.handle_command(_command(NOW - 120 * S, NOW + 60 * S))) == "ok"
        stale = worker.handle_command(_command(NOW - 120 * S - MS, NOW + 60 * S))
        assert _code(stale) == "stale"
    finally:
        store.close()


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(("issued", "expires", "changes", "error"), [
    (NOW - S, NOW + 60 * S, {"name": "rescan"},
     "name: command names 'rescan' but came on cmd/status"),
    (NOW - S, NOW + 60 * S, {"issued_at": "yesterday"}, "times: command times are not "
     "RFC 3339: "),
    (NOW - 60 * S, NOW - S, {}, "expired: command {id} expired at 2026-11-28T00:59:59.000Z"),
    (NOW + 61 * S, NOW + 600 * S, {},
     "future: command {id} is issued in the future (2026-11-28T01:01:01.000Z)"),
    (NOW - 601 * S, NOW + 60 * S, {},
     "stale: command {id} is stale: issued 2026-11-28T00:49:59.000Z"),
])
def test_a_refused_command_is_answered_with_the_rule_it_broke(
        platform: Platform, issued: dt.datetime, expires: dt.datetime,
        changes: dict[str, Any], error: str) -> None:
    """Rule: a command refused for its name or times is answered with the code and the
    reason, naming the command and the time that broke the rule."""
    message = _command(issued, expires, id="cmd-77", **changes)
    response = platform.inbound.handle_command(message)
    assert response["ok"] is False
    assert (response["command_id"], response["name"]) == ("cmd-77", "status")
    assert response["error"].startswith(error.format(id="cmd-77")), response["error"]
    assert platform.refusals("command.refused")[-1]["reason"].startswith(
        error.split(": ", 1)[1].format(id="cmd-77"))


@pytest.mark.usefixtures("frozen")
def test_a_command_on_a_long_topic_is_refused_naming_the_topic_bounded(
        platform: Platform) -> None:
    """Rule: the topic a command came on is quoted in its refusal at most 64 characters
    long, so a sender cannot make refusals arbitrarily large."""
    import dataclasses

    name = "x" * 200
    message = dataclasses.replace(_command(NOW - S, NOW + 60 * S), name=name)
    platform.inbound.commands[name] = lambda _a: {}
    response = platform.inbound.handle_command(message)
    from agent.sync.refusals import bounded
    assert response["error"] == (f"name: command names 'status' but came on "
                                 f"cmd/{bounded(name, 64)}")


@pytest.mark.usefixtures("frozen")
def test_a_command_handler_receives_the_commands_args(platform: Platform) -> None:
    """Rule: an accepted command's handler runs with the args the platform signed."""
    received: list[Any] = []

    def doctor(args: dict[str, Any]) -> dict[str, Any]:
        received.append(args)
        return {"ran": 1}

    platform.inbound.commands["doctor"] = doctor
    body = _command(NOW - S, NOW + 60 * S, name="doctor", args={"network": False})
    message = InboundMessage(topic="bwc/v1/stations/ST-0001/cmd/doctor", name="doctor",
                             payload=body.payload)
    response = platform.inbound.handle_command(message)
    assert response["ok"] is True and response["result"] == {"ran": 1}
    assert received == [{"network": False}]


@pytest.mark.usefixtures("frozen")
def test_a_command_handler_defect_is_answered_naming_the_kind_of_failure(
        platform: Platform) -> None:
    """Rule: a command whose handler fails on a defect is answered with the command's name
    and the kind of failure (never its details), so IT staff know which log to read."""
    def broken(_args: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("secret detail")

    platform.inbound.commands["status"] = broken
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, id="cmd-5"))
    assert response["error"] == ("command status failed inside the station (KeyError); "
                                 "see the station log")
    assert (response["command_id"], response["name"], response["ok"]) == ("cmd-5", "status",
                                                                          False)


@pytest.mark.usefixtures("frozen")
def test_a_command_that_fails_in_the_station_is_answered_with_its_diagnostics_bounded(
        platform: Platform) -> None:
    """Rule: a command whose handler fails with a station error is answered with that
    error's diagnostics, cut to 500 characters, and the time of the answer."""
    from agent.errors import StoreError
    from agent.sync.refusals import bounded
    from agent.timeutil import parse_rfc3339

    error = StoreError("the disk is full " + "x" * 600)

    def full(_args: dict[str, Any]) -> dict[str, Any]:
        raise error

    platform.inbound.commands["status"] = full
    before = dt.datetime.now(dt.UTC) - S
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, id="cmd-6"))
    assert response["error"] == bounded(error.diagnostics(), 500)
    assert (response["command_id"], response["name"], response["ok"]) == ("cmd-6", "status",
                                                                          False)
    assert before <= parse_rfc3339(response["at"]) <= dt.datetime.now(dt.UTC) + S


def test_the_tag_command_goes_on_past_an_unknown_or_unchanged_clip(platform: Platform) -> None:
    """Rule: a tag command handles every clip it names: an unknown clip, one already in the
    case, or one not in the case to remove does not stop the clips after it."""
    from agent.sync.inbound import tag_command

    run = tag_command(platform.config, platform.store)
    first, second = platform.clip(0)["clip_id"], platform.clip(1)["clip_id"]
    assert run({"case_id": "CASE-1", "clips": ["0193-unknown", first]}) == \
        {"tagged": [first], "unknown": ["0193-unknown"], "unchanged": []}
    assert run({"case_id": "CASE-1", "clips": [first, second]}) == \
        {"tagged": [second], "unknown": [], "unchanged": [first]}
    run({"case_id": "CASE-1", "remove": True, "clips": [first]})
    assert run({"case_id": "CASE-1", "remove": True, "clips": [first, second]}) == \
        {"tagged": [second], "unknown": [], "unchanged": [first]}


def test_the_tag_command_names_its_args_when_it_refuses_them(platform: Platform) -> None:
    """Rule: tag args the command cannot take are refused as the tag command's args."""
    from agent.sync.inbound import Refused, tag_command

    run = tag_command(platform.config, platform.store)
    with pytest.raises(Refused) as err:
        run({"case_id": "CASE-1", "clips": [], "force": True})
    assert str(err.value).startswith("tag args: unknown field(s) force")


def test_the_refusal_summary_is_written_when_its_window_ends_while_the_station_runs(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: refusals repeated within a window are summed up once the window has ended,
    without waiting for another message or for the station to stop; not before; and
    the worker goes on handling messages afterwards."""
    import time

    clock = [0.0]
    worker, settled, _delays = _worker(platform, monkeypatch)
    worker.refusals.window_s = 0.1  # polled every 10 ms
    monkeypatch.setattr(worker.refusals, "_clock", lambda: clock[0])
    worker.start()
    try:
        for _ in range(2):
            worker.deliver(_message("ack", b"junk"))
        worker.queue.join()
        time.sleep(0.1)
        assert [b.get("repeated") for b in platform.refusals("ack.refused")] == [None]
        clock[0] = 1.0  # the window has ended
        deadline = time.monotonic() + 0.5
        while len(platform.refusals("ack.refused")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [b.get("repeated") for b in platform.refusals("ack.refused")] == [None, 1]
        later = _message("ack", _ack(platform.clip()))
        worker.deliver(later)
        worker.queue.join()
        assert settled[-1] is later and platform.acknowledged == [platform.clip()["clip_id"]]
    finally:
        worker.stop()


def test_stopping_waits_ten_seconds_for_the_worker_and_leaves_a_busy_one_alone(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: stopping waits at most 10 s for the message being handled; a worker still busy
    then is not raced by writing the refusal summary from the stopping thread."""
    class Busy:
        timeouts: list[float | None] = []

        def join(self, timeout: float | None = None) -> None:
            self.timeouts.append(timeout)

        def is_alive(self) -> bool:
            return True

    worker, _settled, _delays = _worker(platform, monkeypatch)
    flushed: list[bool] = []
    monkeypatch.setattr(worker.refusals, "flush", lambda force=False: flushed.append(force))
    assert worker._thread.daemon  # a worker stuck in a handler never keeps the agent up
    busy = Busy()
    monkeypatch.setattr(worker, "_thread", busy)
    worker.stop()
    assert busy.timeouts == [10] and flushed == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_message_whose_handling_was_cut_short_is_not_settled(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: a message is settled only when its handling finished; one cut short (the
    worker interrupted inside the handler) stays unsettled, so the broker delivers it
    again."""
    def interrupted(_payload: bytes) -> None:
        raise SystemExit("interrupted")

    worker, settled, _delays = _worker(platform, monkeypatch, {"roster": interrupted})
    worker.start()
    worker.deliver(_message("roster", b"{}"))
    worker.queue.join()
    worker.stop()
    assert settled == []


# --- the shapes of fields, and where refusals are answered -------------------------------------

@pytest.mark.parametrize(("field", "value", "problem"), [
    (("int", 1000, 1), 1, None),
    (("int", 1000, 1), 1000, None),
    (("int", 1000, 1), 0, "is 0 (from 1 to 1000)"),
    (("int", 1000, 1), 1001, "is 1001 (from 1 to 1000)"),
    (("int", 1000, 1), True, "is a boolean, not an integer"),
    (("int", 1000, 1), "5", "is a string, not an integer"),
    (("object", 256, 0), {}, None),
    (("bool", 256, 0), False, None),
    (("bool", 256, 0), "true", "is a string, not a boolean"),
    (("text", 3, 0), "abc", None),
    (("text", 3, 0), "abcd", "is 4 characters long (at most 3)"),
    (("text-list", 2, 0), ["a", "b"], None),
    (("text-list", 2, 0), ["a", "b", "c"], "has 3 items (at most 2)"),
    (("text-list", 2, 0), ["x" * 256], None),
    (("text-list", 2, 0), ["a", "x" * 257], "item 1 is not a string of 1 to 256 characters"),
    (("text-list", 2, 0), ["a", ""], "item 1 is not a string of 1 to 256 characters"),
    (("text-list", 2, 0), [3], "item 0 is not a string of 1 to 256 characters"),
])
def test_a_field_is_taken_only_within_its_kind_and_bounds(field: tuple[str, int, int],
                                                          value: Any, problem: str | None) -> None:
    """Rule: integers (never booleans) within their range, objects, booleans, texts up to
    their length, lists of 1 to 256-character strings up to their count: at the bounds
    taken, one past them refused with the reason."""
    from agent.sync.inbound import Field

    kind, max_len, min_value = field
    assert Field(kind, max_len=max_len, min_value=min_value).problem(value) == problem


def test_every_field_of_a_shape_is_checked_after_an_absent_optional_one() -> None:
    """Rule: an optional field left out does not end the check: the fields after it are
    still checked (a tag command's replaces of the wrong type is refused without remove)."""
    from agent.sync.inbound import COMMAND_ARGS, Refused, check_shape

    with pytest.raises(Refused) as err:
        check_shape({"case_id": "C-1", "clips": ["a"], "replaces": 5}, COMMAND_ARGS["tag"],
                    "tag args", "args")
    assert str(err.value) == "tag args: field 'replaces' is a number, not a non-empty string"


def test_unknown_fields_are_refused_naming_them_bounded_and_what_is_accepted() -> None:
    """Rule: a closed shape refuses unknown fields naming them (cut to 80 characters) and
    the fields it accepts, or none."""
    from agent.sync.inbound import Field, Refused, check_shape
    from agent.sync.refusals import bounded

    with pytest.raises(Refused) as err:
        check_shape({"b": 1, "a": 2}, {"x": Field("int", required=False),
                                       "y": Field("int", required=False)},
                    "doctor args", "args", closed=True)
    assert str(err.value) == "doctor args: unknown field(s) a, b (accepted: x, y)"
    many = {f"field{i:03}": 1 for i in range(40)}
    with pytest.raises(Refused) as err:
        check_shape(many, {}, "status args", "args", closed=True)
    assert str(err.value) == (f"status args: unknown field(s) "
                              f"{bounded(', '.join(sorted(many)), 80)} (accepted: none)")


def _unsigned_command(reply_to: Any) -> InboundMessage:
    body = {"id": "cmd-x", "name": "status", "station_id": "ST-0001",
            "issued_at": rfc3339(NOW.timestamp()), "expires_at": rfc3339(NOW.timestamp() + 60),
            "reply_to": reply_to}
    envelope = dsse.sign_envelope(dsse.COMMAND, canonicalize(body), [StationKey.generate()])
    return InboundMessage(topic="bwc/v1/stations/ST-0001/cmd/status", name="status",
                          payload=json.dumps(envelope).encode())


@pytest.mark.usefixtures("frozen")
def test_a_command_failing_its_signature_is_answered_only_under_the_reply_subtree(
        platform: Platform) -> None:
    """Rule: the refusal of a command whose signature fails is answered on the reply_to it
    carries when that topic is under the station's reply subtree (so the platform learns
    why), never anywhere else, and a reply_to that is no text is ignored."""
    sent: list[tuple[str, dict[str, Any]]] = []
    platform.inbound.respond = lambda topic, _c, body: sent.append((topic, json.loads(body)))
    inside = "bwc/v1/stations/ST-0001/reply/ops"
    response = platform.inbound.handle_command(_unsigned_command(inside))
    assert _code(response) == "signature"
    assert sent == [(inside, response)]
    sent.clear()
    for elsewhere in ("bwc/v1/stations/ST-0002/reply/ops", 5, ""):
        assert _code(platform.inbound.handle_command(_unsigned_command(elsewhere))) == \
            "signature"
    assert sent == []


@pytest.mark.usefixtures("frozen")
def test_a_reply_to_is_read_from_an_unsigned_payload_only_within_the_depth_bound(
        platform: Platform) -> None:
    """Rule: where to answer is read from an unverified payload with the same depth bound as
    every platform message (8): a payload nested deeper is not read, and not answered."""
    sent: list[str] = []
    platform.inbound.respond = lambda topic, _c, _b: sent.append(topic)
    nested = {"reply_to": "bwc/v1/stations/ST-0001/reply/ops",
              "x": [[[[[[[[[["deep"]]]]]]]]]]}
    envelope = dsse.sign_envelope(dsse.COMMAND, json.dumps(nested).encode(), [PLATFORM])
    message = InboundMessage(topic="bwc/v1/stations/ST-0001/cmd/status", name="status",
                             payload=json.dumps(envelope).encode())
    assert _code(platform.inbound.handle_command(message)) == "payload"
    assert sent == []


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(("make", "error"), [
    (lambda: InboundMessage(topic="t", name="status", payload=b"{"),
     "not-json: command is not acceptable JSON: "),
    (lambda: InboundMessage(topic="t", name="status", payload=json.dumps(
        dsse.sign_envelope(dsse.COMMAND, b"{", [PLATFORM])).encode()),
     "payload: command payload is not acceptable JSON: "),
    (lambda: _command(NOW - S, NOW + 60 * S, id=_DROP),
     "payload: command payload: field 'id' is missing"),
    (lambda: _command(NOW - S, NOW + 60 * S, reply_to="elsewhere/ops"),
     "reply-topic: response topic 'elsewhere/ops' is not a topic under "
     "bwc/v1/stations/ST-0001/reply/"),
])
def test_a_malformed_command_is_refused_saying_which_part_is_wrong(
        platform: Platform, make: Any, error: str) -> None:
    """Rule: a command refused before it is trusted says whether the message, its payload
    or its reply topic is wrong."""
    response = platform.inbound.handle_command(make())
    assert response["ok"] is False and response["error"].startswith(error), response


@pytest.mark.usefixtures("frozen")
def test_an_unknown_command_is_refused_naming_it_bounded_and_the_known_ones(
        platform: Platform) -> None:
    """Rule: a command the station does not know is refused naming it (cut to 64
    characters) and the commands it knows."""
    import dataclasses

    from agent.sync.refusals import bounded

    platform.inbound.commands["rescan"] = lambda _a: {}
    name = "y" * 100
    message = dataclasses.replace(_command(NOW - S, NOW + 60 * S, id="cmd-u"), name=name)
    response = platform.inbound.handle_command(message)
    assert response["error"] == (f"unknown-command: unknown command {bounded(name, 64)!r} "
                                 f"(known: rescan, status)")
    refusal = platform.refusals("command.refused")[-1]
    assert (refusal["name"], refusal["command_id"]) == (bounded(name), "cmd-u")


@pytest.mark.usefixtures("frozen")
def test_a_command_refusal_records_the_command_name_and_id(platform: Platform) -> None:
    """Rule: a refused command's custody record names the command and its id."""
    platform.inbound.handle_command(_command(NOW - 601 * S, NOW + 60 * S, id="cmd-old"))
    refusal = platform.refusals("command.refused")[-1]
    assert (refusal["code"], refusal["name"], refusal["command_id"]) == \
        ("stale", "status", "cmd-old")


@pytest.mark.usefixtures("frozen")
def test_a_command_without_args_runs_with_none_and_is_logged_with_its_args(
        platform: Platform) -> None:
    """Rule: args left out are no args; an accepted command is a custody entry naming its
    id, its name and its args; while it runs the station knows which command it is."""
    running: list[str | None] = []

    def status(args: dict[str, Any]) -> dict[str, Any]:
        running.append(platform.inbound.running_command)
        return {"args": args}

    platform.inbound.commands["status"] = status
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, id="cmd-1",
                                                        args=_DROP))
    assert (response["ok"], response["name"], response["result"]) == (True, "status",
                                                                        {"args": {}})
    assert running == ["cmd-1"] and platform.inbound.running_command is None
    response = platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S, id="cmd-2"))
    entries = [json.loads(r["body"]) for r in platform.store.query(
        "SELECT body FROM custody_log WHERE kind = 'command.accepted' ORDER BY seq")]
    assert entries == [{"command_id": "cmd-1", "name": "status", "args": {}},
                       {"command_id": "cmd-2", "name": "status", "args": {}}]
    doctor = InboundMessage(topic="bwc/v1/stations/ST-0001/cmd/doctor", name="doctor",
                            payload=_command(NOW - S, NOW + 60 * S, id="cmd-3", name="doctor",
                                             args={"network": True}).payload)
    platform.inbound.commands["doctor"] = lambda _a: {}
    platform.inbound.handle_command(doctor)
    last = json.loads(platform.store.query(
        "SELECT body FROM custody_log WHERE kind = 'command.accepted' ORDER BY seq DESC")[0][
        "body"])
    assert last == {"command_id": "cmd-3", "name": "doctor", "args": {"network": True}}


@pytest.mark.usefixtures("frozen")
def test_a_broker_resend_is_logged_as_redelivered_and_a_replay_says_so(
        platform: Platform) -> None:
    """Rule: the broker's resend of an answered command is a command.redelivered entry
    naming it, answered as the first time; a resend not marked as one is a replay."""
    import dataclasses

    message = _command(NOW - S, NOW + 60 * S, id="cmd-9")
    first = platform.inbound.handle_command(message)
    again = platform.inbound.handle_command(dataclasses.replace(message, dup=True))
    assert again == first
    (entry,) = [json.loads(r["body"]) for r in platform.store.query(
        "SELECT body FROM custody_log WHERE kind = 'command.redelivered'")]
    assert entry == {"command_id": "cmd-9", "name": "status"}
    replay = platform.inbound.handle_command(message)
    assert replay["error"] == "replay: command cmd-9 was already received (replay)"


@pytest.mark.usefixtures("frozen")
def test_a_reply_topic_may_hold_any_letter(platform: Platform) -> None:
    """Rule: only + and # (MQTT wildcards) and NUL make a reply topic unusable."""
    sent: list[str] = []
    platform.inbound.respond = lambda topic, _c, _b: sent.append(topic)
    topic = "bwc/v1/stations/ST-0001/reply/X-ops"
    assert platform.inbound.handle_command(_command(NOW - S, NOW + 60 * S,
                                                    reply_to=topic))["ok"] is True
    assert sent == [topic]
