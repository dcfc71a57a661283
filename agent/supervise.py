"""The daemon's main loop: heartbeat, systemd readiness, one-line status and watchdog.

``bwc-agent run`` starts the station, then hands its main thread to
:meth:`MainLoop.run` until SIGTERM.  Every tick (:data:`HEARTBEAT_S`, or half
systemd's ``WatchdogSec=`` if that is shorter) the loop:

1. asks the store a question (it waits for the store's lock, as every
   worker does: a store held by a transaction that never ends stops the
   loop here);
2. writes the heartbeat (agent.daemonstate) with the broker's state;
3. sends systemd ``WATCHDOG=1`` with ``STATUS=`` a one-line summary.

So a hung store or a hung main thread stops the pings, and systemd's
watchdog kills and restarts the daemon (``Restart=on-failure``); a daemon
that merely has work to do keeps pinging.  ``READY=1`` is sent once the
station started: its store is open, recovery is done, custody, sync and
the detectors run.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from agent.daemonstate import HEARTBEAT_S
from agent.errors import AgentError
from agent.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.station import Station

log = logging.getLogger(__name__)


def summary_line(station: Station) -> str:
    """``3 docked, 1 copying; backlog 12; broker connected; 2 alerts`` (systemctl status)."""
    parts: list[str] = []
    docks = station.progress.snapshot()
    running = sum(1 for d in docks if d.running)
    parts.append(f"{len(docks)} docked" + (f", {running} offloading" if running else ""))
    if station.store is not None:
        counts = station.store.counts_by_state()
        waiting = sum(counts.get(s, 0) for s in ("discovered", "copying", "copied", "sealed",
                                                  "uploading", "uploaded"))
        parts.append(f"backlog {waiting}")
        if counts.get("quarantined"):
            parts.append(f"{counts['quarantined']} quarantined")
    broker = station.broker_state()
    if broker is not None:
        parts.append(f"broker {broker['state']}")
    return "; ".join(parts)


class MainLoop:
    def __init__(self, station: Station, notifier: Notifier | None = None) -> None:
        self.station = station
        self.notifier = notifier or Notifier()
        watchdog = self.notifier.watchdog_s
        self.interval = min(HEARTBEAT_S, watchdog / 2) if watchdog else HEARTBEAT_S
        self.ticks = 0

    def ready(self) -> None:
        """The station started: first heartbeat, and READY=1."""
        line = self._beat()
        self.notifier.ready(line)
        log.info("ready: %s", line)

    def run(self, stopping: threading.Event) -> None:
        """Tick until ``stopping`` is set."""
        while not stopping.wait(self.interval):
            self.tick()
        self.notifier.stopping()

    def tick(self) -> None:
        try:
            line = self._beat()
        except AgentError as exc:
            # The store answered with an error (full disk, I/O): the daemon is not hung;
            # its workers report their own failures.  Keep the watchdog fed.
            line = f"store error: {exc}"
            log.error("heartbeat: %s", exc.diagnostics())
        except OSError as exc:
            line = f"heartbeat not written: {exc.strerror or exc}"
            log.error("heartbeat: %s", line)
        self.notifier.watchdog(line)
        self.ticks += 1

    def _beat(self) -> str:
        line = summary_line(self.station)  # reads the store: blocks if the store hangs
        state: Any = self.station.daemon_state
        if state is not None:
            state.beat(line)
        return line
