"""Quiet when asked: silences (matchers, a time span, who and why) and a notifier's quiet
hours (``["Mon-Fri 20:00-08:00", "Sat-Sun"]`` in its timezone). Pure: every function
takes ``now``; the store keeps silences, the lanes hold what either matches."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(
    r"^\s*(?:(?P<days>[A-Za-z]+(?:\s*[-,]\s*[A-Za-z]+)*)\s*)?"
    r"(?:(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2}))?\s*$"
)

# The longest job pattern a silence takes (a job's key is at most 128 characters).
MAX_PATTERN = 200

# What holds a delivery back, as deliveries.held_by says it.
QUIET = "quiet"


def silence_key(silence_id: int) -> str:
    return f"silence:{silence_id}"


@dataclass(frozen=True, slots=True)
class Window:
    """One entry of ``quiet_hours``: the weekdays it holds on (0 = Monday) and its times
    (None: the whole day); a range whose end comes before its start crosses midnight:
    on each of its days it holds until the end and again from the start."""

    days: frozenset[int]
    start: time | None
    end: time | None

    def holds(self, local: datetime) -> bool:
        day, at = local.weekday(), local.time()
        if self.start is None or self.end is None:
            return day in self.days
        if day not in self.days:
            return False
        if self.start < self.end:
            return self.start <= at < self.end
        # Across midnight, on each of its days: its evening and its early morning
        # ("Mon-Fri 20:00-08:00": weekday nights, Monday's early hours included).
        return at >= self.start or at < self.end


def parse_window(text: str) -> Window:
    """``"Mon-Fri 20:00-08:00"``, ``"Sat-Sun"``, ``"22:00-06:00"`` (every day),
    ``"Mon,Wed 12:00-13:00"``; raise ValueError saying what is wrong."""
    match = _ENTRY.match(text)
    if match is None or not (match["days"] or match["start"]):
        raise ValueError(
            f'{text!r}: give [DAYS ]HH:MM-HH:MM or DAYS, e.g. "Mon-Fri 20:00-08:00" or "Sat-Sun"'
        )
    days = _days(match["days"]) if match["days"] else frozenset(range(7))
    if not match["start"]:
        return Window(days, None, None)
    start, end = _time(match["start"], text), _time(match["end"], text)
    if start == end:
        raise ValueError(f"{text!r}: the range starts and ends at {start:%H:%M}: it is empty")
    return Window(days, start, end)


def _days(text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in text.split(","):
        first, _, last = (p.strip().lower() for p in part.partition("-"))
        for name in (first, last or first):
            if name not in DAYS:
                raise ValueError(f"{name!r} is not a day (Mon Tue Wed Thu Fri Sat Sun)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(found)


def _time(text: str, entry: str) -> time:
    hours, minutes = (int(p) for p in text.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{entry!r}: {text} is not a time of day (00:00 to 23:59)")
    return time(hours, minutes)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A notifier's quiet hours in its timezone, and the kinds that go out all the same."""

    windows: tuple[Window, ...]
    zone: tzinfo
    urgent: frozenset[str] = frozenset()

    def holds(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        return any(window.holds(local) for window in self.windows)

    def holds_kind(self, kind: str, now: datetime) -> bool:
        return kind not in self.urgent and self.holds(now)

    def next_period(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The next quiet period (or the one under way): its start and end, to the minute,
        within the coming eight days."""
        step = timedelta(minutes=1)
        at = now.astimezone(self.zone).replace(second=0, microsecond=0)
        limit = at + timedelta(days=8)
        while at < limit and not self.holds(at):
            at += step
        if at >= limit:
            return None
        start = at
        while at < start + timedelta(days=8) and self.holds(at):
            at += step
        return start, at


def zone_named(name: str | None) -> tzinfo:
    """An IANA zone by name (None: the system's); raise ValueError naming it."""
    if name is None:
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone name (e.g. Europe/Berlin, UTC)") from None


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence as the store keeps it."""

    id: int
    job: str | None
    source: str | None
    notifier: str | None
    kinds: tuple[str, ...] | None
    everything: bool
    starts_at: datetime
    ends_at: datetime
    created_by: str
    reason: str
    created_at: datetime
    expired_at: datetime | None = None
    ended_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expired_at is None and self.starts_at <= now < self.ends_at

    def matches(self, notifier: str, kind: str, payload: Mapping[str, Any]) -> bool:
        """Whether every matcher it gives matches this delivery's event."""
        if self.everything:
            return True
        if self.notifier is not None and not fnmatch.fnmatchcase(notifier, self.notifier):
            return False
        if self.kinds is not None and kind not in self.kinds:
            return False
        job = payload.get("job") or {}
        source = (payload.get("source") or {}).get("name") or job.get("source")
        if self.source is not None and not fnmatch.fnmatchcase(str(source or ""), self.source):
            return False
        if self.job is not None:
            names = {str(job.get(k)) for k in ("name", "key", "id") if job.get(k)}
            return any(fnmatch.fnmatchcase(name, self.job) for name in names)
        return True

    def matches_job(self, name: str, key: str, source: str) -> bool:
        """Whether it holds some message of this job (the page marks it silenced)."""
        if self.everything:
            return True
        if self.source is not None and not fnmatch.fnmatchcase(source, self.source):
            return False
        if self.job is not None:
            return any(fnmatch.fnmatchcase(n, self.job) for n in (name, key))
        return self.source is not None

    def matchers(self) -> str:
        """What it matches, as `silence list` shows it."""
        if self.everything:
            return "everything"
        parts = [
            f"{label}={value}"
            for label, value in (
                ("job", self.job),
                ("source", self.source),
                ("notifier", self.notifier),
                ("kind", ",".join(self.kinds) if self.kinds else None),
            )
            if value
        ]
        return " ".join(parts)

    def as_json(self, now: datetime) -> dict[str, Any]:
        from jobherald.timing import iso

        return {
            "id": self.id,
            "job": self.job,
            "source": self.source,
            "notifier": self.notifier,
            "kinds": list(self.kinds) if self.kinds is not None else None,
            "all": self.everything,
            "starts_at": iso(self.starts_at),
            "ends_at": iso(self.ends_at),
            "created_by": self.created_by,
            "reason": self.reason,
            "created_at": iso(self.created_at),
            "expired_at": iso(self.expired_at),
            "active": self.active(now),
        }


def holder(
    silences: Sequence[Silence],
    quiet: QuietHours | None,
    notifier: str,
    kind: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> str | None:
    """What holds this delivery back now: the first active silence that matches it
    (``silence:ID``), else the notifier's quiet hours (``quiet``), else None."""
    for silence in silences:
        if silence.active(now) and silence.matches(notifier, kind, payload):
            return silence_key(silence.id)
    if quiet is not None and quiet.holds_kind(kind, now):
        return QUIET
    return None


# -- silences asked for (by the command line or the API) -----------------------------


class SilenceError(ValueError):
    """A silence asked for wrongly: what is wrong, and the key it is about (None: the
    silence as a whole)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key

    def said(self, prefix: str) -> str:
        """One line, the key written as the caller's users write it (``--for``, ``for``)."""
        return f"{prefix}{self.key}: {self}" if self.key else str(self)


def silence_span(
    for_: str | None, until: str | None, now: datetime, zone: Any = None
) -> tuple[datetime, datetime]:
    """(start, end) of a silence given ``for`` (a duration) or ``until`` (an ISO 8601 time,
    local unless it says its zone, or HH:MM: the next such time)."""
    from jobherald.fields import parse_duration

    if (for_ is None) == (until is None):
        raise SilenceError(None, "give one of for (a duration, e.g. 2h) and until (a time)")
    if for_ is not None:
        try:
            seconds = parse_duration(for_)
        except ValueError as exc:
            raise SilenceError("for", str(exc)) from None
        if seconds <= 0:
            raise SilenceError("for", f"{for_!r} is not a positive duration")
        return now, now + timedelta(seconds=seconds)
    assert until is not None
    local_zone = zone or datetime.now().astimezone().tzinfo
    text = until.strip()
    try:
        if len(text) <= 5 and ":" in text:
            hours, minutes = (int(p) for p in text.split(":"))
            local_now = now.astimezone(local_zone)
            end = local_now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            if end <= local_now:
                end += timedelta(days=1)
        else:
            end = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if end.tzinfo is None:
                end = end.replace(tzinfo=local_zone)
    except ValueError:
        raise SilenceError(
            "until", f"{until!r} is not a time (e.g. 18:30 or 2026-12-24T08:00+01:00)"
        ) from None
    end = end.astimezone(UTC)
    if end <= now:
        raise SilenceError("until", f"{until!r} is in the past")
    return now, end


def silence_fields(
    sources: Collection[str],
    notifiers: Collection[str],
    *,
    job: str | None,
    source: str | None,
    notifier: str | None,
    kinds: Sequence[str],
    everything: bool,
    reason: str | None,
) -> dict[str, Any]:
    """The matchers and reason of a new silence, checked against the config."""
    from jobherald.model import EventKind

    kinds_known = [k.value for k in EventKind]
    if job is not None and not 0 < len(job) <= MAX_PATTERN:
        raise SilenceError("job", f"give a pattern of 1 to {MAX_PATTERN} characters")
    if not (reason or "").strip():
        raise SilenceError("reason", "say why (it is shown with the silence and its summary)")
    if everything and (job or source or notifier or kinds):
        raise SilenceError("all", "a silence of everything takes no other matcher")
    if not everything and not (job or source or notifier or kinds):
        raise SilenceError(
            None,
            "give at least one of job, source, notifier and kind (or all, to silence everything)",
        )
    if source is not None and source not in sources:
        known = ", ".join(sorted(sources)) or "none defined"
        raise SilenceError("source", f"unknown source {source!r} (known: {known})")
    if notifier is not None and notifier not in notifiers:
        known = ", ".join(sorted(notifiers)) or "none defined"
        raise SilenceError("notifier", f"unknown notifier {notifier!r} (known: {known})")
    for kind in kinds:
        if kind not in kinds_known:
            raise SilenceError("kind", f"unknown kind {kind!r} (known: {', '.join(kinds_known)})")
    assert reason is not None
    return {
        "job": job or None,
        "source": source,
        "notifier": notifier,
        "kinds": list(dict.fromkeys(kinds)) or None,
        "everything": everything,
        "reason": " ".join(reason.split())[:500],
    }
