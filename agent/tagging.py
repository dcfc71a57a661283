"""Case tags: attach a case ID to clips, as a custody log entry (manifests stay sealed)."""

from __future__ import annotations

import re
from typing import Any

from agent.errors import ConfigError
from agent.store import Store


def check_case_id(case_id: str, pattern: str) -> None:
    if not re.fullmatch(pattern, case_id):
        raise ConfigError(f"case ID {case_id!r} does not match the configured pattern "
                          f"custody.case_id_pattern = {pattern!r}")


def tag_clip(store: Store, clip_id: str, case_id: str, *, pattern: str, source: str,
             by: str | None = None) -> dict[str, Any]:
    """Tag one clip; returns the log entry body.  Re-tagging records the previous case ID."""
    check_case_id(case_id, pattern)
    with store.transaction() as tx:
        clip = tx.clip(clip_id)
        body = {"case_id": case_id, "previous_case_id": clip["case_id"], "source": source,
                "by": by, "sha256": clip["sha256"]}
        tx.update_clip(clip_id, case_id=case_id)
        entry = tx.log("clip.tagged", clip_id, body)
        tx.event("clip.tagged", {"clip_id": clip_id, "log_seq": entry.seq, **body})
    return body
