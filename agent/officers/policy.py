"""Release policy by officer: keep a clip on its camera until its officer is verified.

With ``officers.hold_release_until_verified`` a clip whose officer binding is
not ``valid`` stays on the camera even once the platform acknowledged it
(nothing is deleted while the question "who recorded this" is open).  A
later roster that verifies the officer (``officer.verified`` in the log)
lets the next dock release it.
"""

from __future__ import annotations

from typing import Any

from agent.config import Config
from agent.officers.credentials import Outcome


def release_held(config: Config, clip: Any) -> str | None:
    """Why ``clip`` must stay on its camera for now, or None if it may be released."""
    if not config.officers.hold_release_until_verified:
        return None
    status = clip["officer_status"]
    if status == Outcome.VALID.value:
        return None
    return (f"officer {clip['officer_id'] or '?'} not verified ({status or 'not bound'}); "
            "officers.hold_release_until_verified keeps it")
