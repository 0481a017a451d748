"""Time as jobherald speaks it: now in UTC, ISO 8601 for JSON, and one backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC (every clock of the daemon, unless a test gives its own)."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """``2026-12-04T10:00:00Z`` (JSON output), or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def backoff(first: float, cap: float, attempt: int, jitter: float = 0.0) -> float:
    """The wait before try ``attempt + 1`` after ``attempt`` failures: ``first``, then
    twice as long each time, at most ``cap``; scaled by a random factor within
    ``1 ± jitter`` so that many waiting together do not all come back at once."""
    wait = min(first * 2.0 ** min(max(attempt - 1, 0), 30), cap)
    if jitter:
        wait *= random.uniform(1.0 - jitter, 1.0 + jitter)
    return float(wait)
