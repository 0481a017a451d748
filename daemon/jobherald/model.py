"""The pure part: job states, snapshots, and what an observation changes.

Nothing here does I/O or imports the rest of the package. Every decision takes
``now`` as an argument so that it can be tested with fixed times.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED)


class EventKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# ROMA Connect editions disagree on the words; compare case-insensitively.
_STATUS_WORDS: dict[str, State] = {
    "running": State.RUNNING,
    "succeeded": State.SUCCEEDED,
    "success": State.SUCCEEDED,
    "finished": State.SUCCEEDED,
    "failed": State.FAILED,
}

# A progress change is kept in the history when it moves at least this much.
PROGRESS_STEP = 0.1


def state_from_status(raw: str) -> State:
    """Map an upstream status word to a canonical state (``unknown`` if new to us)."""
    return _STATUS_WORDS.get(raw.strip().lower(), State.UNKNOWN)


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the upstream said about a job in one successful poll."""

    state: State
    raw_status: str
    progress: float | None = None
    type: str | None = None
    archive_id: str | None = None
    reasons: tuple[Reason, ...] = ()
    begin_time: datetime | None = None
    end_time: datetime | None = None


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
    events: tuple[EventKind, ...] = field(default=())


def _progress_worth_keeping(old: float | None, new: float | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return abs(new - old) >= PROGRESS_STEP - 1e-9 or (new >= 1.0 > old)


def observe(job: JobView, snap: Snapshot, now: datetime) -> Outcome:
    """Fold one successful poll into a job's stored view."""
    new = replace(
        job,
        state=snap.state,
        raw_status=snap.raw_status,
        progress=snap.progress if snap.progress is not None else job.progress,
        type=snap.type or job.type,
        archive_id=snap.archive_id or job.archive_id,
        reasons=snap.reasons or job.reasons,
        begin_time=snap.begin_time or job.begin_time,
        end_time=snap.end_time or job.end_time,
        error=None,
        error_since=None,
    )
    transition: Transition | None = None
    events: tuple[EventKind, ...] = ()
    state_changed = new.state is not job.state
    if state_changed or _progress_worth_keeping(job.recorded_progress, snap.progress):
        transition = Transition(
            at=now,
            from_state=None if job.state is State.PENDING else job.state,
            to_state=new.state,
            progress=new.progress,
            raw_status=new.raw_status,
        )
        new = replace(new, recorded_progress=new.progress)
    if state_changed:
        new = replace(new, last_changed_at=now)
        if new.state is State.SUCCEEDED:
            events = (EventKind.SUCCEEDED,)
        elif new.state is State.FAILED:
            events = (EventKind.FAILED,)
    return Outcome(job=new, changed=new != job, transition=transition, events=events)


def observe_error(job: JobView, summary: str, detail: str, now: datetime) -> Outcome:
    """Fold one failed poll into a job's stored view: the error is kept, the state is not.

    ``summary`` says what went wrong; ``detail`` adds what differs between two
    polls failing the same way (a request id). The same failure again changes
    nothing, so a long outage writes one row, not one per poll.
    """
    if job.error is not None and job.error.startswith(summary):
        return Outcome(job=job, changed=False)
    new = replace(job, error=detail, error_since=job.error_since or now)
    return Outcome(job=new, changed=True)


def duration_seconds(job: JobView) -> float | None:
    if job.begin_time is None or job.end_time is None:
        return None
    seconds = (job.end_time - job.begin_time).total_seconds()
    return seconds if seconds >= 0 else None


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
