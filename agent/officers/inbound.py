"""Officer messages from the platform: roster snapshots, roster updates, case windows.

Called on the inbound worker thread (agent/sync/inbound.py), one message at
a time, in the order the broker delivered them.  A refused message has been
logged and alerted by the time :meth:`OfficerMessages.handle` returns; only
a failing store raises (StoreError), and the worker then tries the same
message again, so nothing is settled with the broker before it is applied.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from agent.config import Config
from agent.errors import ConfigError, IntegrityError
from agent.officers import registry, windows
from agent.officers.binding import rebind_pending
from agent.officers.registry import Keys, Refuse
from agent.officers.roster import SNAPSHOT, UPDATE
from agent.store import Store

log = logging.getLogger(__name__)

# Message names (agent/sync/mqtt.py) -> roster kinds.
ROSTER_MESSAGES = {"roster": SNAPSHOT, "roster-update": UPDATE}
CASE_WINDOW = "case-window"
NAMES = frozenset({*ROSTER_MESSAGES, CASE_WINDOW})


class OfficerMessages:
    def __init__(self, config: Config, store: Store, platform_keys: Keys) -> None:
        self.config = config
        self.store = store
        self.platform_keys = platform_keys
        self.credential_keys = registry.load_keys(config.custody.credential_key_file)
        # Records refusals bounded and collapsed (the inbound worker's RefusalLog): these
        # topics take messages from anyone who can publish on them.
        self.refused: Refuse | None = None

    def handlers(self) -> dict[str, Callable[[bytes], None]]:
        return {name: functools.partial(self.handle, name) for name in NAMES}

    def handle(self, name: str, raw: bytes) -> None:
        try:
            if name == CASE_WINDOW:
                windows.accept(self.store, raw, self.platform_keys,
                               self.config.custody.case_id_pattern, refused=self.refused)
                return
            accepted = registry.accept(self.store, raw, ROSTER_MESSAGES[name],
                                       self.credential_keys, refused=self.refused)
        except (IntegrityError, ConfigError):
            return  # refused: logged and alerted where it was refused
        if accepted.changed:
            verified = rebind_pending(self.store, self.credential_keys)
            if verified:
                log.info("roster version %d verified the officers of %d clip(s) sealed "
                         "before", accepted.version, len(verified))
