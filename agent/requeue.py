"""Requeue: an operator sends a quarantined clip back to the upload queue.

Only a clip that was sealed before it was quarantined (the platform refused
its upload, or the upload could not be sent) can be requeued: it goes back to
``sealed`` with its attempts reset, and the uploader takes it within its next
poll.  A clip quarantined during ingest has no sealed copy to send: one that
could not be read is copied again by itself at the camera's next dock, and
one that changed while it was copied keeps the bytes that were read as
evidence, while the file as it is now becomes a new clip at the next dock.
The requeue is a custody log entry (who, why, the reason it replaces).
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError
from agent.store import ClipState, Store

S = ClipState


class RequeueRefused(AgentError):
    """The clip cannot go back to the upload queue; the message says why and what happens."""


def requeue_clip(store: Store, clip_id: str, *, by: str, note: str | None) -> dict[str, Any]:
    """Move a quarantined, sealed clip back to ``sealed``; returns the log entry body."""
    with store.transaction() as tx:
        clip = tx.clip(clip_id)
        state = clip["state"]
        if state != S.QUARANTINED.value:
            raise RequeueRefused(f"clip {clip_id} is {state}: only a quarantined clip can be "
                                 "requeued")
        if clip["manifest"] is None:
            if clip["sha256"] is None:
                raise RequeueRefused(
                    f"clip {clip_id} could not be copied ({clip['reason']}); it is copied "
                    "again by itself the next time its camera docks")
            raise RequeueRefused(
                f"clip {clip_id} was never sealed ({clip['reason']}); the bytes that were read "
                "stay in the vault as evidence, and the file as it is on the camera now is "
                "ingested as a new clip at the next dock")
        body = {"requeued_by": by, "note": note, "previous_reason": clip["reason"]}
        tx.transition(clip_id, S.SEALED, reason=None, upload_attempts=0, next_attempt_at=0,
                      log_body=body)
    return body
