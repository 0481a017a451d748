"""Opening the database: engines, migrations (one process at a time), the time it keeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from jobherald.errors import StoreError
from jobherald.store.schema import (
    SCHEMA_HEAD,
    UTCDateTime,
    alembic_config,
    db_problem,
    head_revision,
    known_revisions,
    replicas,
    shown_url,
)

log = logging.getLogger(__name__)

# Held (in a transaction) while the schema is checked and upgraded: replicas that start
# together on an empty PostgreSQL database migrate it once, one after the other.
MIGRATION_LOCK = 0x6A6F6268  # "jobh"

S = TypeVar("S", bound="StoreBase")
# A migrating start converts a SQLite file up to this size to give pruned space back
# (bigger ones: `jobherald db compact`, with the daemon stopped).
CONVERT_AT_START = 512 * 2**20
# Free space a copy before a migration leaves on the disk beside itself.
BACKUP_HEADROOM = 64 * 2**20
WRITES = "jobherald_writes"  # execution option: this transaction writes (see write_transaction)


def sqlite_engine(url: str, *, foreign_keys: bool = True) -> AsyncEngine:
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
        # A new file gives the pages of deleted rows back (see Pruning.reclaim). Set on
        # an empty file only: on one with tables it changes nothing until a VACUUM (and
        # a read-only file refuses it).
        cursor.execute("PRAGMA page_count")
        if cursor.fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    def on_begin(conn: Connection) -> None:
        # A transaction that will write takes the write lock at once: one that read
        # first could not take it after another writer's commit (SQLite answers
        # "database is locked" at once, without waiting in the busy handler).
        writes = conn.get_execution_options().get(WRITES, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    sa_event.listen(engine.sync_engine, "connect", on_connect)
    sa_event.listen(engine.sync_engine, "begin", on_begin)
    return engine


def _room_for_copy(source: Path) -> tuple[int, int]:
    """Remove earlier copies of ``source`` made before migrations (one is kept: the
    next); return its size and the bytes free beside it."""
    for old in source.parent.glob(f"{source.name}.before-*"):
        if old.is_file():
            old.unlink(missing_ok=True)
    return os.stat(source).st_size, shutil.disk_usage(source.parent).free


class StoreBase:
    """The engine, one writer at a time, and the schema kept at the newest revision."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.shared = engine.url.get_backend_name() == "postgresql"
        self._one_writer = asyncio.Lock()
        # The same engine and pool, its transactions marked as writing (see sqlite_engine).
        self._writer = engine.execution_options(**{WRITES: True})
        # Whether a migration first copies a SQLite file aside.
        self.backup = True
        # The removed jobs counted lately, per source (None: all), with when: forgotten
        # whenever this process changes which jobs are removed.
        self.removed_counts: dict[str | None, tuple[float, int]] = {}

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. Writers take turns here rather than in SQLite's busy
        handler, which sleeps and retries: under load that costs far more than a queue."""
        async with self._one_writer, self.write_transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes, committed at the end (rolled back on an exception).
        On SQLite it holds the write lock from its BEGIN, so that it waits for another
        writer (this daemon's membership, another process) rather than failing."""
        async with self._writer.begin() as conn:
            yield conn

    def database_file(self) -> Path | None:
        """The SQLite file (None on PostgreSQL, or in memory)."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database)

    def db_time(self, plus: float = 0.0) -> sa.ColumnElement[datetime]:
        """The time now (plus some seconds) by the database's clock on PostgreSQL, so
        that replicas on hosts whose clocks differ agree on leases; by ours on SQLite."""
        if self.shared:
            now: sa.ColumnElement[datetime] = sa.func.timezone(
                "utc", sa.func.clock_timestamp(), type_=UTCDateTime
            )
            if plus:
                now = now + sa.func.make_interval(0, 0, 0, 0, 0, 0, plus)
            return sa.type_coerce(now, UTCDateTime)
        return sa.literal(datetime.now(UTC) + timedelta(seconds=plus), UTCDateTime)

    async def probe_write(self) -> None:
        """A write that changes nothing, committed: proof that the database takes writes."""
        async with self._writing() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")

    def unheld(self, table: sa.Table) -> sa.ColumnElement[bool]:
        """A row of a claimable table (deliveries, archives) that nobody holds: never
        claimed, its claim expired, or claimed by a replica whose lease has lapsed."""
        now = self.db_time()
        lapsed = sa.select(replicas.c.incarnation).where(replicas.c.expires_at <= now)
        return sa.or_(
            table.c.claimed_by.is_(None),
            table.c.claimed_until < now,
            table.c.claimed_by.in_(lapsed.scalar_subquery()),
        )

    async def next_unheld_at(
        self, table: sa.Table, *also: sa.ColumnElement[bool]
    ) -> datetime | None:
        """When the next pending row of a claimable table that nobody holds falls due."""
        query = sa.select(sa.func.min(table.c.next_attempt_at)).where(
            table.c.state == "pending", self.unheld(table), *also
        )
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        if isinstance(value, str):  # SQLite hands back text from min()
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @classmethod
    async def open(
        cls: type[S],
        url: str,
        *,
        migrate: bool = True,
        backup: bool = True,
        idle_for: float | None = None,
    ) -> S:
        """Connect, and bring the schema to the newest revision (``backup``: a SQLite file
        is copied aside first, when the disk has room). ``idle_for``: on PostgreSQL, a
        transaction of ours left idle this long is ended by the server (a replica frozen
        in one, by SIGSTOP or a stalled VM, must not hold the rows the others take over)."""
        parsed = make_url(url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and parsed.database:
            folder = Path(parsed.database).parent
            if not folder.is_dir():
                raise StoreError(
                    f"database folder {folder} does not exist: create it (install -d -m 0700 "
                    f"{folder}), or start jobherald.service once, which makes its own"
                )
        if is_sqlite:
            engine = sqlite_engine(url)
        else:
            settings = {}
            if idle_for is not None:
                settings["idle_in_transaction_session_timeout"] = str(int(idle_for * 1000))
            engine = create_async_engine(
                url, pool_pre_ping=True, connect_args={"server_settings": settings}
            )
        store = cls(engine)
        store.backup = backup
        if migrate:
            try:
                await store.migrate()
            except StoreError:
                await engine.dispose()
                raise
            except Exception as exc:
                await engine.dispose()
                raise StoreError(
                    f"cannot open database {shown_url(parsed)}: {db_problem(exc)}"
                ) from exc
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def current_revision(self) -> str | None:
        """The revision in alembic_version, read with plain SQL (no table: None)."""
        try:
            async with self.engine.connect() as conn:
                try:
                    return (
                        await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                    ).scalar()
                except sa.exc.ProgrammingError:
                    return None  # no such table yet
                except sa.exc.OperationalError as exc:
                    if "no such table" in str(exc.orig):
                        return None
                    raise
        except Exception as exc:  # refused, unreachable, not a database, a bad URL option
            raise StoreError(
                f"cannot open database {shown_url(self.engine.url)}: {db_problem(exc)}"
            ) from None

    async def migrate(self, target: str = "head") -> None:
        now = await self.current_revision()
        # A database already at the newest revision (the usual case) needs no Alembic at all.
        if target == "head" and now == SCHEMA_HEAD:
            return
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        config = alembic_config()
        goal = head_revision() if target == "head" else target
        if now == goal:
            return
        if now is not None and now not in known_revisions():
            raise StoreError(
                f"database {shown_url(self.engine.url)} has schema {now}, newer than this "
                f"jobherald knows (its newest is {head_revision()}): install the jobherald "
                "that wrote it, or point database at another file"
            )
        done: list[str | None] = []

        def upgrade(connection: Connection) -> None:
            # Read again under the lock: another process may have migrated meanwhile.
            current = MigrationContext.configure(connection).get_current_revision()
            if current == goal:
                return
            config.attributes["connection"] = connection
            command.upgrade(config, goal)
            done.append(current)

        await self._backup_before_migration(now)
        # Tables are rebuilt during migrations: foreign keys are checked after, not during.
        url = self.engine.url
        if url.get_backend_name() == "sqlite":
            engine = sqlite_engine(url.render_as_string(hide_password=False), foreign_keys=False)
        else:
            engine = self.engine
        try:
            async with engine.begin() as conn:
                if self.shared:
                    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                await conn.run_sync(upgrade)
                if url.get_backend_name() == "sqlite":
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise StoreError(f"migration left {len(broken)} rows without their parent")
        finally:
            if engine is not self.engine:
                await engine.dispose()
        if done:
            log.info("database migrated from %s to %s", done[0] or "empty", goal)
            if done[0] is not None:
                await self.convert_to_incremental(CONVERT_AT_START)

    async def convert_to_incremental(self, up_to: int | None = None) -> bool:
        """Make an existing SQLite file give deleted rows' pages back (auto_vacuum =
        INCREMENTAL, which takes a VACUUM: a copy of the whole file, said in the log with
        its progress). A file bigger than ``up_to`` bytes is left as it is (said so):
        `jobherald db compact` converts it while the daemon is stopped. True if the
        file gives pages back now."""
        path = self.database_file()
        if path is None:
            return False
        with contextlib.closing(sqlite3.connect(path)) as probe:
            if probe.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return True
        size = os.stat(path).st_size
        if up_to is not None and size > up_to:
            log.warning(
                "database %s (%d MB) does not give the space of pruned history back yet: "
                "run `jobherald db compact` while the daemon is stopped (it rewrites the file "
                "once; about %d MB free needed)",
                path,
                size // 2**20,
                size // 2**20,
            )
            return False
        log.info(
            "converting %s (%d MB) to give pruned space back: a one-time rewrite of the "
            "file, which may take a while",
            path,
            size // 2**20,
        )
        started = time.monotonic()
        said = [started]

        def progress() -> int:
            if time.monotonic() - said[0] >= 10:
                said[0] = time.monotonic()
                log.info(
                    "converting %s: %.0f s so far (a file of %d MB)",
                    path,
                    said[0] - started,
                    size // 2**20,
                )
            return 0

        def convert() -> None:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                conn.execute("PRAGMA busy_timeout=10000")
                conn.set_progress_handler(progress, 1_000_000)
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self.engine.dispose()  # no connection of ours holds the file meanwhile
        await asyncio.to_thread(convert)
        log.info(
            "converted %s in %.1f s: now %d MB",
            path,
            time.monotonic() - started,
            os.stat(path).st_size // 2**20,
        )
        return True

    async def _backup_before_migration(self, revision: str | None) -> None:
        """Copy an existing SQLite database aside, so a failed upgrade loses nothing: one
        copy (earlier ones are removed), made only where the disk has room for it, and
        not at all when ``backup`` is off (both said in the log)."""
        url = self.engine.url
        if revision is None or url.get_backend_name() != "sqlite" or not url.database:
            return
        source = Path(url.database)
        target = source.with_name(f"{source.name}.before-{revision}")
        if not self.backup:
            log.warning(
                "not copying %s aside before migrating from %s: backup_before_migrate = false",
                source,
                revision,
            )
            return
        size, free = await asyncio.to_thread(_room_for_copy, source)
        if free < size + BACKUP_HEADROOM:
            log.warning(
                "not copying %s aside before migrating from %s: %d MB free, the copy needs "
                "about %d MB (set backup_before_migrate = false to say so yourself)",
                source,
                revision,
                free // 2**20,
                (size + BACKUP_HEADROOM) // 2**20,
            )
            return

        def copy() -> None:
            with contextlib.closing(sqlite3.connect(source)) as conn:
                conn.execute("VACUUM INTO ?", (str(target),))

        started = time.monotonic()
        await asyncio.to_thread(copy)
        log.info(
            "copied %s to %s before migrating (%.1f s)", source, target, time.monotonic() - started
        )
