"""The pure part: job states, snapshots, and what an observation changes.

Nothing here does I/O or imports the rest of the package. Every decision takes
``now`` as an argument so that it can be tested with fixed times.
"""

from __future__ import annotations

import enum
import hashlib
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.LOST})


class EventKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STARTED = "started"
    PROGRESS = "progress"
    STALLED = "stalled"
    LOST = "lost"
    ERROR = "error"
    RECOVERED = "recovered"
    ARCHIVED = "archived"


@dataclass(frozen=True, slots=True)
class Rules:
    """When a job's behaviour deserves a message. Durations in seconds; None turns a rule off."""

    error_after: float = 300.0
    stall_after: float | None = 3600.0
    lost_after: int = 3
    max_duration: float | None = 43200.0
    progress_steps: tuple[float, ...] = (0.5,)
    # A running job past this many times its typical duration is "stalled" (None: off).
    slow_after: float | None = 2.0


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    detail: str


# A progress change is kept in the history when it moves at least this much.
PROGRESS_STEP = 0.1


@dataclass(frozen=True, slots=True)
class Reason:
    resource_type: str | None
    resource_name: str | None
    error_code: str | None
    error_msg: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "resource_type": self.resource_type,
            "resource_name": self.resource_name,
            "error_code": self.error_code,
            "error_msg": self.error_msg,
        }


# What an answer may put in a snapshot: longer texts are cut, further reasons counted.
MAX_TEXT = 1000
MAX_REASON_TEXT = 300
MAX_REASONS = 20


def cut(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """``text`` up to ``limit`` characters, its end marked when cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[: limit - 1]}…"


def capped_reasons(reasons: Sequence[Reason]) -> tuple[Reason, ...]:
    """At most MAX_REASONS reasons, each field cut: the last says how many more there were
    ("and 2,981 more"), so that neither a message nor a row grows with the answer."""
    kept = list(reasons[:MAX_REASONS])
    if len(reasons) > MAX_REASONS:
        kept[-1] = Reason(None, None, None, f"and {len(reasons) - MAX_REASONS + 1:,} more")
    return tuple(
        Reason(
            *(
                cut(part, MAX_REASON_TEXT)
                for part in (r.resource_type, r.resource_name, r.error_code, r.error_msg)
            )
        )
        for r in kept
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the upstream said about a job in one successful poll (texts cut to MAX_TEXT,
    at most MAX_REASONS reasons: whatever an upstream sends, what is kept is bounded)."""

    state: State
    raw_status: str
    progress: float | None = None
    type: str | None = None
    archive_id: str | None = None
    reasons: tuple[Reason, ...] = ()
    begin_time: datetime | None = None
    end_time: datetime | None = None
    # A page about the job, for people (the upstream's own link to it).
    link: str | None = None

    def __post_init__(self) -> None:
        for name in ("raw_status", "type", "archive_id", "link"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_TEXT:
                object.__setattr__(self, name, cut(value))
        # A few words shared by every job: one string each, not one per job's view.
        object.__setattr__(self, "raw_status", sys.intern(self.raw_status))
        if self.type is not None:
            object.__setattr__(self, "type", sys.intern(self.type))
        if self.reasons and (
            len(self.reasons) > MAX_REASONS
            or any(
                len(part or "") > MAX_REASON_TEXT
                for r in self.reasons
                for part in (r.resource_type, r.resource_name, r.error_code, r.error_msg)
            )
        ):
            object.__setattr__(self, "reasons", capped_reasons(self.reasons))


@dataclass(frozen=True, slots=True)
class JobView:
    """The stored state of one job, as the decision functions see it."""

    id: str
    state: State = State.PENDING
    raw_status: str | None = None
    progress: float | None = None
    type: str | None = None
    archive_id: str | None = None
    reasons: tuple[Reason, ...] = ()
    begin_time: datetime | None = None
    end_time: datetime | None = None
    last_changed_at: datetime | None = None
    recorded_progress: float | None = None
    error: str | None = None
    error_since: datetime | None = None
    # What the watch rules have seen and said already.
    not_found: int = 0
    running_since: datetime | None = None
    progress_changed_at: datetime | None = None
    milestone: float = 0.0
    stall_notified: bool = False
    overdue_notified: bool = False
    error_notified: bool = False
    link: str | None = None
    slow_notified: bool = False
    # The stored row's version this view was read or written as (for compare-and-set).
    version: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    at: datetime
    from_state: State | None
    to_state: State
    progress: float | None
    raw_status: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one poll changes: the new view, and the rows it causes.

    ``changed`` is false when nothing worth writing happened; then the store
    writes nothing but the poll time.
    """

    job: JobView
    changed: bool
    transition: Transition | None = None
    events: tuple[Event, ...] = field(default=())


def _progress_worth_keeping(old: float | None, new: float | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return abs(new - old) >= PROGRESS_STEP - 1e-9 or (new >= 1.0 > old)


def _transition(job: JobView, new: JobView, now: datetime) -> Transition:
    return Transition(
        at=now,
        from_state=None if job.state is State.PENDING else job.state,
        to_state=new.state,
        progress=new.progress,
        raw_status=new.raw_status,
    )


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _same_answer(job: JobView, snap: Snapshot) -> bool:
    """Whether this answer says nothing the view does not hold already (the usual poll)."""
    return (
        snap.state is job.state
        and snap.raw_status == job.raw_status
        and job.error is None
        and job.error_since is None
        and not job.not_found
        and not job.error_notified
        and job.progress_changed_at is not None
        and (snap.progress is None or snap.progress == job.progress)
        and not _progress_worth_keeping(job.recorded_progress, snap.progress)
        and (snap.type is None or snap.type == job.type)
        and (snap.archive_id is None or snap.archive_id == job.archive_id)
        and (not snap.reasons or snap.reasons == job.reasons)
        and (snap.begin_time is None or snap.begin_time == job.begin_time)
        and (snap.end_time is None or snap.end_time == job.end_time)
        and (snap.link is None or snap.link == job.link)
    )


def observe(
    job: JobView,
    snap: Snapshot,
    now: datetime,
    rules: Rules = Rules(),
    typical: float | None = None,
) -> Outcome:
    """Fold one successful poll into a job's stored view, and say what it causes.

    ``typical`` is the job's typical duration in seconds (earlier runs of the same name
    and source), for the ``slow_after`` rule; None when there is none to go by.
    """
    if _same_answer(job, snap):
        # Nothing new: only the running job's timers can have something to say.
        quiet: list[Event] = []
        new = (
            _running_rules(job, job, now, rules, quiet, typical)
            if job.state is State.RUNNING
            else job
        )
        return Outcome(job=new, changed=new is not job, events=tuple(quiet))
    progress = snap.progress if snap.progress is not None else job.progress
    progress_moved = job.progress_changed_at is None or progress != job.progress
    new = replace(
        job,
        state=snap.state,
        raw_status=snap.raw_status,
        progress=progress,
        type=snap.type or job.type,
        archive_id=snap.archive_id or job.archive_id,
        reasons=snap.reasons or job.reasons,
        begin_time=snap.begin_time or job.begin_time,
        end_time=snap.end_time or job.end_time,
        link=snap.link or job.link,
        error=None,
        error_since=None,
        not_found=0,
        error_notified=False,
    )
    if progress_moved:
        new = replace(new, progress_changed_at=now, stall_notified=False)
    events: list[Event] = []
    if job.error_notified:
        events.append(
            Event(
                EventKind.RECOVERED,
                f"polling works again after failing since {_at(job.error_since)}",
            )
        )
    transition: Transition | None = None
    state_changed = new.state is not job.state
    if state_changed or _progress_worth_keeping(job.recorded_progress, snap.progress):
        transition = _transition(job, new, now)
        new = replace(new, recorded_progress=new.progress)
    if state_changed:
        new = replace(new, last_changed_at=now)
    if new.state is State.RUNNING:
        new = _running_rules(job, new, now, rules, events, typical)
    elif state_changed and new.state is State.SUCCEEDED:
        events.append(Event(EventKind.SUCCEEDED, "the job succeeded"))
    elif state_changed and new.state is State.FAILED:
        events.append(Event(EventKind.FAILED, f"the job failed with {len(new.reasons)} reasons"))
    return Outcome(job=new, changed=new != job, transition=transition, events=tuple(events))


def _running_rules(
    job: JobView,
    new: JobView,
    now: datetime,
    rules: Rules,
    events: list[Event],
    typical: float | None = None,
) -> JobView:
    if new.running_since is None:
        new = replace(new, running_since=now)
        events.append(Event(EventKind.STARTED, "the job is running"))
    progress = new.progress or 0.0
    crossed = [s for s in rules.progress_steps if new.milestone < s <= progress]
    for step in crossed:
        events.append(Event(EventKind.PROGRESS, f"the job passed {_percent(step)}"))
    if crossed:
        new = replace(new, milestone=max(crossed))
    if (
        rules.stall_after is not None
        and not new.stall_notified
        and new.progress_changed_at is not None
        and (now - new.progress_changed_at).total_seconds() >= rules.stall_after
    ):
        new = replace(new, stall_notified=True)
        events.append(
            Event(
                EventKind.STALLED,
                f"no progress for {format_duration(rules.stall_after)} "
                f"(at {_percent(progress)} since {_at(new.progress_changed_at)})",
            )
        )
    started = new.begin_time or new.running_since
    if (
        rules.max_duration is not None
        and not new.overdue_notified
        and started is not None
        and (now - started).total_seconds() >= rules.max_duration
    ):
        new = replace(new, overdue_notified=True)
        events.append(
            Event(
                EventKind.STALLED,
                f"still running after {format_duration((now - started).total_seconds())}, "
                f"longer than max_duration {format_duration(rules.max_duration)}",
            )
        )
    if (
        rules.slow_after is not None
        and typical
        and not new.slow_notified
        and started is not None
        and (elapsed := (now - started).total_seconds()) >= rules.slow_after * typical
    ):
        new = replace(new, slow_notified=True)
        events.append(
            Event(
                EventKind.STALLED,
                f"slower than usual: running for {format_duration(elapsed)}, "
                f"{elapsed / typical:.1f} times its typical {format_duration(typical)}",
            )
        )
    return new


def observe_error(
    job: JobView,
    summary: str,
    detail: str,
    now: datetime,
    rules: Rules = Rules(),
    *,
    not_found: bool = False,
    source_wide: bool = False,
) -> Outcome:
    """Fold one failed poll into a job's stored view: the error is kept, the state is not.

    ``summary`` says what went wrong; ``detail`` adds what differs between two
    polls failing the same way (a request id). The same failure again changes
    nothing, so a long outage writes one row, not one per poll. ``not_found``
    answers in a row make the job lost; a ``source_wide`` failure (bad
    credentials) is reported once for the source, not here.
    """
    new = job
    if source_wide:
        # The source's outage, not the job's: kept as its error text, but the job's own
        # error clock is not running (it starts when a failure of its own comes).
        if job.error is None or not job.error.startswith(summary):
            new = replace(new, error=detail, error_since=None)
    elif job.error is None or not job.error.startswith(summary):
        new = replace(new, error=detail, error_since=job.error_since or now)
    new = replace(new, not_found=job.not_found + 1 if not_found else 0)
    events: list[Event] = []
    transition: Transition | None = None
    if not_found and new.not_found >= rules.lost_after:
        new = replace(new, state=State.LOST, last_changed_at=now)
        transition = _transition(job, new, now)
        events.append(
            Event(
                EventKind.LOST,
                f"the service answered 'no such job' {new.not_found} times in a row",
            )
        )
    elif (
        not source_wide
        and not new.error_notified
        and new.error_since is not None
        and (now - new.error_since).total_seconds() >= rules.error_after
    ):
        failing_for = (now - new.error_since).total_seconds()
        new = replace(new, error_notified=True)
        events.append(
            Event(EventKind.ERROR, f"polling has failed for {format_duration(failing_for)}")
        )
    return Outcome(job=new, changed=new != job, transition=transition, events=tuple(events))


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Whether a source's credentials work: one failure shared by all its jobs."""

    error: str | None = None
    error_since: datetime | None = None
    error_notified: bool = False
    version: int = 0


def observe_source_error(
    health: SourceHealth, summary: str, detail: str, now: datetime, rules: Rules
) -> tuple[SourceHealth, tuple[Event, ...]]:
    """A poll failed for want of working credentials: one ``error`` per outage, after ``error_after``."""
    new = health
    if health.error is None or not health.error.startswith(summary):
        new = replace(new, error=detail, error_since=health.error_since or now)
    assert new.error_since is not None
    failing_for = (now - new.error_since).total_seconds()
    if not new.error_notified and failing_for >= rules.error_after:
        new = replace(new, error_notified=True)
        return new, (
            Event(
                EventKind.ERROR,
                f"every poll of this source has failed for {format_duration(failing_for)}",
            ),
        )
    return new, ()


def observe_source_ok(health: SourceHealth) -> tuple[SourceHealth, tuple[Event, ...]]:
    """A poll of the source worked: its credentials are fine again."""
    if health.error is None:
        return health, ()
    events: tuple[Event, ...] = ()
    if health.error_notified:
        events = (
            Event(
                EventKind.RECOVERED,
                f"polls work again after failing since {_at(health.error_since)}",
            ),
        )
    return replace(health, error=None, error_since=None, error_notified=False), events


def typical_duration(durations: Sequence[float]) -> float | None:
    """The median of earlier runs' durations (seconds), or None when there were none."""
    known = sorted(d for d in durations if d > 0)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def backoff(first: float, cap: float, attempt: int, jitter: float = 0.0) -> float:
    """The wait before try ``attempt + 1`` after ``attempt`` failures: ``first``, then
    twice as long each time, at most ``cap``; scaled by a random factor within
    ``1 ± jitter`` so that many waiting together do not all come back at once. Every
    backoff of jobherald (polls, retries of a request, deliveries, downloads) is this."""
    wait = min(first * 2.0 ** min(max(attempt - 1, 0), 30), cap)
    if jitter:
        wait *= random.uniform(1.0 - jitter, 1.0 + jitter)
    return float(wait)


def backoff_interval(base: float, failures: int) -> float:
    """The poll interval of a job whose last ``failures`` polls failed: doubling, capped.

    The cap is ten intervals or ten minutes, whichever is shorter, but never less
    than the interval itself.
    """
    if failures <= 0:
        return base
    return backoff(2.0 * base, max(base, min(base * 10.0, 600.0)), failures)


def _at(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "an unknown time"


def duration_seconds(job: JobView) -> float | None:
    if job.begin_time is None or job.end_time is None:
        return None
    seconds = (job.end_time - job.begin_time).total_seconds()
    return seconds if seconds >= 0 else None


def forgotten(view: JobView, after: float, now: datetime) -> bool:
    """Whether a finished job has been finished longer than ``after`` seconds (its
    ``forget_after``): it is then no longer watched."""
    done = view.last_changed_at or view.end_time
    return view.state.terminal and done is not None and (now - done).total_seconds() >= after


def counted(n: int, word: str) -> str:
    """``1 job``, ``2 jobs``: a count with its noun agreeing."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def format_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return " ".join(parts)


def _score(name: str, job_id: str) -> int:
    digest = hashlib.blake2b(f"{name}\0{job_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(job_id: str, names: Sequence[str]) -> str | None:
    """The live replica that polls this job (rendezvous hashing: every replica computes
    the same), or None if none is live."""
    if len(names) == 1:
        return names[0]  # the only one: no hash to compute (100,000 jobs at each start)
    best: str | None = None
    best_score = -1
    for name in names:
        score = _score(name, job_id)
        if score > best_score:
            best, best_score = name, score
    return best
