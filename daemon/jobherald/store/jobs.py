"""Jobs, their transitions and the events they cause, written compare-and-set."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.model import (
    JobView,
    Outcome,
    Reason,
    SourceHealth,
    State,
    Transition,
    duration_seconds,
    forgotten,
)
from jobherald.store.archives import insert_archive
from jobherald.store.base import StoreBase
from jobherald.store.durations import keep_durations
from jobherald.store.events import NewEvent, insert_events
from jobherald.store.schema import (
    archives,
    events,
    jobs,
    pruned_jobs,
    source_health,
    transitions,
)

log = logging.getLogger(__name__)

# Polls that end together are written in one transaction of at most this many.
GROUP_COMMIT = 500

# The order jobs are listed in: by state (this order), then name, then id.
STATE_ORDER = ("running", "pending", "unknown", "succeeded", "failed", "lost")
TERMINAL_STATES = ("succeeded", "failed", "lost")

# A job's columns, JobView's fields first and in its order: a row is made a view by
# position (by name, reading 100,000 rows took five times as long).
VIEW_FIELDS = tuple(f.name for f in fields(JobView))
JOB_COLUMNS = (
    *(jobs.c[name] for name in VIEW_FIELDS),
    *(c for c in jobs.c if c.name not in VIEW_FIELDS),
)
_STATE_AT = VIEW_FIELDS.index("state")
_REASONS_AT = VIEW_FIELDS.index("reasons")
_STATES = {s.value: s for s in State}
_SHARED_AT = (VIEW_FIELDS.index("raw_status"), VIEW_FIELDS.index("type"))


class Registered(Protocol):
    """What registers a job: its key, name, source, instance and upstream id (a
    configured job is one as it is: 100,000 of them are not copied at each start)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def instance_id(self) -> str: ...
    @property
    def remote(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """A job to register, as the store's callers without a configured job give it."""

    id: str
    name: str
    source: str
    instance_id: str
    # The id the upstream knows, when ``id`` is a key (see WatchedJob.remote).
    remote: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one poll's write: the view now stored, and whether it was ours.

    ``written`` is False when the stored job had moved on from the version the poll
    started from (another replica wrote it first): nothing was written, and ``view``
    is what is stored now.
    """

    view: JobView
    written: bool
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordedSource:
    health: SourceHealth
    written: bool
    event_ids: tuple[str, ...] = ()


def _reasons_json(reasons: Iterable[Reason]) -> str | None:
    items = [r.as_dict() for r in reasons]
    return json.dumps(items) if items else None


def _reasons_from(text: str | None) -> tuple[Reason, ...]:
    if not text:
        return ()
    return tuple(Reason(**item) for item in json.loads(text))


def reasons_of(text: str | None) -> list[dict[str, str | None]]:
    """A stored ``reasons`` column as `status --json` shows it."""
    return [r.as_dict() for r in _reasons_from(text)] if text else []


# What sync_jobs reads of each job: its view, then what it is (name, source, instance,
# configured, upstream id), compared with what the config says.
_REGISTERED = sa.select(
    *JOB_COLUMNS[: len(VIEW_FIELDS)],
    jobs.c.name,
    jobs.c.source,
    jobs.c.instance_id,
    jobs.c.configured,
    jobs.c.remote_id,
)


def _identity(j: Registered) -> tuple[str, str, str, bool, str | None]:
    """A configured job's identity as ``_REGISTERED`` reads a row's."""
    return (j.name, j.source, j.instance_id, True, j.remote)


def view_of(row: sa.Row[Any]) -> JobView:
    """The view of a row selected as ``JOB_COLUMNS`` (its first columns, by position)."""
    values = list(row[: len(VIEW_FIELDS)])
    values[_STATE_AT] = _STATES[values[_STATE_AT]]
    values[_REASONS_AT] = _reasons_from(values[_REASONS_AT])
    for at in _SHARED_AT:  # a few words every job has: one string each
        if values[at] is not None:
            values[at] = sys.intern(values[at])
    return JobView(*values)


def _view_values(view: JobView) -> dict[str, Any]:
    return {
        "state": view.state.value,
        "raw_status": view.raw_status,
        "progress": view.progress,
        "recorded_progress": view.recorded_progress,
        "type": view.type,
        "archive_id": view.archive_id,
        "reasons": _reasons_json(view.reasons),
        "begin_time": view.begin_time,
        "end_time": view.end_time,
        "last_changed_at": view.last_changed_at,
        "error": view.error,
        "error_since": view.error_since,
        "not_found": view.not_found,
        "running_since": view.running_since,
        "progress_changed_at": view.progress_changed_at,
        "milestone": view.milestone,
        "stall_notified": view.stall_notified,
        "overdue_notified": view.overdue_notified,
        "error_notified": view.error_notified,
        "link": view.link,
        "slow_notified": view.slow_notified,
    }


_VIEW_COLUMNS = (*_view_values(JobView("x")), "last_polled_at", "version")
_UPDATE_JOB = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("job_key"))
    .values({c: sa.bindparam(f"v_{c}", type_=jobs.c[c].type) for c in _VIEW_COLUMNS})
)
_UPDATE_IDENTITY = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("key"))
    .values(
        name=sa.bindparam("name"),
        source=sa.bindparam("source"),
        instance_id=sa.bindparam("instance_id"),
        configured=sa.bindparam("configured"),
        remote_id=sa.bindparam("remote"),
        removed_at=sa.bindparam("removed_at", type_=jobs.c.removed_at.type),
    )
)


@dataclass(slots=True)
class _Record:
    job_id: str
    outcome: Outcome
    polled_at: datetime
    new_events: Sequence[NewEvent]
    done: asyncio.Future[Recorded]
    # An export's archive to keep: (archive_id, source), noted with the job's success.
    archive: tuple[str, str] | None = None


class Jobs(StoreBase):
    """The jobs table and what hangs off it."""

    _queued: list[_Record]
    _committer: asyncio.Task[None] | None

    async def sync_jobs(self, watched: Sequence[Registered], now: datetime) -> dict[str, JobView]:
        """Register configured jobs (new ones as pending); return the view of each.

        What is read: the jobs watched until now (an index, however much history there
        is) and, by key, the configured jobs not among them (new, or back in the config).
        Then one insert of the new jobs and one update of the jobs whose name, source or
        instance changed, that left the config (now ``removed``) or came back to it. Two
        replicas registering the same new job together: the second one's insert skips
        it (PostgreSQL's ON CONFLICT DO NOTHING). A job whose key changed (a second job
        with its id came, or went) keeps its row and history: a row of the same upstream
        id, source and instance that just left the config is moved to the new key.
        """
        wanted = {j.id: j for j in watched}
        async with self._writing() as conn:
            views: dict[str, JobView] = {}
            changes: list[dict[str, Any]] = []
            # Rows that just left the config, by what they are upstream: a key may move there.
            loose: dict[tuple[str, str, str], list[str]] = {}
            n = len(VIEW_FIELDS)
            rows = list(await conn.execute(_REGISTERED.where(jobs.c.configured == sa.true())))
            missing = [key for key in wanted if key not in {row[0] for row in rows}]
            for at in range(0, len(missing), 5000):  # under every backend's parameter limit
                chunk = missing[at : at + 5000]
                rows.extend(await conn.execute(_REGISTERED.where(jobs.c.id.in_(chunk))))
            left: dict[str, JobView] = {}
            for row in rows:
                view = view_of(row)
                j = wanted.get(view.id)
                stored = (row[n], row[n + 1], row[n + 2], bool(row[n + 3]), row[n + 4])
                after = getattr(j, "forget_after", None)
                if after is not None and forgotten(view, after, now):
                    j = None  # finished long enough ago: no longer watched
                if j is None:
                    left[view.id] = view
                    upstream = row[n + 4] or view.id
                    loose.setdefault((upstream, row[n + 1], row[n + 2]), []).append(view.id)
                    # It keeps its identity and is marked removed.
                    now_is = (*stored[:3], False, stored[4])
                else:
                    views[view.id] = view
                    now_is = _identity(j)
                if now_is != stored:
                    name, source, instance_id, configured, remote = now_is
                    changes.append(
                        {
                            "key": view.id,
                            "name": name,
                            "source": source,
                            "instance_id": instance_id,
                            "configured": configured,
                            "remote": remote,
                            "removed_at": None if configured else now,
                        }
                    )
            new = [j for j in watched if j.id not in views and j.id not in left]
            moved = await self._move_keys(conn, new, loose, left, views)
            new = [j for j in new if j.id not in moved]
            if new:
                insert: Any = sa.insert(jobs)
                if self.shared:
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    insert = pg_insert(jobs).on_conflict_do_nothing(index_elements=["id"])
                await conn.execute(
                    insert,
                    [
                        {
                            "id": j.id,
                            "name": j.name,
                            "source": j.source,
                            "instance_id": j.instance_id,
                            "remote_id": j.remote,
                            "configured": True,
                            "state": State.PENDING.value,
                            "created_at": now,
                            "version": 0,
                        }
                        for j in new
                    ],
                )
                views.update((j.id, JobView(id=j.id)) for j in new)
                # A job registered again after its history was pruned is a new job.
                await conn.execute(
                    sa.delete(pruned_jobs).where(pruned_jobs.c.job_id.in_([j.id for j in new]))
                )
            changes = [c for c in changes if c["key"] not in moved.values()]
            if changes:
                await conn.execute(_UPDATE_IDENTITY, changes)
                self.removed_counts.clear()
            return views

    async def registered_unfinished(
        self, watched: Mapping[str, Registered], limit: int
    ) -> dict[str, JobView]:
        """The views of up to ``limit`` unfinished jobs registered just as ``watched``
        has them, writing nothing: a start polls these while ``sync_jobs`` registers
        every job (at 100,000 jobs, that takes most of a second)."""
        n = len(VIEW_FIELDS)
        query = _REGISTERED.where(
            jobs.c.configured == sa.true(), jobs.c.state.not_in(TERMINAL_STATES)
        ).limit(limit)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return {
                row[0]: view_of(row)
                for row in rows
                if (j := watched.get(row[0])) is not None
                and (row[n], row[n + 1], row[n + 2], True, row[n + 4]) == _identity(j)
            }

    async def _move_keys(
        self,
        conn: AsyncConnection,
        new: Sequence[Registered],
        loose: dict[tuple[str, str, str], list[str]],
        left: dict[str, JobView],
        views: dict[str, JobView],
    ) -> dict[str, str]:
        """Move loose rows (and their history) to the new keys of the same jobs; return
        new key -> old key of each moved."""
        moved: dict[str, str] = {}
        for j in new:
            olds = loose.get((j.remote or j.id, j.source, j.instance_id))
            if not olds:
                continue
            old = olds.pop(0)
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == old))).one()._asdict()
            row.update(id=j.id, name=j.name, remote_id=j.remote, configured=True, removed_at=None)
            # A copy under the new key, the history moved to it, then the old row gone:
            # no foreign key ever points nowhere.
            await conn.execute(sa.insert(jobs).values(row))
            for table in (transitions, events, archives):
                await conn.execute(
                    sa.update(table).where(table.c.job_id == old).values(job_id=j.id)
                )
            await conn.execute(sa.delete(jobs).where(jobs.c.id == old))
            views[j.id] = replace(left[old], id=j.id)
            moved[j.id] = old
            log.info("job %s is now known as %s (another job has its id)", old, j.id)
        return moved

    async def views(self, job_ids: Iterable[str] | None = None) -> dict[str, JobView]:
        """The stored views of these jobs (every watched one when None), as they are now."""
        async with self.engine.connect() as conn:
            if job_ids is None:
                watched = sa.select(*JOB_COLUMNS).where(jobs.c.configured == sa.true())
                return {row.id: view_of(row) for row in await conn.execute(watched)}
            wanted = list(job_ids)
            out: dict[str, JobView] = {}
            for start in range(0, len(wanted), 5000):  # under every backend's parameter limit
                query = sa.select(*JOB_COLUMNS).where(jobs.c.id.in_(wanted[start : start + 5000]))
                out.update((row.id, view_of(row)) for row in await conn.execute(query))
            return out

    async def record(
        self,
        job_id: str,
        outcome: Outcome,
        polled_at: datetime,
        new_events: Sequence[NewEvent] = (),
        archive: tuple[str, str] | None = None,
    ) -> Recorded:
        """Write what one poll changed, its transition and its events, in one transaction,
        if the job is still at the version the poll started from (``outcome.job.version``).
        ``archive`` (archive id, source) notes an export's archive to download.

        Polls that finish together are written together (a group commit): each caller
        waits until its own rows are committed.
        """
        done: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._queued.append(_Record(job_id, outcome, polled_at, new_events, done, archive))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await done

    async def _commit_queued(self) -> None:
        while self._queued:
            async with self._one_writer:
                batch, self._queued = self._queued[:GROUP_COMMIT], self._queued[GROUP_COMMIT:]
                try:
                    async with self.write_transaction() as conn:
                        results = await self._write_batch(conn, batch)
                except Exception:
                    # One bad record must not fail the others: write them one by one.
                    for r in batch:
                        try:
                            async with self.write_transaction() as conn:
                                (result,) = await self._write_batch(conn, [r])
                        except Exception as exc:
                            if not r.done.done():
                                r.done.set_exception(exc)
                        else:
                            if not r.done.done():
                                r.done.set_result(result)
                    continue
            for r, result in zip(batch, results, strict=True):
                if not r.done.done():
                    r.done.set_result(result)

    async def _write_batch(self, conn: AsyncConnection, batch: Sequence[_Record]) -> list[Recorded]:
        """Many polls' changes in few statements: the versions read (and on PostgreSQL
        locked) in one SELECT, then one UPDATE and one INSERT over the polls that still
        hold the stored version. The others get the stored view back, and write nothing."""
        check = sa.select(jobs.c.id, jobs.c.version).where(jobs.c.id.in_([r.job_id for r in batch]))
        if self.shared:
            check = check.order_by(jobs.c.id).with_for_update()
        stored = {row.id: row.version for row in await conn.execute(check)}
        fresh = [r for r in batch if stored.get(r.job_id) == r.outcome.job.version]
        stale = {r.job_id for r in batch} - {r.job_id for r in fresh}
        current: dict[str, JobView] = {}
        if stale:
            found = await conn.execute(sa.select(*JOB_COLUMNS).where(jobs.c.id.in_(stale)))
            current = {row.id: view_of(row) for row in found}
        if fresh:
            await conn.execute(
                _UPDATE_JOB,
                [
                    {
                        "job_key": r.job_id,
                        **{f"v_{k}": v for k, v in _view_values(r.outcome.job).items()},
                        "v_last_polled_at": r.polled_at,
                        "v_version": r.outcome.job.version + 1,
                    }
                    for r in fresh
                ],
            )
            rows = [
                _transition_row(r.job_id, r.outcome.transition)
                for r in fresh
                if r.outcome.transition is not None
            ]
            if rows:
                await conn.execute(sa.insert(transitions), rows)
            finished = [
                {"d_job": r.job_id, "d_seconds": seconds, "d_at": r.outcome.job.end_time}
                for r in fresh
                if (t := r.outcome.transition) is not None
                and t.to_state is State.SUCCEEDED
                and t.from_state is not State.SUCCEEDED
                and (seconds := duration_seconds(r.outcome.job))
            ]
            if finished:
                await keep_durations(conn, finished)
            for r in fresh:
                if r.archive is not None:
                    archive_id, source = r.archive
                    await insert_archive(
                        conn, self.shared, r.job_id, archive_id, source, r.polled_at
                    )
        out = []
        for r in batch:
            if r.job_id in stale:
                out.append(Recorded(current.get(r.job_id, r.outcome.job), written=False))
                continue
            ids = (
                await insert_events(conn, r.new_events, r.polled_at, job_id=r.job_id)
                if r.new_events
                else []
            )
            view = replace(r.outcome.job, version=r.outcome.job.version + 1)
            out.append(Recorded(view, written=True, event_ids=tuple(ids)))
        return out

    async def record_events(
        self,
        new_events: Sequence[NewEvent],
        at: datetime,
        *,
        job_id: str | None = None,
        source: str | None = None,
    ) -> list[str]:
        """Write events that change no state (reminders), with their deliveries."""
        async with self._writing() as conn:
            return await insert_events(conn, new_events, at, job_id=job_id, source=source)

    async def source_health(self) -> dict[str, SourceHealth]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(source_health))
            return {
                r.source: SourceHealth(r.error, r.error_since, r.error_notified, r.version)
                for r in rows
            }

    async def record_source(
        self, source: str, health: SourceHealth, at: datetime, new_events: Sequence[NewEvent] = ()
    ) -> RecordedSource:
        """Write a source's health and the events it causes, in one transaction, if the
        stored health is still at ``health.version`` (else: write nothing, return it)."""
        values = {
            "error": health.error,
            "error_since": health.error_since,
            "error_notified": health.error_notified,
            "version": health.version + 1,
        }
        async with self._writing() as conn:
            updated = await conn.execute(
                sa.update(source_health)
                .where(source_health.c.source == source, source_health.c.version == health.version)
                .values(**values)
            )
            if not updated.rowcount:
                row = (
                    await conn.execute(
                        sa.select(source_health).where(source_health.c.source == source)
                    )
                ).first()
                if row is not None:
                    stored = SourceHealth(
                        row.error, row.error_since, row.error_notified, row.version
                    )
                    return RecordedSource(stored, written=False)
                insert: Any = sa.insert(source_health)
                if self.shared:
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    insert = pg_insert(source_health).on_conflict_do_nothing()
                inserted = await conn.execute(insert.values(source=source, **values))
                if not inserted.rowcount:
                    return RecordedSource(health, written=False)
            ids = await insert_events(conn, new_events, at, source=source)
        return RecordedSource(replace(health, version=health.version + 1), True, tuple(ids))

    async def touch(self, polled: Mapping[str, datetime]) -> None:
        """Write the last poll time of jobs whose polls changed nothing, in one statement."""
        if not polled:
            return
        statement = (
            sa.update(jobs)
            .where(jobs.c.id == sa.bindparam("job_id"))
            .values(last_polled_at=sa.bindparam("polled_at"))
        )
        async with self._writing() as conn:
            await conn.execute(
                statement, [{"job_id": k, "polled_at": v} for k, v in polled.items()]
            )


def _transition_row(job_id: str, t: Transition) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "at": t.at,
        "from_state": t.from_state.value if t.from_state else None,
        "to_state": t.to_state.value,
        "progress": t.progress,
        "raw_status": t.raw_status,
    }
