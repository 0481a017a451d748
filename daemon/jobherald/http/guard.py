"""The listener's door: a bound on open connections, and on how long a connection may
take to send a request head.

aiohttp times out neither a client that sends its headers a byte at a time nor one that
opens thousands of connections and sends nothing: each holds a file descriptor for as
long as it likes, and enough of them leave the daemon none for its polls, its database
or a reload. Every connection the listener accepts passes through a ``Door``: past
``max_connections`` the connection waiting longest for its request head is closed to
make room (the newcomer is refused when none waits), and a connection that has not sent
a whole request head ``header_timeout`` after it opened (or after its last answer) is
closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)


class Door:
    """Counts the open connections and times each one's request head."""

    # A refusal or a timeout is logged at most this often (with how many were not).
    LOG_EVERY = 60.0

    def __init__(self, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        # Connections waiting for a request head, the longest-waiting first.
        self._waiting: dict[_Guarded, None] = {}
        self._by_handler: dict[object, _Guarded] = {}
        # Per kind of line: when it was last logged, and how many were not since.
        self._logged: dict[str, tuple[float, int]] = {}

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's own."""
        return lambda: _Guarded(self, make())

    def busy(self, handler: object) -> None:
        """A request head arrived on the connection of this aiohttp handler."""
        if (guarded := self._by_handler.get(handler)) is not None:
            guarded.disarm()

    def idle(self, handler: object) -> None:
        """Its answer went out: the next request head has header_timeout again."""
        if (guarded := self._by_handler.get(handler)) is not None:
            guarded.arm()

    def _note(self, kind: str, what: str) -> None:
        now = time.monotonic()
        last, unlogged = self._logged.get(kind, (float("-inf"), 0))
        if now - last < self.LOG_EVERY:
            self._logged[kind] = (last, unlogged + 1)
            return
        more = f" ({unlogged} more since, not logged)" if unlogged else ""
        log.warning("http: %s%s", what, more)
        self._logged[kind] = (now, 0)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's handler inside, the door's rules around it."""

    def __init__(self, door: Door, inner: asyncio.Protocol) -> None:
        self.door = door
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.admitted = False
        # Whether bytes came since the connection opened or its last answer went out.
        self.heard = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        door, transport = self.door, cast(asyncio.Transport, base)
        if door.open >= door.max_connections:
            # Full: the connection waiting longest for its request head makes room (a
            # flood of slow clients cannot keep a health check out); when every one is
            # being answered, the newcomer is refused.
            oldest = next(iter(door._waiting), None)
            if oldest is None:
                door.refused += 1
                door._note("refused", f"refused a connection: {door.max_connections} open already")
                transport.close()
                return
            door.evicted += 1
            door._note(
                "evicted",
                f"{door.max_connections} connections open: closed the one waiting longest "
                "for its request",
            )
            oldest.close()
        door.open += 1
        door._by_handler[self.inner] = self
        self.admitted = True
        self.transport = transport
        self.arm()
        self.inner.connection_made(transport)

    def arm(self) -> None:
        self.disarm()
        self.heard = False
        if self.transport is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.door.header_timeout, self._expired)
            self.door._waiting[self] = None

    def disarm(self) -> None:
        self.door._waiting.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Closed to make room: counted out at once (its connection_lost comes later)."""
        self.disarm()
        if self.transport is not None:
            self.transport.close()
        self._leave()

    def _leave(self) -> None:
        if self.admitted:
            self.admitted = False
            self.door.open -= 1
            self.door._by_handler.pop(self.inner, None)

    def _expired(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.heard:  # part of a request head, and no more in time: worth a line
            self.door.timed_out += 1
            self.door._note(
                "timeout",
                f"closed a connection that sent no whole request in {self.door.header_timeout:g} s",
            )
        else:  # a kept-alive connection with nothing more to ask: closed quietly
            log.debug("http: closed a connection idle for %g s", self.door.header_timeout)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.disarm()
        self.transport = None
        self._leave()
        self.inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:  # what aiohttp asks of its own handler
        return getattr(self.inner, name)
