"""Reports: what a window of history holds (ends, failures, durations, sources' errors)
and the runs sent, one row per report and scheduled time, claimed in the transaction
that queues the report's deliveries (so one replica sends it, once)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobherald.store.base import StoreBase
from jobherald.store.events import NewEvent, insert_events
from jobherald.store.schema import events, jobs, report_runs, source_health, transitions

ENDS = ("succeeded", "failed", "lost")


@dataclass(frozen=True, slots=True)
class Ended:
    """A job that ended in a window: how, when, and what the report says of it."""

    key: str
    name: str
    source: str
    state: str
    at: datetime
    reasons: list[dict[str, Any]]
    begin_time: datetime | None
    end_time: datetime | None


@dataclass(frozen=True, slots=True)
class Run:
    """A report run as kept: its slot, window, and event (None: skipped as empty)."""

    name: str
    scheduled_at: datetime
    window_start: datetime
    window_end: datetime
    event_id: str | None
    sent_by: str


def _run(row: Any) -> Run:
    return Run(
        name=row.name,
        scheduled_at=row.scheduled_at,
        window_start=row.window_start,
        window_end=row.window_end,
        event_id=row.event_id,
        sent_by=row.sent_by,
    )


class Reports(StoreBase):
    async def ended_between(
        self, start: datetime, end: datetime, sources: Sequence[str] | None
    ) -> list[Ended]:
        """The jobs whose end (succeeded, failed, lost) was recorded in [start, end): the
        last end of each, oldest first."""
        query = (
            sa.select(
                jobs.c.id,
                jobs.c.name,
                jobs.c.source,
                transitions.c.to_state,
                transitions.c.at,
                jobs.c.reasons,
                jobs.c.begin_time,
                jobs.c.end_time,
            )
            .join(jobs, jobs.c.id == transitions.c.job_id)
            .where(
                transitions.c.to_state.in_(ENDS),
                transitions.c.at >= start,
                transitions.c.at < end,
            )
            .order_by(transitions.c.at, transitions.c.id)
        )
        if sources is not None:
            query = query.where(jobs.c.source.in_(sources))
        last: dict[str, Ended] = {}
        async with self.engine.connect() as conn:
            for row in await conn.execute(query):
                last.pop(row.id, None)
                last[row.id] = Ended(
                    key=row.id,
                    name=row.name,
                    source=row.source,
                    state=row.to_state,
                    at=row.at,
                    reasons=json.loads(row.reasons) if row.reasons else [],
                    begin_time=row.begin_time,
                    end_time=row.end_time,
                )
        return list(last.values())

    async def previous_end(self, job: Ended) -> str | None:
        """How the run of the same name and source before this one ended (None: none)."""
        query = (
            sa.select(transitions.c.to_state)
            .join(jobs, jobs.c.id == transitions.c.job_id)
            .where(
                jobs.c.name == job.name,
                jobs.c.source == job.source,
                jobs.c.id != job.key,
                transitions.c.to_state.in_(ENDS),
                transitions.c.at < job.at,
            )
            .order_by(transitions.c.at.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def running_since(
        self, sources: Sequence[str] | None
    ) -> list[tuple[str, str, str, datetime]]:
        """Watched jobs running now: (key, name, source, since when)."""
        query = sa.select(
            jobs.c.id,
            jobs.c.name,
            jobs.c.source,
            sa.func.coalesce(jobs.c.begin_time, jobs.c.running_since),
        ).where(jobs.c.configured == sa.true(), jobs.c.state == "running")
        if sources is not None:
            query = query.where(jobs.c.source.in_(sources))
        async with self.engine.connect() as conn:
            return [
                (row[0], row[1], row[2], row[3])
                for row in await conn.execute(query)
                if row[3] is not None
            ]

    async def source_errors(
        self, start: datetime, end: datetime
    ) -> dict[str, list[tuple[datetime, datetime | None, str | None]]]:
        """Each source's spells in error that overlap [start, end): (from, until or None
        if still in error, what it said)."""
        query = (
            sa.select(events.c.source, events.c.kind, events.c.at, events.c.payload)
            .where(
                events.c.job_id.is_(None),
                events.c.source.is_not(None),
                events.c.kind.in_(("error", "recovered")),
                events.c.at < end,
            )
            .order_by(events.c.at)
        )
        spells: dict[str, list[tuple[datetime, datetime | None, str | None]]] = {}
        open_since: dict[str, tuple[datetime, str | None]] = {}
        async with self.engine.connect() as conn:
            for row in await conn.execute(query):
                if row.kind == "error":
                    said = (json.loads(row.payload).get("source") or {}).get("error")
                    open_since.setdefault(row.source, (row.at, said))
                elif row.source in open_since:
                    since, said = open_since.pop(row.source)
                    if row.at >= start:
                        spells.setdefault(row.source, []).append((since, row.at, said))
            health = await conn.execute(
                sa.select(
                    source_health.c.source, source_health.c.error_since, source_health.c.error
                ).where(source_health.c.error.is_not(None))
            )
            in_error_now = {row.source for row in health}
        for source, (since, said) in open_since.items():
            if source in in_error_now:
                spells.setdefault(source, []).append((since, None, said))
        return spells

    async def last_run(self, name: str, before: datetime | None = None) -> Run | None:
        """The latest run of a report (before ``before``, when given)."""
        query = sa.select(report_runs).where(report_runs.c.name == name)
        if before is not None:
            query = query.where(report_runs.c.scheduled_at < before)
        query = query.order_by(report_runs.c.scheduled_at.desc()).limit(1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _run(row) if row is not None else None

    async def has_run(self, name: str, scheduled_at: datetime) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                sa.select(report_runs.c.name).where(
                    report_runs.c.name == name, report_runs.c.scheduled_at == scheduled_at
                )
            )
            return found.first() is not None

    async def claim_report(self, run: Run, report: NewEvent | None, now: datetime) -> bool:
        """Take a report's slot and queue its deliveries, in one transaction; False when
        another process took the slot first. The slot's row is written first: a second
        replica waits on it, then finds it taken, and writes nothing."""
        try:
            async with self._writing() as conn:
                await conn.execute(
                    sa.insert(report_runs).values(
                        name=run.name,
                        scheduled_at=run.scheduled_at,
                        window_start=run.window_start,
                        window_end=run.window_end,
                        event_id=None,
                        sent_by=run.sent_by,
                        created_at=now,
                    )
                )
                if report is not None:
                    (event_id,) = await insert_events(conn, [report], now)
                    await conn.execute(
                        sa.update(report_runs)
                        .where(
                            report_runs.c.name == run.name,
                            report_runs.c.scheduled_at == run.scheduled_at,
                        )
                        .values(event_id=event_id)
                    )
        except sa.exc.IntegrityError:
            return False
        return True

    async def last_runs(self) -> dict[str, Run]:
        """The latest run of every report."""
        latest = (
            sa.select(report_runs.c.name, sa.func.max(report_runs.c.scheduled_at).label("at"))
            .group_by(report_runs.c.name)
            .subquery()
        )
        query = sa.select(report_runs).join(
            latest,
            sa.and_(latest.c.name == report_runs.c.name, latest.c.at == report_runs.c.scheduled_at),
        )
        async with self.engine.connect() as conn:
            return {row.name: _run(row) for row in await conn.execute(query)}
