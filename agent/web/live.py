"""Live updates: one stream (Server-Sent Events) per open page, pushed, coalesced.

One task in the web server's event loop looks at the progress registry's
version every ``TICK_S`` and, when it moved (or every ``REFRESH_S``, for
changes only the store knows: uploads, acknowledgements), computes the
figures once, in a worker thread, and puts each page's words into that
page's queue.  A queue holds one message: a slow page skips to the newest
figures instead of piling them up.  A page gets a message only when its
content changed, so at most 1 / ``TICK_S`` messages a second reach it.

The same task ends timed-out sessions and logs their end, and tells an IT
page whose session ended that it is signed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TICK_S = 0.25
REFRESH_S = 2.0
KEEPALIVE_S = 15.0
MAX_STREAMS = 32
RETRY_MS = 3000  # how soon a browser reconnects after the stream broke

SIGNED_OUT = "signed-out"


@dataclass(eq=False)
class Subscriber:
    kind: str  # "kiosk" or "it"
    lang: str
    session_id: str | None = None
    queue: asyncio.Queue[tuple[str, str]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1))
    last: str | None = None
    ended: bool = False

    def offer(self, event: str, data: str) -> None:
        if self.ended or (event == self.kind and data == self.last):
            return
        if event != self.kind:
            self.ended = True  # signed out, or the server is closing: the last message
        self.last = data
        with contextlib.suppress(asyncio.QueueEmpty):
            self.queue.get_nowait()  # the newest figures replace unsent older ones
        self.queue.put_nowait((event, data))


class TooManyStreams(Exception):
    pass


class Live:
    """The broadcaster.  ``figures()`` runs in a thread; ``render(kind, lang, figures)`` too."""

    def __init__(self, *, version: Callable[[], int], figures: Callable[[set[str]], Any],
                 render: Callable[[str, str, Any], dict[str, Any]],
                 session_alive: Callable[[str], bool], housekeeping: Callable[[], None]) -> None:
        self._version = version
        self._figures = figures
        self._render = render
        self._session_alive = session_alive
        self._housekeeping = housekeeping
        self._subscribers: set[Subscriber] = set()
        self._closed = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, kind: str, lang: str, session_id: str | None = None) -> Subscriber:
        if len(self._subscribers) >= MAX_STREAMS:
            raise TooManyStreams(f"{MAX_STREAMS} pages are already open")
        sub = Subscriber(kind, lang, session_id)
        self._subscribers.add(sub)
        self._wake.set()  # a new page gets its first figures at the next tick
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        self._closed.set()
        for sub in list(self._subscribers):
            sub.offer(SIGNED_OUT if sub.kind == "it" else "closing", "{}")

    def close_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        last_version = -1
        last_full = 0.0
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                await asyncio.to_thread(self._housekeeping)
                self._check_sessions()
                version = self._version()
                now = time.monotonic()
                if self._subscribers and (woken or version != last_version
                                          or now - last_full >= REFRESH_S):
                    last_version, last_full = version, now
                    await self._publish()
            except Exception:
                log.exception("web: live update failed")  # the next tick tries again
                await asyncio.sleep(1.0)

    def _check_sessions(self) -> None:
        for sub in list(self._subscribers):
            if sub.session_id is not None and not self._session_alive(sub.session_id):
                sub.offer(SIGNED_OUT, "{}")

    async def _publish(self) -> None:
        subs = list(self._subscribers)
        kinds = {s.kind for s in subs if not s.ended}
        figures = await asyncio.to_thread(self._figures, kinds)
        rendered: dict[tuple[str, str], str] = {}
        for sub in subs:
            if sub.ended:
                continue
            key = (sub.kind, sub.lang)
            if key not in rendered:
                rendered[key] = json.dumps(self._render(sub.kind, sub.lang, figures),
                                           ensure_ascii=False, separators=(",", ":"))
            sub.offer(sub.kind, rendered[key])

    async def stream(self, sub: Subscriber) -> AsyncIterator[str]:
        """The text/event-stream body of one page."""
        try:
            yield f"retry: {RETRY_MS}\n\n"
            while True:
                try:
                    event, data = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {event}\ndata: {data}\n\n"
                if event in (SIGNED_OUT, "closing"):
                    return
        finally:
            self.unsubscribe(sub)
