"""Whether the daemon runs, and how its broker connection is: written by it, read beside it.

The daemon keeps ``<data_dir>/daemon.json`` up to date (every
:data:`HEARTBEAT_S` seconds from its main loop, see agent/supervise.py):
its pid, when it started, its last heartbeat, its version and the state of
its broker connection (connected / disconnected since when, the last error).
``bwc-agent status``, ``doctor`` and the metrics read it with :func:`read`,
which decides:

* ``running``: the heartbeat is fresh (at most :data:`STALE_AFTER_S` old)
  and the process is alive;
* ``unresponsive``: the process is alive but its heartbeat is stale (a hung
  main loop: systemd's watchdog restarts it);
* ``stopped``: it stopped cleanly (``stopped_at`` is set);
* ``not-running``: it vanished without stopping (``kill -9``, a crash, a
  power cut): its process is gone, or its heartbeat went stale;
* ``never-started``: no file yet.

Whether the process is alive is only asked of /proc when the reader is in
the same boot and pid namespace as the daemon was (recorded in the file),
and the process found there started when the daemon did (pids are reused).
Otherwise the heartbeat's age alone decides.

The file is a convenience for people, not evidence: it is replaced
atomically (a reader never sees half of it) but not fsynced, since a power
cut makes its heartbeat stale anyway.  It is 0600 like everything in the
data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.timeutil import parse_rfc3339, rfc3339

FILE_NAME = "daemon.json"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 3 * HEARTBEAT_S
MAX_FILE_BYTES = 64 * 1024  # the file is ~500 bytes; anything bigger is not ours

STATES = ("running", "unresponsive", "stopped", "not-running", "never-started")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none (or
    only its zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):
        return None  # killed, not reaped yet: as gone as it gets
    try:
        return int(fields[19])  # field 22 of proc(5), counted after the name
    except (IndexError, ValueError):
        return None


class DaemonState:
    """The running daemon's record of itself; thread-safe.

    ``broker`` is called at each :meth:`beat` for the broker connection's
    state (``{"state", "since", "last_error"}``), or is None on a station
    without a platform.
    """

    def __init__(self, data_dir: Path, *,
                 broker: Callable[[], dict[str, Any] | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.broker = broker
        self._clock = clock
        self._lock = threading.Lock()
        pid = os.getpid()
        self._facts: dict[str, Any] = {
            "pid": pid, "start_ticks": process_start_ticks(pid), "boot_id": _boot_id(),
            "pid_namespace": _pid_namespace(), "version": __version__,
            "started_at": rfc3339(clock()), "heartbeat_at": None, "stopped_at": None,
            "summary": None, "broker": None}
        self.written = False  # by a heartbeat (``run --once`` never writes the file)

    def beat(self, summary: str | None = None) -> dict[str, Any]:
        """Record a heartbeat now (with a one-line summary of the station); the facts written."""
        broker = None
        if self.broker is not None:
            try:
                broker = self.broker()
            except Exception as exc:  # the heartbeat must go on whatever the link does
                broker = {"state": "unknown", "since": None, "last_error": repr(exc)}
        with self._lock:
            self._facts.update(heartbeat_at=rfc3339(self._clock()), broker=broker)
            if summary is not None:
                self._facts["summary"] = summary
            facts = dict(self._facts)
        self._write(facts)
        self.written = True
        return facts

    def stopped(self) -> None:
        """The daemon stops cleanly: readers say "stopped", not "not running"."""
        with self._lock:
            self._facts["stopped_at"] = rfc3339(self._clock())
            facts = dict(self._facts)
        self._write(facts)

    def snapshot(self) -> dict[str, Any]:
        """What :func:`read` would say about this very process now (the broker's state live)."""
        with self._lock:
            facts = dict(self._facts)
        if facts["heartbeat_at"] is None:
            facts["heartbeat_at"] = rfc3339(self._clock())  # starting: alive by definition
        if self.broker is not None:
            try:
                facts["broker"] = self.broker()
            except Exception as exc:
                facts["broker"] = {"state": "unknown", "since": None, "last_error": repr(exc)}
        return _judge(facts, self._clock(), alive=facts["stopped_at"] is None)

    def _write(self, facts: dict[str, Any]) -> None:
        data = json.dumps(facts, sort_keys=True).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read(data_dir: Path, *, now: float | None = None) -> dict[str, Any]:
    """What the daemon of ``data_dir`` is doing, from another process (module docstring).

    Never raises for a missing, unreadable or damaged file: it is then
    ``never-started`` (missing) or ``not-running`` with the ``problem``.
    """
    path = Path(data_dir) / FILE_NAME
    when = time.time() if now is None else now
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {"state": "never-started", "running": False}
    except OSError as exc:
        return {"state": "not-running", "running": False,
                "problem": f"cannot read {path}: {exc.strerror}"}
    try:
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        facts = json.loads(raw) if len(raw) <= MAX_FILE_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        facts = None
    if not isinstance(facts, dict):
        return {"state": "not-running", "running": False,
                "problem": f"{path} is not the daemon's state file"}
    return _judge(facts, when, alive=_alive(facts))


def _alive(facts: dict[str, Any]) -> bool | None:
    """Whether the daemon's process still exists; None if this process cannot tell."""
    pid = facts.get("pid")
    if not isinstance(pid, int) or facts.get("boot_id") != _boot_id() \
            or facts.get("pid_namespace") != _pid_namespace() or facts.get("boot_id") is None:
        return None
    ticks = process_start_ticks(pid)
    return ticks is not None and ticks == facts.get("start_ticks")


def _judge(facts: dict[str, Any], when: float, *, alive: bool | None) -> dict[str, Any]:
    beat = facts.get("heartbeat_at") or facts.get("started_at")
    age: float | None = None
    if isinstance(beat, str):
        try:
            age = max(0.0, when - parse_rfc3339(beat).timestamp())
        except ValueError:
            age = None
    fresh = age is not None and age <= STALE_AFTER_S
    if facts.get("stopped_at"):
        state = "stopped"
    elif alive is False:
        state = "not-running"
    elif fresh:
        state = "running"
    else:
        state = "unresponsive" if alive else "not-running"
    keep = ("pid", "version", "started_at", "heartbeat_at", "stopped_at", "summary", "broker")
    result = {k: facts.get(k) for k in keep}
    result.update(state=state, running=state == "running",
                  heartbeat_age_s=round(age, 1) if age is not None else None)
    return result


def describe(daemon: dict[str, Any]) -> str:
    """One line for people: ``running (pid 412, last heartbeat 3s ago)`` and the like."""
    state = daemon["state"]
    age = daemon.get("heartbeat_age_s")
    ago = f"{age:.0f}s ago" if age is not None else "never"
    if state == "running":
        return f"running (pid {daemon['pid']}, last heartbeat {ago})"
    if state == "unresponsive":
        return (f"UNRESPONSIVE (pid {daemon['pid']} is alive, but its last heartbeat was "
                f"{ago}; systemd's watchdog restarts it)")
    if state == "stopped":
        return f"not running (stopped cleanly at {daemon['stopped_at']})"
    if state == "never-started":
        return "not running (never started on this data directory)"
    last = daemon.get("heartbeat_at") or daemon.get("started_at")
    why = f"; {daemon['problem']}" if daemon.get("problem") else ""
    return f"not running (last seen {last or 'never'}, it did not stop cleanly{why})"


def describe_broker(broker: dict[str, Any] | None) -> str:
    if broker is None:
        return "unknown"
    text = str(broker.get("state"))
    if broker.get("since"):
        text += f" since {broker['since']}"
    if broker.get("last_error") and broker.get("state") != "connected":
        text += f" (last error: {broker['last_error']})"
    return text
