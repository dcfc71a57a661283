"""Signed-in sessions and the failed sign-in limit, in memory (a restart signs everyone out).

Invariants:

* a session id is 256 random bits, known only to the browser (an HttpOnly
  cookie) and this table; its CSRF token is another 256 random bits;
* a session idle longer than its timeout (an officer's is shorter than IT
  staff's), or older than ``MAX_AGE_S``, is over: :meth:`Sessions.get` never
  returns it, :meth:`Sessions.expire` hands it out once so its end can be
  logged;
* both tables are bounded whatever arrives: at most ``MAX_SESSIONS``
  sessions (the oldest is ended to make room) and ``MAX_KEYS`` sign-in
  counters (the least recently failed is forgotten).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_SESSIONS = 32
MAX_KEYS = 1024
MAX_AGE_S = 12 * 3600  # one shift: a session never outlives it, however active


@dataclass
class Session:
    id: str
    kind: str  # "it" (an IT account) or "officer" (an officer at the kiosk)
    user: str  # the account name, or the officer number
    csrf: str
    address: str
    created: float
    last_seen: float
    timeout_s: float | None = None  # None: the table's timeout
    credential_id: str | None = None  # an officer's credential, which their actions name
    ended_reason: str | None = None


class Sessions:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._ended: list[Session] = []

    def create(self, kind: str, user: str, address: str, *, timeout_s: float | None = None,
               credential_id: str | None = None) -> Session:
        now = self._clock()
        session = Session(id=secrets.token_urlsafe(32), kind=kind, user=user,
                          csrf=secrets.token_urlsafe(32), address=address, created=now,
                          last_seen=now, timeout_s=timeout_s, credential_id=credential_id)
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                _sid, oldest = self._sessions.popitem(last=False)
                oldest.ended_reason = "replaced"
                self._ended.append(oldest)
            self._sessions[session.id] = session
        return session

    def _over(self, session: Session, now: float) -> str | None:
        timeout = session.timeout_s if session.timeout_s is not None else self.timeout_s
        if now - session.last_seen > timeout:
            return "timeout"
        if now - session.created > MAX_AGE_S:
            return "max_age"
        return None

    def get(self, session_id: str | None, *, touch: bool = False) -> Session | None:
        """The live session with this id; ``touch`` counts this request as activity."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            reason = self._over(session, now)
            if reason is not None:
                del self._sessions[session_id]
                session.ended_reason = reason
                self._ended.append(session)
                return None
            if touch:
                session.last_seen = now
            return session

    def end(self, session_id: str, reason: str = "signed_out") -> Session | None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.ended_reason = reason
        return session

    def end_kind(self, kind: str, reason: str) -> list[Session]:
        """End every live session of ``kind`` (one officer at the kiosk at a time)."""
        now = self._clock()
        ended = []
        with self._lock:
            for session in [s for s in self._sessions.values() if s.kind == kind]:
                del self._sessions[session.id]
                over = self._over(session, now)
                if over is not None:  # it had ended by itself: expire() hands it out
                    session.ended_reason = over
                    self._ended.append(session)
                else:
                    session.ended_reason = reason
                    ended.append(session)
        return ended

    def remaining(self, session: Session) -> float:
        """Seconds until ``session`` times out if nothing happens."""
        timeout = session.timeout_s if session.timeout_s is not None else self.timeout_s
        return max(0.0, timeout - (self._clock() - session.last_seen))

    def expire(self) -> list[Session]:
        """Sessions that ended by themselves since the last call (timeout, age, replaced)."""
        now = self._clock()
        with self._lock:
            for sid, session in list(self._sessions.items()):
                reason = self._over(session, now)
                if reason is not None:
                    del self._sessions[sid]
                    session.ended_reason = reason
                    self._ended.append(session)
            ended, self._ended = self._ended, []
        return ended


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per key (account, address) within ``window_s``."""

    def __init__(self, attempts: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    continue
                while times and now - times[0] >= self.window_s:
                    times.popleft()
                if len(times) >= self.attempts:
                    wait = max(wait, self.window_s - (now - times[0]))
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                times = self._failures.pop(key, None) or deque(maxlen=self.attempts)
                times.append(now)
                self._failures[key] = times  # most recent last
                while len(self._failures) > MAX_KEYS:
                    self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
