"""resend-events: what a platform asks for again goes out again, and only that."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from agent.outboxcare import drop_item
from agent.overview import outbox_refused
from agent.store import Store
from agent.sync.storeoutbox import StoreOutbox

STATION = "ST-0001"
EVENTS = f"bwc/v1/stations/{STATION}/events"


def _event(outbox: StoreOutbox, seq: int) -> int:
    outbox.add(EVENTS, json.dumps({"id": str(uuid.uuid4()), "type": "device.undocked",
                                   "seq": seq, "data": {}}).encode())
    (item,) = [i for i in outbox.pending(100) if json.loads(i.payload)["seq"] == seq]
    return item.id


def test_an_event_it_staff_dropped_is_never_resent_nor_counted(tmp_path: Path) -> None:
    """Rule: a drop is final; resend-events says how many events it really sends again."""
    store = Store(tmp_path / "state.db", station_id=STATION)
    try:
        outbox = StoreOutbox(store)
        dropped, kept = _event(outbox, 7), _event(outbox, 8)
        drop_item(store, dropped, by="it", reason="stuck")  # while it was in flight
        outbox.mark_delivered(dropped)  # the broker's PUBACK came after the drop
        outbox.mark_delivered(kept)
        assert outbox.resend_events(EVENTS, 7, 8) == 1
        waiting = {json.loads(i.payload)["type"]: i.id for i in outbox.pending(100)}
        assert waiting == {"device.undocked": kept, "outbox.dropped": waiting["outbox.dropped"]}
        (entry,) = [json.loads(r["body"]) for r in store.query(
            "SELECT body FROM custody_log WHERE kind = 'events.resent'")]
        assert entry == {"from_seq": 7, "to_seq": 8, "events": 1}
    finally:
        store.close()


def test_a_resent_event_refused_once_before_is_not_shown_as_refused(tmp_path: Path) -> None:
    """Rule: "refused" in the status means refused at its last attempt, not before."""
    store = Store(tmp_path / "state.db", station_id=STATION)
    try:
        outbox = StoreOutbox(store)
        item = _event(outbox, 3)
        outbox.mark_refused(item, "the broker refused it: Quota exceeded")
        outbox.mark_delivered(item)  # delivered on the next connection
        assert outbox.resend_events(EVENTS, 3, 3) == 1
        assert [i.id for i in outbox.pending(100)] == [item] and outbox_refused(store) == 0
    finally:
        store.close()
