"""systemd's notification protocol (sd_notify(3)): one datagram per message, nothing else.

Under ``Type=notify`` systemd gives the service a Unix datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, the interval in ``WATCHDOG_USEC`` (and the pid it is for in
``WATCHDOG_PID``).  The daemon sends ``READY=1`` once it is ready,
``STATUS=<one line>`` whenever it likes, ``WATCHDOG=1`` more often than the
interval and ``STOPPING=1`` when it stops.  Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing.

The protocol is a handful of lines, so it is implemented here rather than
taken from a package: a message is ``KEY=VALUE`` lines in one datagram.
A failure to send is logged once and never stops the daemon (systemd then
restarts it for the missing watchdog pings, which is what should happen).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 200


class Notifier:
    """Sends notifications to the socket systemd named; a no-op without one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET") or None
        self.address: str | None = None
        if path is not None and (path.startswith("/") or path.startswith("@")):
            # "@name": Linux's abstract namespace, a leading NUL byte.
            self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_s = _watchdog_interval(environ)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if it was sent."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = " ".join(str(value).split())  # one line: a newline would start a new key
            if key == "STATUS":
                text = text[:MAX_STATUS_CHARS]
            lines.append(f"{key}={text}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode("utf-8"))
        except OSError as exc:
            if not self._failed:
                log.error("cannot notify systemd at %s: %s", self.address.lstrip("\0"),
                          exc.strerror or exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def watchdog(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(WATCHDOG="1")
        return self.send(WATCHDOG="1", STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING="1", STATUS=status)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """``WatchdogSec=`` in seconds if it is for this process, else None."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a parent that exec'd us did not clear it)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
