"""Officer sign-in at the station's screen: what an officer enters, and who that makes them.

What signs an officer in is the **identity card** the platform bound to
their credential (``card_id``, docs/FORMATS.md section 12): swiped on a USB
card reader, which types the card number and Enter like a keyboard, or, on a
screen without a reader, typed on the on-screen keypad together with the
officer number.  The signed-in identity is always a credential of the
station's roster that is valid now (signature, not revoked, validity
window), checked offline, and checked again at every action.

Why the card alone, and no PIN:

- an officer number is no secret (it is printed on the tiles, the camera and
  the uniform): it never signs anyone in by itself; on the keypad it only
  says whose card number follows;
- a PIN would have to reach the station inside the credential, which every
  station of the fleet holds and every export bundle carries; a 4-6 digit
  PIN under any salted hash is found offline in minutes to hours by whoever
  has a bundle, and officers reuse PINs.  A PIN is sound only where it is
  checked by something that can refuse to be asked again (the platform,
  online, or a chip on the card), which a keyboard-wedge reader offers
  neither;
- the station cannot tell a reader from fingers: a card number is what it
  checks, whether swiped or typed.  What that number may do is bounded
  instead: tag and mark the officer's own sealed clips, undo only their own
  tags, never delete, play or download anything; every action is a custody
  log entry naming the credential, sent to the platform, and reversible by
  another entry; attempts are rate-limited; a lost card is revoked in the
  roster.

Invariants: a refused attempt changes nothing lasting (it is counted here, in
memory, and by the rate limit; never in the custody log); one officer at a
time is signed in at the screen.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Protocol

from agent.config import Config
from agent.errors import ConfigError
from agent.officers import station as officer_station
from agent.officers.credentials import Credential, Outcome
from agent.store import Store

OFFICER_COOKIE = "bwc_officer"
# What card readers type (decimal or hex card numbers) and officer numbers look like;
# anything else is refused before the roster is asked.
CARD_PATTERN = re.compile(r"[0-9A-Za-z]{1,64}")
NUMBER_PATTERN = re.compile(r"[0-9A-Za-z]{1,32}")
REASONS = ("unknown", Outcome.REVOKED.value, Outcome.EXPIRED.value,
           Outcome.NOT_YET_VALID.value, Outcome.BAD_SIGNATURE.value, Outcome.NOT_CHECKED.value,
           "limited")


class OfficerSignIn(Protocol):
    """Who an officer is, from what they entered at the screen; and whether they still are."""

    def authenticate(self, card: str, officer_number: str | None) -> Credential:
        """The credential valid now for ``card`` (of officer ``officer_number`` if given);
        SignInRefused (agent.officers.station) with its reason otherwise."""

    def current(self, credential_id: str) -> Credential:
        """The signed-in officer's credential if it is still valid now; NotPermitted if not."""


class RosterSignIn:
    """Sign-in against the station's roster (agent.officers.station)."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config

    def authenticate(self, card: str, officer_number: str | None) -> Credential:
        if CARD_PATTERN.fullmatch(card) is None or (
                officer_number is not None and NUMBER_PATTERN.fullmatch(officer_number) is None):
            raise officer_station.SignInRefused("not a card number or officer number",
                                                "unknown")
        try:
            return officer_station.sign_in(self.store, self.config, card, officer_number)
        except ConfigError as exc:  # the credential key cannot be read any more
            raise officer_station.SignInRefused(str(exc), Outcome.NOT_CHECKED.value) from None

    def current(self, credential_id: str) -> Credential:
        try:
            return officer_station.officer(self.store, self.config, credential_id=credential_id)
        except ConfigError as exc:
            raise officer_station.SignInRefused(str(exc), Outcome.NOT_CHECKED.value) from None


class Refusals:
    """Refused officer sign-ins since the station started, by reason (memory only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason if reason in REASONS else "unknown"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
