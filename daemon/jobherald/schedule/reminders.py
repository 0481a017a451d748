"""Reminders: what was announced and is still wrong (an error, a stall, a lost job),
said again to the notifiers that ask for it every ``reminder``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from jobherald.config import Notifier, WatchedJob
from jobherald.model import Event, EventKind, JobView, State, format_duration
from jobherald.payload import event_payload
from jobherald.store import NewEvent, Store, Target

STILL = {
    "error": "polling still fails",
    "stalled": "the job is still stalled",
    "lost": "the job is still lost",
}


def unresolved(view: JobView) -> list[str]:
    """The problems of a job that were announced and have not gone away."""
    kinds = []
    if view.error_notified and view.error is not None:
        kinds.append("error")
    if view.state is State.RUNNING and (view.stall_notified or view.overdue_notified):
        kinds.append("stalled")
    if view.state is State.LOST:
        kinds.append("lost")
    return kinds


def _ago(then: datetime, now: datetime) -> str:
    return f"{format_duration((now - then).total_seconds())} ago"


async def remind_unresolved(
    notifiers: Iterable[Notifier],
    jobs: Mapping[str, WatchedJob],
    views: Mapping[str, JobView],
    store: Store,
    targets_of: Callable[[str], list[Target]],
    now: datetime,
) -> int:
    """Record a reminder event for each unresolved problem whose last word to a notifier
    with a ``reminder`` is that old; return how many."""
    made = 0
    for notifier in notifiers:
        if notifier.reminder is None:
            continue
        # The jobs with a problem still unresolved: only theirs are looked up.
        open_ones = {
            job.id: kinds
            for job in jobs.values()
            if notifier.name in job.notify and (kinds := unresolved(views[job.id]))
        }
        if not open_ones:
            continue
        last = await store.last_reminded(notifier.name, open_ones.keys())
        for job_id, kinds in open_ones.items():
            job, view = jobs[job_id], views[job_id]
            for kind in kinds:
                sent = last.get((job.id, kind))
                if sent is None or (now - sent).total_seconds() < notifier.reminder:
                    continue
                if not notifier.hears(kind, job.source, job):
                    continue
                event = Event(EventKind(kind), f"{STILL[kind]} (last said {_ago(sent, now)})")
                payload = event_payload(event, job, view, view, now, None)
                await store.record_events(
                    [NewEvent(kind, payload, targets_of(notifier.name))], now, job_id=job.id
                )
                made += 1
    return made
