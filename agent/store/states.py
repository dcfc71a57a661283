"""The clip state machine (DESIGN.md §3).

``discovered → copying → copied → sealed → uploading → uploaded →
acknowledged → released → purged``, plus ``quarantined`` (with a reason) for
what cannot proceed and ``duplicate`` for a discovery whose bytes are
already in the vault under another clip.  Only the transitions listed here
are allowed; the store refuses anything else.
"""

from __future__ import annotations

from enum import StrEnum


class ClipState(StrEnum):
    DISCOVERED = "discovered"
    COPYING = "copying"
    COPIED = "copied"
    SEALED = "sealed"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    ACKNOWLEDGED = "acknowledged"
    RELEASED = "released"
    PURGED = "purged"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"


S = ClipState
STATES: tuple[str, ...] = tuple(s.value for s in ClipState)

TRANSITIONS: dict[ClipState, frozenset[ClipState]] = {
    S.DISCOVERED: frozenset({S.COPYING}),
    # A copy ends copied, back to discovered (device removed), duplicate or quarantined.
    S.COPYING: frozenset({S.COPIED, S.DISCOVERED, S.DUPLICATE, S.QUARANTINED}),
    S.COPIED: frozenset({S.SEALED, S.QUARANTINED}),
    S.SEALED: frozenset({S.UPLOADING}),
    S.UPLOADING: frozenset({S.UPLOADED, S.QUARANTINED, S.SEALED}),
    S.UPLOADED: frozenset({S.ACKNOWLEDGED}),
    # release = "never" goes from acknowledged straight to purged.
    S.ACKNOWLEDGED: frozenset({S.RELEASED, S.PURGED}),
    S.RELEASED: frozenset({S.PURGED}),
    S.PURGED: frozenset(),
    # A quarantined clip whose bytes are in the vault can still be sealed by hand
    # (after an operator fixed the cause); it is never deleted.
    S.QUARANTINED: frozenset({S.SEALED, S.DISCOVERED}),
    S.DUPLICATE: frozenset(),
}

# Where a clip rests once the station has done all it can without a platform.
FINAL_LOCAL_STATES = frozenset({
    S.SEALED, S.UPLOADING, S.UPLOADED, S.ACKNOWLEDGED, S.RELEASED, S.PURGED,
    S.QUARANTINED, S.DUPLICATE,
})

# States in which the vault holds the clip's bytes.
IN_VAULT = frozenset({
    S.COPIED, S.SEALED, S.UPLOADING, S.UPLOADED, S.ACKNOWLEDGED, S.RELEASED,
})
