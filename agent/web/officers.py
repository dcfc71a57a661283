"""Where officer sign-in plugs into the officer page.

The credential itself (what a card carries, how a PIN is checked, the
roster) belongs to the officer credentials of the station, not to the
pages.  The pages need one object that answers "who is this?" for what an
officer entered at the kiosk: the number a card reader typed (USB card
readers type like a keyboard, ending with Enter) or an officer number, and a
PIN typed on the on-screen keypad.  Until a station has such an object the
officer page shows no sign-in and ``POST /officer/signin`` answers 404.

Once signed in, an officer has a short session (``OFFICER_TIMEOUT_S``) of
kind ``officer``: actions on their own clips (mark important, tag with a
case ID) are routes that require it, check its CSRF token like every other
action, and write custody log entries naming ``identity.credential_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

OFFICER_TIMEOUT_S = 120  # a kiosk left signed in is signed out quickly


@dataclass(frozen=True)
class OfficerIdentity:
    officer_id: str
    name: str
    credential_id: str | None  # what custody log entries name


class OfficerSignIn(Protocol):
    """Answers who an officer is from what they entered at the kiosk, or None."""

    def authenticate(self, card_or_number: str, pin: str) -> OfficerIdentity | None: ...
