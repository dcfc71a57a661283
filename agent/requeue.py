"""Requeue: an operator sends a quarantined clip back to the upload queue.

Only a clip that was sealed before it was quarantined (the platform refused
its upload, or the upload could not be sent) can be requeued: it goes back to
``sealed`` with its attempts reset, and the uploader takes it within its next
poll.  A clip quarantined during ingest has no sealed copy to send: it is copied
again by itself at the camera's next dock (the bytes read before stay in the
vault as evidence; a file that changed since becomes a new clip).
The requeue is a custody log entry (who, why, the reason it replaces).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from agent.errors import AgentError
from agent.store import ClipState, Store

S = ClipState


class RequeueRefused(AgentError):
    """The clip cannot go back to the upload queue; the message says why and what happens."""


def requeue_problem(clip: sqlite3.Row) -> str | None:
    """Why this clip (a clips row) cannot be requeued, or None if it can."""
    clip_id, state = clip["clip_id"], clip["state"]
    if state != S.QUARANTINED.value:
        return f"clip {clip_id} is {state}: only a quarantined clip can be requeued"
    if clip["manifest"] is not None:
        return None
    kept = ("" if clip["sha256"] is None else
            f"; the bytes read so far stay in the vault as evidence (sha256 {clip['sha256']})")
    return (f"clip {clip_id} was never sealed ({clip['reason']}); it is copied again by "
            "itself the next time its camera docks (a file that changed on the camera since "
            f"becomes a new clip){kept}")


def requeue_clip(store: Store, clip_id: str, *, by: str, note: str | None) -> dict[str, Any]:
    """Move a quarantined, sealed clip back to ``sealed``; returns the log entry body.

    The upload starts afresh (a new tus upload): the refused one may be what
    the platform cleaned up when it fixed the cause.
    """
    with store.transaction() as tx:
        clip = tx.clip(clip_id)
        problem = requeue_problem(clip)
        if problem is not None:
            raise RequeueRefused(problem)
        body = {"requeued_by": by, "note": note, "previous_reason": clip["reason"]}
        tx.transition(clip_id, S.SEALED, reason=None, upload_attempts=0, next_attempt_at=0,
                      upload_url=None, upload_offset=0, log_body=body)
    return body
