"""Storage: jobs, their transitions, events and their deliveries (the outbox).

The store knows the database and nothing of HTTP or apprise. Everything a poll
changes is written in one transaction, the events with their deliveries included,
so that a crash can neither lose a message nor cause one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from jobherald.errors import StoreError
from jobherald.model import JobView, Outcome, Reason, SourceHealth, State, Transition

log = logging.getLogger(__name__)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps stored as naive UTC, read back as aware UTC, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("instance_id", sa.String(128), nullable=False),
    sa.Column("configured", sa.Boolean, nullable=False, default=True),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("raw_status", sa.String(64)),
    sa.Column("progress", sa.Float),
    sa.Column("recorded_progress", sa.Float),
    sa.Column("type", sa.String(64)),
    sa.Column("archive_id", sa.String(256)),
    sa.Column("reasons", sa.Text),
    sa.Column("begin_time", UTCDateTime),
    sa.Column("end_time", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_polled_at", UTCDateTime),
    sa.Column("last_changed_at", UTCDateTime),
    sa.Column("error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("not_found", sa.Integer, nullable=False, default=0),
    sa.Column("running_since", UTCDateTime),
    sa.Column("progress_changed_at", UTCDateTime),
    sa.Column("milestone", sa.Float, nullable=False, default=0.0),
    sa.Column("stall_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("overdue_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("error_notified", sa.Boolean, nullable=False, default=False),
)

source_health = sa.Table(
    "source_health",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("error_notified", sa.Boolean, nullable=False, default=False),
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float),
    sa.Column("raw_status", sa.String(64)),
    sa.Index("ix_transitions_job", "job_id", "id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id")),
    sa.Column("source", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(32), sa.ForeignKey("events.id"), nullable=False),
    sa.Column("notifier", sa.String(64), nullable=False),
    sa.Column("target", sa.String(32), nullable=False, default="*"),
    sa.Column("url", sa.Text),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", UTCDateTime),
    sa.UniqueConstraint(
        "event_id", "notifier", "target", name="uq_deliveries_event_notifier_target"
    ),
    sa.Index("ix_deliveries_due", "state", "next_attempt_at"),
)


@dataclass(frozen=True, slots=True)
class Target:
    """One place a message goes: a notifier's URL, by key (a hash) and masked for display."""

    notifier: str
    key: str
    url: str


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    payload: Mapping[str, Any]
    targets: Sequence[Target]


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event_id: str
    kind: str
    notifier: str
    target: str
    attempts: int
    payload: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class JobIdentity:
    id: str
    name: str
    source: str
    instance_id: str


def _reasons_json(reasons: Iterable[Reason]) -> str | None:
    items = [r.as_dict() for r in reasons]
    return json.dumps(items) if items else None


def _reasons_from(text: str | None) -> tuple[Reason, ...]:
    if not text:
        return ()
    return tuple(Reason(**item) for item in json.loads(text))


def _view(row: sa.Row[Any]) -> JobView:
    return JobView(
        id=row.id,
        state=State(row.state),
        raw_status=row.raw_status,
        progress=row.progress,
        type=row.type,
        archive_id=row.archive_id,
        reasons=_reasons_from(row.reasons),
        begin_time=row.begin_time,
        end_time=row.end_time,
        last_changed_at=row.last_changed_at,
        recorded_progress=row.recorded_progress,
        error=row.error,
        error_since=row.error_since,
        not_found=row.not_found,
        running_since=row.running_since,
        progress_changed_at=row.progress_changed_at,
        milestone=row.milestone,
        stall_notified=row.stall_notified,
        overdue_notified=row.overdue_notified,
        error_notified=row.error_notified,
    )


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
    }


def migrations_path() -> Path:
    return Path(str(resources.files("jobherald.migrations")))


# The newest revision under migrations/ (a test keeps the two the same).
SCHEMA_HEAD = "0003"


def _alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    return config


def head_revision() -> str:
    """The newest schema revision this version of jobherald knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _sqlite_engine(url: str, *, foreign_keys: bool = True) -> AsyncEngine:
    """An engine for SQLite with WAL, a busy timeout, and transactions that hold DDL too.

    Python's sqlite3 opens a transaction only before data changes, so schema
    changes would commit one by one; here every transaction starts with our own
    BEGIN, so a migration is all or nothing even if the process is killed midway.
    """
    engine = (
        create_async_engine(url) if foreign_keys else create_async_engine(url, poolclass=NullPool)
    )

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    sa_event.listen(engine.sync_engine, "connect", on_connect)
    sa_event.listen(engine.sync_engine, "begin", on_begin)
    return engine


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._one_writer = asyncio.Lock()
        self._queued: list[_Record] = []
        self._committer: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. Writers take turns here rather than in SQLite's busy
        handler, which sleeps and retries: under load that costs far more than a queue."""
        async with self._one_writer, self.engine.begin() as conn:
            yield conn

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect, and bring the schema to the newest revision."""
        parsed = make_url(url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and parsed.database:
            folder = Path(parsed.database).parent
            if not folder.is_dir():
                raise StoreError(f"database folder {folder} does not exist")
        engine = _sqlite_engine(url) if is_sqlite else create_async_engine(url, pool_pre_ping=True)
        store = cls(engine)
        if migrate:
            try:
                await store.migrate()
            except StoreError:
                await engine.dispose()
                raise
            except Exception as exc:
                await engine.dispose()
                raise StoreError(
                    f"cannot open database {parsed.render_as_string()}: {exc}"
                ) from exc
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def current_revision(self) -> str | None:
        """The revision in alembic_version, read with plain SQL (no table: None)."""
        async with self.engine.connect() as conn:
            try:
                return (
                    await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                ).scalar()
            except sa.exc.DBAPIError:
                return None

    async def migrate(self, target: str = "head") -> None:
        now = await self.current_revision()
        # A database already at the newest revision (the usual case) needs no Alembic at all.
        if target == "head" and now == SCHEMA_HEAD:
            return
        from alembic import command

        config = _alembic_config()
        goal = head_revision() if target == "head" else target
        if now == goal:
            return

        def upgrade(connection: Connection) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, goal)

        await self._backup_before_migration(now)
        # Tables are rebuilt during migrations: foreign keys are checked after, not during.
        url = self.engine.url
        if url.get_backend_name() == "sqlite":
            engine = _sqlite_engine(url.render_as_string(hide_password=False), foreign_keys=False)
        else:
            engine = self.engine
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
                if url.get_backend_name() == "sqlite":
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise StoreError(f"migration left {len(broken)} rows without their parent")
        finally:
            if engine is not self.engine:
                await engine.dispose()
        log.info("database migrated from %s to %s", now or "empty", goal)

    async def _backup_before_migration(self, revision: str | None) -> None:
        """Copy an existing SQLite database aside, so a failed upgrade loses nothing."""
        url = self.engine.url
        if revision is None or url.get_backend_name() != "sqlite" or not url.database:
            return
        source = Path(url.database)
        target = source.with_name(f"{source.name}.before-{revision}")
        target.unlink(missing_ok=True)

        def copy() -> None:
            with contextlib.closing(sqlite3.connect(source)) as conn:
                conn.execute("VACUUM INTO ?", (str(target),))

        await asyncio.to_thread(copy)
        log.info("copied %s to %s before migrating", source, target)

    async def sync_jobs(self, watched: Sequence[JobIdentity], now: datetime) -> dict[str, JobView]:
        """Register configured jobs (new ones as pending); return every known job.

        One read of the jobs table, one insert of the new jobs and one update of the
        jobs whose name, source or instance changed (or that left the config).
        """
        wanted = {j.id: j for j in watched}
        async with self._writing() as conn:
            views: dict[str, JobView] = {}
            changes: list[dict[str, Any]] = []
            for row in await conn.execute(sa.select(jobs)):
                views[row.id] = _view(row)
                j = wanted.get(row.id)
                stored = (row.name, row.source, row.instance_id, bool(row.configured))
                # A job that left the config keeps its identity and is marked unconfigured.
                now_is = (
                    (*stored[:3], False) if j is None else (j.name, j.source, j.instance_id, True)
                )
                if now_is != stored:
                    name, source, instance_id, configured = now_is
                    changes.append(
                        {
                            "key": row.id,
                            "name": name,
                            "source": source,
                            "instance_id": instance_id,
                            "configured": configured,
                        }
                    )
            new = [j for j in watched if j.id not in views]
            if new:
                await conn.execute(
                    sa.insert(jobs),
                    [
                        {
                            "id": j.id,
                            "name": j.name,
                            "source": j.source,
                            "instance_id": j.instance_id,
                            "configured": True,
                            "state": State.PENDING.value,
                            "created_at": now,
                        }
                        for j in new
                    ],
                )
                views.update((j.id, JobView(id=j.id)) for j in new)
            if changes:
                await conn.execute(_UPDATE_IDENTITY, changes)
            return views

    async def record(
        self,
        job_id: str,
        outcome: Outcome,
        polled_at: datetime,
        new_events: Sequence[NewEvent] = (),
    ) -> list[str]:
        """Write what one poll changed, its transition and its events, in one transaction.

        Polls that finish together are written together (a group commit): each caller
        waits until its own rows are committed. Returns the ids of the events written.
        """
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._queued.append(_Record(job_id, outcome, polled_at, new_events, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await done

    async def _commit_queued(self) -> None:
        while self._queued:
            async with self._one_writer:
                batch, self._queued = self._queued[:GROUP_COMMIT], self._queued[GROUP_COMMIT:]
                try:
                    async with self.engine.begin() as conn:
                        results = await _write_batch(conn, batch)
                except Exception:
                    # One bad record must not fail the others: write them one by one.
                    for r in batch:
                        try:
                            async with self.engine.begin() as conn:
                                (ids,) = await _write_batch(conn, [r])
                        except Exception as exc:
                            if not r.done.done():
                                r.done.set_exception(exc)
                        else:
                            if not r.done.done():
                                r.done.set_result(ids)
                    continue
            for r, ids in zip(batch, results, strict=True):
                if not r.done.done():
                    r.done.set_result(ids)

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
            return await _insert_events(conn, new_events, at, job_id=job_id, source=source)

    async def source_health(self) -> dict[str, SourceHealth]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(source_health))
            return {r.source: SourceHealth(r.error, r.error_since, r.error_notified) for r in rows}

    async def record_source(
        self, source: str, health: SourceHealth, at: datetime, new_events: Sequence[NewEvent] = ()
    ) -> list[str]:
        """Write a source's health and the events it causes, in one transaction."""
        values = {
            "error": health.error,
            "error_since": health.error_since,
            "error_notified": health.error_notified,
        }
        async with self._writing() as conn:
            updated = await conn.execute(
                sa.update(source_health).where(source_health.c.source == source).values(**values)
            )
            if not updated.rowcount:
                await conn.execute(sa.insert(source_health).values(source=source, **values))
            return await _insert_events(conn, new_events, at, source=source)

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

    async def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.notifier,
                deliveries.c.target,
                deliveries.c.attempts,
                events.c.kind,
                events.c.payload,
                events.c.at,
            )
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Delivery(
                id=row.id,
                event_id=row.event_id,
                kind=row.kind,
                notifier=row.notifier,
                target=row.target,
                attempts=row.attempts,
                payload=json.loads(row.payload),
                at=row.at,
            )
            for row in rows
        ]

    async def retry_pending_now(self, now: datetime) -> int:
        """Make every pending delivery due now (at start: a restart is often the fix)."""
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at > now)
                .values(next_attempt_at=now)
            )
            return int(result.rowcount or 0)

    async def next_delivery_at(self) -> datetime | None:
        query = sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.state == "pending"
        )
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    async def mark_delivered(self, delivery_id: int, at: datetime) -> None:
        async with self._writing() as conn:
            await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(
                    state="delivered",
                    delivered_at=at,
                    attempts=deliveries.c.attempts + 1,
                    last_error=None,
                )
            )

    async def mark_failed(self, delivery_id: int, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt; with no ``retry_at`` the delivery is abandoned."""
        values: dict[str, Any] = {
            "attempts": deliveries.c.attempts + 1,
            "last_error": error[:1000],
        }
        if retry_at is None:
            values["state"] = "abandoned"
        else:
            values["next_attempt_at"] = retry_at
        async with self._writing() as conn:
            await conn.execute(
                sa.update(deliveries).where(deliveries.c.id == delivery_id).values(**values)
            )

    async def status(self) -> list[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(jobs).order_by(jobs.c.created_at, jobs.c.id))
            return list(rows)

    async def job(self, job_id: str) -> sa.Row[Any] | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()

    async def history(self, job_id: str) -> list[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(transitions)
                .where(transitions.c.job_id == job_id)
                .order_by(transitions.c.id)
            )
            return list(rows)

    async def deliveries(self, states: Sequence[str]) -> list[sa.Row[Any]]:
        """Deliveries in the given states, oldest first, with their event and job."""
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.notifier,
                deliveries.c.url,
                deliveries.c.state,
                deliveries.c.attempts,
                deliveries.c.next_attempt_at,
                deliveries.c.last_error,
                deliveries.c.delivered_at,
                events.c.kind,
                events.c.at,
                events.c.job_id,
                events.c.source,
            )
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.state.in_(states))
            .order_by(deliveries.c.id)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def retry_deliveries(self, ids: Sequence[int] | None, now: datetime) -> int:
        """Make pending or abandoned deliveries (all of them when ``ids`` is None) due now."""
        statement = (
            sa.update(deliveries)
            .where(deliveries.c.state.in_(("pending", "abandoned")))
            .values(state="pending", next_attempt_at=now)
        )
        if ids is not None:
            statement = statement.where(deliveries.c.id.in_(ids))
        async with self._writing() as conn:
            return int((await conn.execute(statement)).rowcount or 0)

    async def drop_deliveries(self, ids: Sequence[int] | None) -> int:
        """Give up on pending or abandoned deliveries (all of them when ``ids`` is None)."""
        statement = (
            sa.update(deliveries)
            .where(deliveries.c.state.in_(("pending", "abandoned")))
            .values(state="dropped")
        )
        if ids is not None:
            statement = statement.where(deliveries.c.id.in_(ids))
        async with self._writing() as conn:
            return int((await conn.execute(statement)).rowcount or 0)

    async def last_reminded(self, notifier: str) -> dict[tuple[str, str], datetime]:
        """When each (job or source, event kind) last went to this notifier."""
        subject = sa.func.coalesce(events.c.job_id, sa.literal("source:") + events.c.source)
        query = (
            sa.select(subject.label("subject"), events.c.kind, sa.func.max(events.c.at))
            .join(deliveries, deliveries.c.event_id == events.c.id)
            .where(deliveries.c.notifier == notifier)
            .group_by(subject, events.c.kind)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[tuple[str, str], datetime] = {}
        for subject_id, kind, at in rows:
            if isinstance(at, str):
                at = datetime.fromisoformat(at)
            out[(subject_id, kind)] = at if at.tzinfo else at.replace(tzinfo=UTC)
        return out

    async def delivery_counts(self) -> dict[str, int]:
        query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        async with self.engine.connect() as conn:
            return {state: count for state, count in (await conn.execute(query)).all()}


GROUP_COMMIT = 500


@dataclass(slots=True)
class _Record:
    job_id: str
    outcome: Outcome
    polled_at: datetime
    new_events: Sequence[NewEvent]
    done: asyncio.Future[list[str]]


_VIEW_COLUMNS = (
    "state",
    "raw_status",
    "progress",
    "recorded_progress",
    "type",
    "archive_id",
    "reasons",
    "begin_time",
    "end_time",
    "last_changed_at",
    "error",
    "error_since",
    "not_found",
    "running_since",
    "progress_changed_at",
    "milestone",
    "stall_notified",
    "overdue_notified",
    "error_notified",
    "last_polled_at",
)
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
    )
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


async def _write_batch(conn: AsyncConnection, batch: Sequence[_Record]) -> list[list[str]]:
    """Many polls' changes in few statements: one UPDATE and one INSERT run over all of them."""
    updates = [
        {
            "job_key": r.job_id,
            **{f"v_{k}": v for k, v in _view_values(r.outcome.job).items()},
            "v_last_polled_at": r.polled_at,
        }
        for r in batch
    ]
    await conn.execute(_UPDATE_JOB, updates)
    rows = [
        _transition_row(r.job_id, r.outcome.transition)
        for r in batch
        if r.outcome.transition is not None
    ]
    if rows:
        await conn.execute(sa.insert(transitions), rows)
    return [
        await _insert_events(conn, r.new_events, r.polled_at, job_id=r.job_id)
        if r.new_events
        else []
        for r in batch
    ]


async def _insert_events(
    conn: AsyncConnection,
    new_events: Sequence[NewEvent],
    at: datetime,
    *,
    job_id: str | None = None,
    source: str | None = None,
) -> list[str]:
    event_ids: list[str] = []
    for new in new_events:
        event_id = uuid.uuid4().hex
        event_ids.append(event_id)
        await conn.execute(
            sa.insert(events).values(
                id=event_id,
                job_id=job_id,
                source=source,
                kind=new.kind,
                at=at,
                payload=json.dumps(new.payload, default=str),
            )
        )
        if new.targets:
            await conn.execute(
                sa.insert(deliveries),
                [
                    {
                        "event_id": event_id,
                        "notifier": t.notifier,
                        "target": t.key,
                        "url": t.url,
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": at,
                    }
                    for t in new.targets
                ],
            )
    return event_ids


def reasons_of(row: sa.Row[Any]) -> list[dict[str, str | None]]:
    return [r.as_dict() for r in _reasons_from(row.reasons)]
