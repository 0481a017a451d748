"""Scheduled reports: each on its cron (APScheduler's CronTrigger), looked at every few
seconds; a due one is claimed in the database (its slot ``NAME@time``) in the transaction
that queues its deliveries, so one replica sends it, once. A run missed while the daemon
was down goes once at the next start if it is less than ``misfire_grace`` late (only the
latest one: never a burst), else the log says it was missed."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from jobherald.config import Report
from jobherald.notify.reports import (
    is_empty,
    latest_fire,
    previous_fire,
    report_data,
    report_messages,
)
from jobherald.store import NewEvent, Run, Store, Target

log = logging.getLogger(__name__)


async def window_of(store: Store, report: Report, slot: datetime) -> tuple[datetime, datetime]:
    """The window a run at ``slot`` covers: its duration back, or since the report was
    last sent (the first time: one period back)."""
    if report.window is not None:
        return slot - timedelta(seconds=report.window), slot
    last = await store.last_run(report.name, before=slot)
    if last is not None:
        return last.window_end, slot
    before = previous_fire(report.trigger(), slot)
    return (before if before is not None else slot - timedelta(days=1)), slot


async def build(
    store: Store,
    report: Report,
    slot: datetime,
    now: datetime,
    public_url: str | None,
    window: float | None = None,
) -> tuple[tuple[datetime, datetime], dict[str, Any], dict[str, dict[str, str]]]:
    """A run's window, data and messages (per format)."""
    if window is not None:
        start, end = slot - timedelta(seconds=window), slot
    else:
        start, end = await window_of(store, report, slot)
    data = await report_data(store, report, start, end, now, public_url)
    return (start, end), data, await report_messages(report, data)


class Reporter:
    """Sends each report when it is due (see the module's doc)."""

    def __init__(
        self,
        store: Store,
        reports: Callable[[], Mapping[str, Report]],
        targets: Callable[[str], list[Target]],
        clock: Callable[[], datetime],
        public_url: Callable[[], str | None],
        name: str | None = None,
    ) -> None:
        self.store = store
        self.reports = reports
        self.targets = targets
        self.clock = clock
        self.public_url = public_url
        self.name = name or socket.gethostname()
        # The next time each report fires (by name and cron), as last worked out.
        self._next: dict[tuple[str, str, str], datetime | None] = {}
        # Told of each report queued (metrics): its name.
        self.on_sent: Callable[[str], None] | None = None
        # Told when something was queued (the dispatcher wakes up).
        self.on_queued: Callable[[], None] | None = None

    def next_runs(self) -> dict[str, datetime | None]:
        """Each report's next scheduled time."""
        now = self.clock()
        return {
            name: report.trigger().get_next_fire_time(None, now)
            for name, report in self.reports().items()
        }

    async def run_due(self) -> int:
        """Send what is due now; returns how many reports were queued."""
        queued = 0
        now = self.clock()
        for name, report in self.reports().items():
            key = (name, report.cron, str(report.zone))
            if key not in self._next:
                # First look (a start, a reload): the latest slot within misfire_grace.
                slot = latest_fire(report.trigger(), now, report.misfire_grace)
                missed = latest_fire(report.trigger(), now, 7 * 86400.0)
                if (
                    slot is None
                    and missed is not None
                    and await self.store.last_run(name) is not None
                    and not await self.store.has_run(name, missed)
                ):
                    log.warning(
                        "report %s of %s was missed (more than misfire_grace late): "
                        "not sent; the next one is at its time",
                        name,
                        missed.isoformat(timespec="minutes"),
                    )
                # A run missed while the daemon was down is made up for; a report never
                # sent before starts at its next time.
                if (
                    slot is not None
                    and await self.store.last_run(name) is not None
                    and not await self.store.has_run(name, slot)
                ):
                    queued += await self._send(report, slot, now)
            else:
                due = self._next[key]
                if due is not None and now >= due:
                    slot = latest_fire(report.trigger(), now, report.misfire_grace)
                    if slot is None:
                        log.warning("report %s of %s was missed: not sent", name, due.isoformat())
                    else:
                        queued += await self._send(report, slot, now)
            self._next[key] = report.trigger().get_next_fire_time(None, now + timedelta(seconds=1))
        for key in [k for k in self._next if k[0] not in self.reports()]:
            del self._next[key]
        return queued

    async def _send(self, report: Report, slot: datetime, now: datetime) -> int:
        (start, end), data, messages = await build(self.store, report, slot, now, self.public_url())
        run = Run(report.name, slot, start, end, None, self.name)
        event = None
        if not (report.skip_empty and is_empty(data)):
            targets = [t for notifier in report.notifiers for t in self.targets(notifier)]
            payload: Any = {
                "report": data,
                "messages": messages,
                "title": messages["text"]["title"],
            }
            event = NewEvent("report", payload, targets)
        if not await self.store.claim_report(run, event, now):
            return 0  # another replica sent it
        if event is None:
            log.info("report %s of %s: nothing to tell, not sent (skip_empty)", report.name, slot)
            return 0
        log.info(
            "report %s of %s queued for %s: %s",
            report.name,
            slot.isoformat(timespec="minutes"),
            ", ".join(report.notifiers),
            messages["text"]["title"],
        )
        if self.on_sent is not None:
            self.on_sent(report.name)
        if self.on_queued is not None:
            self.on_queued()
        return 1
