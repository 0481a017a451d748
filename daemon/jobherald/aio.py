"""Small asyncio helpers shared by the daemon's parts."""

from __future__ import annotations

import asyncio
import logging


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of these events is set, or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class PassFailures:
    """A repeated pass that fails (the database away: a restart, a network cut): one log
    line per outage for the ``expected`` kinds of failure (a traceback for any other),
    and one when a pass works again."""

    def __init__(
        self, log: logging.Logger, what: str, expected: tuple[type[BaseException], ...]
    ) -> None:
        self.log = log
        self.what = what
        self.expected = expected
        self.failing: str | None = None

    def failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if isinstance(exc, self.expected):
            if self.failing is None:  # once per outage
                self.log.error("%s failed (%s); trying again shortly", self.what, text)
        else:
            self.log.exception("%s failed; trying again shortly", self.what)
        self.failing = text

    def worked(self) -> None:
        if self.failing is not None:
            self.log.info("%ses work again", self.what)
            self.failing = None
