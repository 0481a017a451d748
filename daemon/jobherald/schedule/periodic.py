"""The daemon's own periodic work, on APScheduler: writing poll times, reminders.

Polls do not go through here (the pool serves them from the due-queue); this is
for the handful of chores that run every so often whatever the number of jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from jobherald.aio import PassFailures
from jobherald.store.schema import DATABASE_AWAY

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._every: dict[str, float] = {}

    def every(
        self,
        seconds: float,
        what: str,
        chore: Callable[[], Awaitable[Any]],
        first_in: float | None = None,
    ) -> None:
        """Run ``chore`` every ``seconds`` (the first time ``first_in`` seconds after the
        start, if given, else a whole interval after it); a failure is logged and the
        chore runs again later."""
        from apscheduler.triggers.interval import IntervalTrigger

        failures = PassFailures(log, f"{what}: pass", DATABASE_AWAY)

        async def run() -> None:
            try:
                await chore()
            except Exception as exc:  # the database away: one line per outage
                failures.failed(exc)
            else:
                failures.worked()

        self._every[what] = seconds
        when: dict[str, Any] = {}  # (next_run_time=None would add the job paused)
        if first_in is not None:
            when["next_run_time"] = datetime.now(UTC) + timedelta(seconds=min(first_in, seconds))
        self.scheduler.add_job(run, IntervalTrigger(seconds=seconds), id=what, name=what, **when)

    def reschedule(self, what: str, seconds: float) -> None:
        """Run the chore ``what`` every ``seconds`` from now on."""
        from apscheduler.triggers.interval import IntervalTrigger

        self._every[what] = seconds
        self.scheduler.reschedule_job(what, trigger=IntervalTrigger(seconds=seconds))

    def start(self) -> None:
        self.scheduler.start()

    def alive(self, now: datetime) -> bool:
        """Whether the scheduler still fires: running, and no chore far behind its time."""
        if not self.scheduler.running:
            return False
        for what, seconds in self._every.items():
            job = self.scheduler.get_job(what)
            if job is None or job.next_run_time is None:
                return False
            if job.next_run_time < now - timedelta(seconds=max(4 * seconds, 60.0)):
                return False
        return True

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
