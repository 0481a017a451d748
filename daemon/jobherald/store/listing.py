"""Reading jobs back: listings filtered, sorted and cut by the database (a page, its
running jobs' progress, counts per state), one job, its history, finished durations."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.eta import ETA_SAMPLES
from jobherald.store.base import StoreBase
from jobherald.store.jobs import JOB_COLUMNS, STATE_ORDER, TERMINAL_STATES
from jobherald.store.schema import (
    FloatText,
    IsoText,
    UTCDateTime,
    durations,
    iso_text,
    jobs,
    transitions,
)

# How long a count of removed jobs is taken as it is (see Listing.removed_count).
REMOVED_FOR = 30.0

# What a listing shows of each job (and sorts by): a page reads these, not every column,
# and ``report.rows_of`` unpacks them in this order. Times come as the ISO 8601 text JSON
# shows (see ``iso_text``): a datetime is made only of those an ETA is drawn from.
_TIMES = frozenset(
    (
        "created_at",
        "last_polled_at",
        "last_changed_at",
        "begin_time",
        "running_since",
        "progress_changed_at",
    )
)


def _recent_progress() -> sa.ColumnElement[str | None]:
    """A running job's latest recorded progress, what its ETA is drawn from (the last
    ``ETA_SAMPLES``), as text its row carries: "time|progress,..." in no particular
    order (see ``recorded_progress``); None for any other job. One query reads a page
    and its ETAs' samples."""
    last = (
        sa.select(transitions.c.at, transitions.c.progress)
        .where(transitions.c.job_id == jobs.c.id, transitions.c.progress.is_not(None))
        .order_by(transitions.c.id.desc())
        .limit(ETA_SAMPLES)
        .correlate(jobs)
        .subquery()
    )
    sample = IsoText(last.c.at) + "|" + FloatText(last.c.progress)
    samples = sa.select(sa.func.aggregate_strings(sample, ",")).scalar_subquery()
    return sa.case((jobs.c.state == "running", samples)).label("recent")


LIST_COLUMNS = (
    *(
        iso_text(jobs.c[name]) if name in _TIMES else jobs.c[name]
        for name in (
            "id",
            "name",
            "source",
            "remote_id",
            "created_at",
            "state",
            "raw_status",
            "progress",
            "archive_id",
            "link",
            "reasons",
            "error",
            "last_polled_at",
            "last_changed_at",
            "begin_time",
            "running_since",
            "progress_changed_at",
            "configured",
        )
    ),
    _recent_progress(),
)


def recorded_progress(text: str | None) -> list[tuple[datetime, float]]:
    """The (time, progress) samples of a listed row's ``recent`` column."""
    if not text:
        return []
    when = datetime.fromisoformat
    return [
        (when(at), float(value)) for at, _, value in (s.partition("|") for s in text.split(","))
    ]


def sort_key(row: sa.Row[Any], by_state: bool = True) -> tuple[Any, ...]:
    """Where a listing goes on after this row (see ``Jobs.page``)."""
    if by_state:
        return (row.rank, row.name, row.id)
    return (datetime.fromisoformat(row.created_at), row.id)


_RANKS = {state: i for i, state in enumerate(STATE_ORDER)}


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing shows: by state, source, a text in the name or id, and
    watched ones (``removed`` False, the default), removed ones (True) or both (None)."""

    state: str | None = None
    source: str | None = None
    text: str | None = None
    removed: bool | None = False

    def where(self, query: sa.Select[Any]) -> sa.Select[Any]:
        if self.removed is not None:
            query = query.where(jobs.c.configured == (sa.false() if self.removed else sa.true()))
        if self.state:
            query = query.where(jobs.c.state == self.state)
        if self.source:
            query = query.where(jobs.c.source == self.source)
        if self.text:
            query = query.where(
                sa.or_(
                    sa.func.lower(jobs.c.name).contains(self.text.lower(), autoescape=True),
                    sa.func.lower(jobs.c.id).contains(self.text.lower(), autoescape=True),
                )
            )
        return query


class Listing(StoreBase):
    """What the status page, the API and the command line read."""

    async def status(self) -> list[sa.Row[Any]]:
        """Every watched job, in the order they were registered."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(*JOB_COLUMNS)
                .where(jobs.c.configured == sa.true())
                .order_by(jobs.c.created_at, jobs.c.id)
            )
            return list(rows)

    async def page(
        self,
        wanted: JobFilter,
        limit: int,
        after: tuple[Any, ...] | None = None,
        *,
        by_state: bool = True,
    ) -> list[sa.Row[Any]]:
        """Up to ``limit`` jobs, filtered and sorted by the database: by state, name and
        id (``by_state``), else in the order they were registered; those after ``after``,
        the sort key of the last one shown (see ``sort_key``)."""
        async with self.engine.connect() as conn:
            if not by_state:
                return list((await conn.execute(_page(wanted, limit, after))).all())
            # One state after the other, each read in its index's order (a sort by a
            # state's rank would read and sort every job of the filter).
            out: list[sa.Row[Any]] = []
            states = [wanted.state] if wanted.state else [*STATE_ORDER]
            for state in states:
                rank = _RANKS.get(state, len(STATE_ORDER))
                if after is not None and rank < after[0]:
                    continue
                query = replace(wanted, state=state).where(
                    sa.select(*LIST_COLUMNS, sa.literal(rank).label("rank"))
                )
                if after is not None and rank == after[0]:
                    query = query.where(
                        sa.tuple_(jobs.c.name, jobs.c.id) > sa.tuple_(*map(sa.literal, after[1:]))
                    )
                query = query.order_by(jobs.c.name, jobs.c.id).limit(limit - len(out))
                out.extend((await conn.execute(query)).all())
                if len(out) >= limit:
                    break
            return out

    async def shown(self, job_id: str) -> sa.Row[Any] | None:
        """One job as a listing reads it (``LIST_COLUMNS``), or None."""
        query = sa.select(*LIST_COLUMNS).where(jobs.c.id == job_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first()

    async def job_ids(self) -> set[str]:
        """The ids of every stored job, watched or removed."""
        async with self.engine.connect() as conn:
            return set((await conn.execute(sa.select(jobs.c.id))).scalars())

    async def state_counts(self, source: str | None = None) -> dict[str, int]:
        """Watched jobs per state (of one source, if given): one aggregate query."""
        query = (
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.configured == sa.true())
            .group_by(jobs.c.state)
        )
        if source:
            query = query.where(jobs.c.source == source)
        async with self.engine.connect() as conn:
            return {state: int(n) for state, n in (await conn.execute(query)).all()}

    async def removed_count(self, source: str | None = None) -> int:
        """Jobs that left the config and whose history is still kept. Counting a year of
        them takes a scan of an index: the count is kept for REMOVED_FOR seconds, and
        afresh after this process removed, pruned or registered jobs."""
        now = time.monotonic()
        kept = self.removed_counts.get(source)
        if kept is not None and now - kept[0] < REMOVED_FOR:
            return kept[1]
        query = sa.select(sa.func.count()).where(jobs.c.removed_at.is_not(None))
        if source:
            query = query.where(jobs.c.source == source)
        async with self.engine.connect() as conn:
            n = int((await conn.execute(query)).scalar() or 0)
        self.removed_counts[source] = (now, n)
        return n

    async def active_per_source(self) -> dict[str, int]:
        """Watched jobs still polled (not finished), per source."""
        query = (
            sa.select(jobs.c.source, sa.func.count())
            .where(jobs.c.configured == sa.true(), jobs.c.state.not_in(TERMINAL_STATES))
            .group_by(jobs.c.source)
        )
        async with self.engine.connect() as conn:
            return {source: int(n) for source, n in (await conn.execute(query)).all()}

    async def durations_of(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[str, float]]]:
        """The latest finished runs' durations of jobs with these (name, source), oldest
        first: key -> (id, seconds). Read from the durations table, which keeps them
        when the jobs are pruned."""
        wanted = set(keys)
        out: dict[tuple[str, str], list[tuple[str, float]]] = {}
        names = sorted({name for name, _ in wanted})
        async with self.engine.connect() as conn:
            for at in range(0, len(names), 5000):  # under every backend's parameter limit
                query = (
                    sa.select(
                        durations.c.name,
                        durations.c.source,
                        durations.c.job_id,
                        durations.c.seconds,
                    )
                    .where(durations.c.name.in_(names[at : at + 5000]))
                    .order_by(durations.c.id)
                )
                for name, source, job_id, seconds in await conn.execute(query):
                    if (name, source) in wanted:
                        out.setdefault((name, source), []).append((job_id, seconds))
        return out

    async def job(self, job_id: str) -> sa.Row[Any] | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(*JOB_COLUMNS).where(jobs.c.id == job_id))).first()

    async def running_progress(self) -> dict[str, list[tuple[datetime, float]]]:
        """The recorded progress of every running job, oldest first (for ETAs): one
        query, its jobs picked by the database (no list of ids bound)."""
        running = transitions.c.job_id.in_(
            sa.select(jobs.c.id).where(jobs.c.configured == sa.true(), jobs.c.state == "running")
        )
        async with self.engine.connect() as conn:
            return await _samples(conn, running)

    async def answering_to(self, given: str) -> list[tuple[str, str, str]]:
        """(key, upstream id, source) of the stored jobs that ``given`` may name: by key,
        by upstream id, or as ``source/id``."""
        names = {given, given.rpartition("/")[2]}
        query = sa.select(jobs.c.id, jobs.c.remote_id, jobs.c.source).where(
            sa.or_(jobs.c.id.in_(names), jobs.c.remote_id.in_(names))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.id, row.remote_id or row.id, row.source) for row in rows]

    async def history(self, job_id: str) -> list[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(transitions)
                .where(transitions.c.job_id == job_id)
                .order_by(transitions.c.id)
            )
            return list(rows)


def _page(wanted: JobFilter, limit: int, after: tuple[Any, ...] | None) -> sa.Select[Any]:
    """Jobs in the order they were registered (``status --json``)."""
    order = (jobs.c.created_at, jobs.c.id)
    query = wanted.where(sa.select(*LIST_COLUMNS))
    if after is not None:  # a time: bound as the column stores it
        values = [sa.literal(after[0], UTCDateTime), sa.literal(after[1])]
        query = query.where(sa.tuple_(*order) > sa.tuple_(*values))
    return query.order_by(*order).limit(limit)


async def _samples(
    conn: AsyncConnection, which: sa.ColumnElement[bool]
) -> dict[str, list[tuple[datetime, float]]]:
    """The recorded progress of the jobs ``which`` picks, by job, oldest first."""
    query = (
        sa.select(transitions.c.job_id, transitions.c.at, transitions.c.progress)
        .where(which, transitions.c.progress.is_not(None))
        .order_by(transitions.c.job_id, transitions.c.id)
    )
    out: dict[str, list[tuple[datetime, float]]] = {}
    for job_id, at, progress in await conn.execute(query):
        out.setdefault(job_id, []).append((at, progress))
    return out
