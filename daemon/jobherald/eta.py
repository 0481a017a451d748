"""When a running job should end: a least-squares line through its recent progress
(pure: no I/O, no clock of its own)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from jobherald.model import JobView, State

# The progress samples an ETA is drawn from: the most recent ones only.
ETA_SAMPLES = 12


def estimate_eta(samples: Sequence[tuple[datetime, float]], now: datetime) -> datetime | None:
    """When a running job should end at its recent pace, or None when that is unknown.

    ``samples`` are (time, progress) pairs of the current run, oldest first: the job's
    start at 0, each recorded progress change, and the latest progress at the latest
    poll. A least-squares line through the last ``ETA_SAMPLES`` gives the pace; the rest
    (1 - latest progress) at that pace is added to the latest sample's time. None when
    there are fewer than two samples, progress does not move (or goes back), or the job
    is done; never earlier than ``now``.
    """
    points = samples[-ETA_SAMPLES:]
    n = len(points)
    if n < 2:
        return None
    last_at, last = points[-1]
    if last >= 1.0:
        return None
    origin = points[0][0]
    xs = [(at - origin).total_seconds() for at, _ in points]
    mean_x = sum(xs) / n
    mean_y = sum([value for _, value in points]) / n
    spread = 0.0
    moment = 0.0
    for x, (_, y) in zip(xs, points, strict=True):
        dx = x - mean_x
        spread += dx * dx
        moment += dx * (y - mean_y)
    if spread <= 0:
        return None
    pace = moment / spread
    if pace <= 1e-12:
        return None
    remaining = (1.0 - last) / pace
    if remaining > 10 * 365 * 86400:  # a pace of nearly nothing: not an estimate
        return None
    return max(now, last_at + timedelta(seconds=remaining))


def eta_samples(
    start: datetime | None,
    progress: float | None,
    changed_at: datetime | None,
    recorded: Sequence[tuple[datetime, float]],
    latest_at: datetime | None,
) -> list[tuple[datetime, float]]:
    """The (time, progress) points of a job's current run an ETA is drawn from: its
    ``start`` at 0, the ``recorded`` progress changes since, the latest ``progress`` at
    its change (``changed_at``) and at the latest poll (``latest_at``)."""
    # Recorded oldest first: only the latest few can be among the points an ETA reads.
    latest = recorded[-ETA_SAMPLES:]
    if start is None:
        points = list(latest)
    else:
        points = [(start, 0.0)]
        points += [(at, p) for at, p in latest if at >= start]
    if progress is not None:
        if changed_at is not None:
            points.append((changed_at, progress))
        if latest_at is not None:
            points.append((latest_at, progress))
    points.sort()
    return points


def running_eta(
    start: datetime | None,
    progress: float | None,
    changed_at: datetime | None,
    recorded: Sequence[tuple[datetime, float]],
    latest_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """A running job's estimated end from its run's values (see ``eta_samples``): what
    listings compute for each row they show, from the row's own columns."""
    if progress is None:
        return None
    return estimate_eta(eta_samples(start, progress, changed_at, recorded, latest_at), now)


def job_eta(
    view: JobView,
    recorded: Sequence[tuple[datetime, float]],
    latest_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """A running job's estimated end (see ``estimate_eta``); None for any other."""
    if view.state is not State.RUNNING:
        return None
    return running_eta(
        view.begin_time or view.running_since,
        view.progress,
        view.progress_changed_at,
        recorded,
        latest_at,
        now,
    )
