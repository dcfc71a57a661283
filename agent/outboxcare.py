"""IT staff's care of the outbox: list what waits, look at one item, retry it, or drop it.

The outbox holds every event and message the station still owes the
platform (agent.sync.outbox).  An item the broker keeps refusing (an ACL
that does not let the station publish it, a payload the broker will not
take) waits there for ever; these functions let IT staff see it and act:

* ``retry``: forget the broker's last refusal, so a running daemon publishes
  the item again within a second (it would otherwise wait for the next
  connection);
* ``drop``: the item is never published.  It stays in the table, marked
  dropped with who and why, and a custody log entry ``outbox.dropped``
  records it (with the event's id, type, seq and the SHA-256 of its bytes),
  in the same transaction as an ``outbox.dropped`` event that tells the
  platform why the event's ``seq`` is missing.

Dropping an evidence event (type ``clip.*``) needs ``force``: the platform
never receives it.  A dropped ``clip.sealed`` means the platform lacks that
clip's signed manifest, so it cannot check the upload and never
acknowledges it: the clip stays on its camera and in the vault until the
manifest reaches the platform another way (an export bundle).  The custody
log and export bundles still hold everything a dropped event said.

Every retry and drop is a custody log entry naming who (the OS user, or
the platform command) and why.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from agent.errors import AgentError, StoreError
from agent.store import Store
from agent.store.db import OUTBOX_PENDING
from agent.timeutil import now

MAX_REASON_CHARS = 500
EVIDENCE_PREFIX = "clip."


class OutboxRefused(AgentError):
    """The outbox item cannot be retried or dropped as asked; the message says why."""


def _event(payload: bytes) -> dict[str, Any]:
    """The event envelope an item carries, or {} for another message (identity)."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) and "type" in value else {}


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    payload = bytes(row["payload"])
    event = _event(payload)
    return {"id": int(row["id"]), "topic": row["topic"], "type": event.get("type"),
            "event_id": event.get("id"), "seq": event.get("seq"),
            "clip_id": (event.get("data") or {}).get("clip_id")
            if isinstance(event.get("data"), dict) else None,
            "created_at": row["created_at"], "delivered_at": row["delivered_at"],
            "refusals": int(row["refusals"]), "last_error": row["last_error"],
            "dropped_at": row["dropped_at"], "dropped_by": row["dropped_by"],
            "drop_reason": row["drop_reason"], "bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest()}


def list_items(store: Store, *, limit: int = 200, dropped: bool = False) -> list[dict[str, Any]]:
    """Items waiting to be published, oldest first (with ``dropped``: the dropped ones)."""
    where = "dropped_at IS NOT NULL" if dropped else OUTBOX_PENDING
    rows = store.query(f"SELECT * FROM outbox WHERE {where} ORDER BY id LIMIT ?", (limit,))
    return [_summary(r) for r in rows]


def show_item(store: Store, item_id: int) -> dict[str, Any]:
    """One item with its payload (JSON where it is JSON)."""
    row = store.query_one("SELECT * FROM outbox WHERE id = ?", (item_id,))
    if row is None:
        raise StoreError(f"no outbox item {item_id}")
    item = _summary(row)
    payload = bytes(row["payload"])
    try:
        item["payload"] = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        item["payload"] = payload.decode("utf-8", "replace")
    return item


def _pending(tx: Any, item_id: int) -> sqlite3.Row:
    row: sqlite3.Row | None = tx.one("SELECT * FROM outbox WHERE id = ?", (item_id,))
    if row is None:
        raise OutboxRefused(f"no outbox item {item_id}")
    if row["delivered_at"] is not None:
        raise OutboxRefused(f"outbox item {item_id} was delivered at {row['delivered_at']}: "
                            "nothing to retry or drop")
    if row["dropped_at"] is not None:
        raise OutboxRefused(f"outbox item {item_id} was dropped at {row['dropped_at']} by "
                            f"{row['dropped_by']}")
    return row


def retry_item(store: Store, item_id: int, *, by: str, note: str | None = None
               ) -> dict[str, Any]:
    """Forget the broker's last refusal of a waiting item; returns the log entry body."""
    with store.transaction() as tx:
        row = _pending(tx, item_id)
        item = _summary(row)
        body = {"item_id": item_id, "event_id": item["event_id"], "type": item["type"],
                "seq": item["seq"], "refusals": item["refusals"],
                "last_error": item["last_error"], "by": by,
                "note": note[:MAX_REASON_CHARS] if note else None}
        tx.execute("UPDATE outbox SET last_error = NULL WHERE id = ?", (item_id,))
        tx.log("outbox.retried", item["clip_id"], body)
    store.outbox_signal.set()
    return body


def drop_problem(item: dict[str, Any], *, force: bool) -> str | None:
    """Why this item may not be dropped without ``force``, or None."""
    kind = item["type"] or ""
    if kind.startswith(EVIDENCE_PREFIX) and not force:
        return (f"outbox item {item['id']} is an evidence event ({kind}"
                + (f" of clip {item['clip_id']}" if item["clip_id"] else "") +
                "): the platform would never receive it"
                + (", so it could never check and acknowledge that clip, which then stays on "
                   "its camera and in the vault" if kind == "clip.sealed" else "") +
                "; drop it only with --force, once the platform has it another way (an "
                "export bundle)")
    return None


def drop_item(store: Store, item_id: int, *, by: str, reason: str, force: bool = False
              ) -> dict[str, Any]:
    """Never publish a waiting item; returns the custody log entry body."""
    reason = reason.strip()
    if not reason:
        raise OutboxRefused("say why the item is dropped (--reason): it goes into the custody "
                            "log")
    with store.transaction() as tx:
        row = _pending(tx, item_id)
        item = _summary(row)
        problem = drop_problem(item, force=force)
        if problem is not None:
            raise OutboxRefused(problem)
        body = {"item_id": item_id, "topic": item["topic"], "event_id": item["event_id"],
                "type": item["type"], "seq": item["seq"],
                "payload_sha256": item["payload_sha256"], "bytes": item["bytes"],
                "refusals": item["refusals"], "last_error": item["last_error"],
                "by": by, "reason": reason[:MAX_REASON_CHARS], "forced": force}
        tx.execute("UPDATE outbox SET dropped_at = ?, dropped_by = ?, drop_reason = ? "
                   "WHERE id = ?", (now(), by, body["reason"], item_id))
        entry = tx.log("outbox.dropped", item["clip_id"], body)
        tx.event("outbox.dropped", {**{k: body[k] for k in (
            "event_id", "type", "seq", "payload_sha256", "by", "reason", "forced")},
            "log_seq": entry.seq})
    return body
