"""The station's durable outbox: the ``outbox`` table of the station database.

Events are inserted by :meth:`agent.store.Tx.event` in the same transaction
as the state change they announce; the MQTT link drains them from here.
"""

from __future__ import annotations

from agent.errors import AgentError
from agent.store import Store
from agent.store.db import OUTBOX_PENDING
from agent.sync.outbox import OutboxItem
from agent.timeutil import now

# The most events one resend-events command may ask for (a bounded update).
RESEND_MAX = 10000


class StoreOutbox:
    """Implements :class:`agent.sync.outbox.Outbox` over the station store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        with self.store.transaction() as tx:
            tx.execute("INSERT INTO outbox (topic, payload, qos, retain, created_at) "
                       "VALUES (?,?,?,?,?)", (topic, payload, qos, int(retain), now()))
        self.store.outbox_signal.set()

    def pending(self, limit: int) -> list[OutboxItem]:
        # Cleared before the read: an insert after this point sets it again.
        self.store.outbox_signal.clear()
        rows = self.store.query(f"SELECT id, topic, payload, qos, retain FROM outbox WHERE "
                                f"{OUTBOX_PENDING} ORDER BY id LIMIT ?", (limit,))
        return [OutboxItem(r["id"], r["topic"], bytes(r["payload"]), r["qos"], bool(r["retain"]))
                for r in rows]

    def mark_delivered(self, item_id: int) -> None:
        with self.store.transaction() as tx:
            tx.execute("UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                       (now(), item_id))

    def mark_refused(self, item_id: int, reason: str) -> None:
        """The broker refused the item: counted, with the reason (``bwc-agent outbox`` shows it)."""
        with self.store.transaction() as tx:
            tx.execute("UPDATE outbox SET refusals = refusals + 1, last_error = ? WHERE id = ?",
                       (reason[:500], item_id))

    def cleared(self, item_ids: set[int]) -> set[int]:
        """Those of ``item_ids`` whose refusal IT staff cleared (``outbox retry``), or dropped."""
        if not item_ids:
            return set()
        marks = ",".join("?" * len(item_ids))
        rows = self.store.query(f"SELECT id FROM outbox WHERE id IN ({marks}) AND "
                                "(last_error IS NULL OR dropped_at IS NOT NULL)",
                                tuple(sorted(item_ids)))
        return {int(r["id"]) for r in rows}

    def resend_events(self, topic: str, from_seq: int, to_seq: int) -> int:
        """Send again the events ``from_seq``..``to_seq`` delivered already; how many.

        For a platform that found events missing (docs/PROTOCOL.md, ``resend-events``):
        a broker that crashed may lose what it had acknowledged.  The events go out
        again, in their order, with their ids (the platform de-duplicates by id).
        """
        if to_seq < from_seq or to_seq - from_seq >= RESEND_MAX:
            raise AgentError(f"resend-events: from_seq {from_seq} to to_seq {to_seq} is not "
                             f"a range of 1 to {RESEND_MAX} events")
        with self.store.transaction() as tx:
            count = tx.execute(
                # Never one IT staff dropped (its PUBACK may have come after the drop); a
                # refusal before its delivery is history, not a reason to hold it now.
                "UPDATE outbox SET delivered_at = NULL, last_error = NULL "
                "WHERE topic = ? AND delivered_at IS NOT NULL AND dropped_at IS NULL AND "
                "CAST(json_extract(CAST(payload AS TEXT), '$.seq') AS INTEGER) "
                "BETWEEN ? AND ?", (topic, from_seq, to_seq)).rowcount
            tx.log("events.resent", None, {"from_seq": from_seq, "to_seq": to_seq,
                                           "events": count})
        self.store.outbox_signal.set()
        return int(count)

    def event_seq(self) -> int:
        """The seq of the newest event queued (0 before the first)."""
        row = self.store.query_one("SELECT value FROM meta WHERE key = 'event_seq'")
        return int(row["value"]) if row else 0

    def wait_for_new(self, timeout: float) -> None:
        self.store.outbox_signal.wait(timeout)

    def backlog(self) -> int:
        return self.store.outbox_backlog()
