"""`bwc-agent outbox`: an item a real broker refuses is listed, retried and dropped by IT staff.

A real mosquitto with the station ACL refuses what a station publishes
outside its own topics (PUBACK 0x87): that is how an item gets stuck.  The
link drains the station store's outbox (the daemon's own StoreOutbox).
"""

from __future__ import annotations

import getpass
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.store import Store
from agent.sync.mqtt import MqttLink
from agent.sync.storeoutbox import StoreOutbox
from tests.conftest import write_station_config
from tests.integration.conftest import ClientCert
from tests.support.mosquitto import Broker, PlatformClient

pytestmark = pytest.mark.integration

STATION = "ST-0001"
EVENTS = f"bwc/v1/stations/{STATION}/events"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _event(type_: str, **data: Any) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "type": type_, "station_id": STATION,
                       "seq": 1, "at": "2026-05-01T08:00:00.000Z", "data": data}).encode()


@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    config = write_station_config(tmp_path)
    store = Store(tmp_path / "data" / "state.db", station_id=STATION)
    yield config, store
    store.close()


def _outbox(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["outbox", "--config", str(config), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_refused_item_is_listed_retried_and_dropped(
        station: tuple[Path, Store], broker: Broker, station_cert: ClientCert,
        platform: PlatformClient, capsys: pytest.CaptureFixture[str]) -> None:
    config, store = station
    outbox = StoreOutbox(store)
    # Another station's topic: the ACL refuses it.  The permitted event goes through.
    stuck = _event("device.docked", serial="CAM1")
    outbox.add("bwc/v1/stations/ST-9999/events", stuck)
    stuck_id = int(store.query_one("SELECT MAX(id) AS id FROM outbox")["id"])
    outbox.add(EVENTS, _event("device.undocked", serial="CAM1"))
    link = MqttLink(station_id=STATION, url=broker.url, ca_file=broker.ca.cert_path,
                    cert_file=station_cert.cert_file, key_file=station_cert.key_file,
                    username=None, password=None, protocol="5", keepalive=30, outbox=outbox,
                    status_provider=dict, on_message=lambda _m: None)
    link.start()
    try:
        assert link.wait_connected(10), link.last_error

        def refusals() -> int:
            return int(store.query_one("SELECT refusals FROM outbox WHERE id = ?",
                                       (stuck_id,))["refusals"])

        wait_until(lambda: refusals() == 1, what="the broker's refusal recorded")
        wait_until(lambda: outbox.backlog() == 1, what="the permitted event delivered")

        code, out = _outbox(config, capsys, "list")
        assert code == 0
        assert str(stuck_id) in out and "device.docked" in out and "Not authorized" in out
        code, out = _outbox(config, capsys, "--json", "list")
        [item] = json.loads(out)
        assert item["id"] == stuck_id and item["refusals"] == 1
        assert "Not authorized" in item["last_error"]
        code, out = _outbox(config, capsys, "show", str(stuck_id))
        assert json.loads(out)["payload"]["data"] == {"serial": "CAM1"}

        # retry: the running link publishes it again at once (no new connection needed).
        code, out = _outbox(config, capsys, "retry", str(stuck_id), "--note", "ACL fixed")
        assert code == 0 and "retried" in out
        wait_until(lambda: refusals() == 2, what="the item published again and refused again")
        assert link.connection_state()["state"] == "connected"

        code, out = _outbox(config, capsys, "drop", str(stuck_id), "--reason",
                            "ticket 4711: event of a retired camera")
        assert code == 0 and "dropped" in out
        assert outbox.backlog() == 1  # the outbox.dropped event itself, for the platform
        wait_until(lambda: outbox.backlog() == 0, what="the outbox.dropped event delivered")
    finally:
        link.stop(timeout=2)
    code, out = _outbox(config, capsys, "list")
    assert "the outbox is empty" in out
    entries = [(r["kind"], json.loads(r["body"])) for r in store.query(
        "SELECT kind, body FROM custody_log WHERE kind LIKE 'outbox.%' ORDER BY seq")]
    assert [k for k, _b in entries] == ["outbox.retried", "outbox.dropped"]
    retried, dropped = entries[0][1], entries[1][1]
    assert retried["by"] == getpass.getuser() and retried["note"] == "ACL fixed"
    assert dropped["by"] == getpass.getuser()
    assert dropped["reason"] == "ticket 4711: event of a retired camera"
    assert dropped["type"] == "device.docked" and dropped["forced"] is False
    announced = [m.json() for m in platform.messages(EVENTS)
                 if m.json()["type"] == "outbox.dropped"]
    assert announced and announced[0]["data"]["event_id"] == json.loads(stuck)["id"]


def test_an_evidence_event_is_dropped_only_with_force(
        station: tuple[Path, Store], capsys: pytest.CaptureFixture[str]) -> None:
    config, store = station
    StoreOutbox(store).add(EVENTS, _event("clip.sealed", clip_id="0193-clip"))
    item_id = int(store.query_one("SELECT MAX(id) AS id FROM outbox")["id"])
    code, out = _outbox(config, capsys, "drop", str(item_id), "--reason", "test")
    assert code == 1
    assert "evidence event (clip.sealed of clip 0193-clip)" in out
    assert "could never check and acknowledge" in out
    assert "--force" in out
    assert store.outbox_backlog() == 1 and not store.query(
        "SELECT 1 FROM custody_log WHERE kind = 'outbox.dropped'")
    code, out = _outbox(config, capsys, "drop", str(item_id), "--reason", "in bundle 7",
                        "--force")
    assert code == 0
    row = store.query_one("SELECT clip_id, body FROM custody_log WHERE kind = "
                          "'outbox.dropped'")
    assert row["clip_id"] == "0193-clip" and json.loads(row["body"])["forced"] is True
    code, out = _outbox(config, capsys, "drop", str(item_id), "--reason", "again")
    assert code == 1 and "was dropped at" in out
    code, out = _outbox(config, capsys, "--json", "list", "--dropped")
    assert [i["id"] for i in json.loads(out)] == [item_id]
