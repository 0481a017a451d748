"""Small asyncio helpers shared by the daemon's parts."""

from __future__ import annotations

import asyncio


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of these events is set, or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
