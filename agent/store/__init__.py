"""Local state: one SQLite database (WAL) under data_dir.

Invariants:

* every state change of a clip is one transaction, holding the custody log
  entry that records it (and the platform event that announces it), so the
  database never says a clip moved without the log saying so too;
* the schema is versioned; :mod:`agent.store.migrations` brings an older
  database forward at open;
* the store is shared by the agent's threads through one connection guarded
  by a lock; other processes (``bwc-agent status``) read through WAL.
"""

from agent.store.db import Store, Tx
from agent.store.states import FINAL_LOCAL_STATES, STATES, ClipState

__all__ = ["FINAL_LOCAL_STATES", "STATES", "ClipState", "Store", "Tx"]
