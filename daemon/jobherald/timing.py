"""Time as jobherald speaks it: now in UTC, ISO 8601 for JSON, and one backoff (the pure
model's, named here too)."""

from __future__ import annotations

from datetime import UTC, datetime

from jobherald.model import backoff

__all__ = ["backoff", "iso", "utcnow"]


def utcnow() -> datetime:
    """Now, in UTC (every clock of the daemon, unless a test gives its own)."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """``2026-12-04T10:00:00Z`` (JSON output), or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")
