"""History that ends: jobs removed from the config longer ago than ``keep_history`` are
deleted with every row they own, a few hundred jobs per transaction; the space goes
back to the file system (SQLite's incremental vacuum, the WAL truncated)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.store.base import StoreBase
from jobherald.store.schema import (
    archives,
    deliveries,
    events,
    jobs,
    pruned_jobs,
    transitions,
)

log = logging.getLogger(__name__)

# Jobs deleted per transaction: about 15 rows each (transitions, events, deliveries),
# so a few thousand rows; a poll's write waits for at most one of them.
PRUNE_BATCH = 200
# Events not of a job (a source's health) deleted per transaction.
EVENT_BATCH = 2000
# Pages given back to the file system per step of the incremental vacuum.
VACUUM_STEP = 2000
# The tables pruned, as metrics and `prune --dry-run` name them.
TABLES = ("jobs", "transitions", "events", "deliveries", "archives")


@dataclass(slots=True)
class Pruned:
    """What a pass deleted (or would delete), per table, and the bytes given back."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    freed: int = 0

    @property
    def jobs(self) -> int:
        return self.rows["jobs"]

    def add(self, other: dict[str, int]) -> None:
        for table, n in other.items():
            self.rows[table] += n


# Deliveries still to be told: sent later, or held for a summary.
UNSENT = ("pending", "silenced")


def _undelivered(job_ids: sa.ColumnElement[Any]) -> sa.Exists:
    """Whether a job has a delivery still to send (never pruned)."""
    return sa.exists().where(
        events.c.job_id == job_ids,
        deliveries.c.event_id == events.c.id,
        deliveries.c.state.in_(UNSENT),
    )


class Pruning(StoreBase):
    """Deleting what ``keep_history`` no longer keeps."""

    def _prunable(self, cutoff: datetime) -> sa.Select[Any]:
        """Removed jobs whose removal is older than ``cutoff``, with nothing left to send."""
        return (
            sa.select(jobs.c.id, jobs.c.name, jobs.c.source, jobs.c.state)
            .where(jobs.c.removed_at < cutoff, ~_undelivered(jobs.c.id))
            .order_by(jobs.c.removed_at)
        )

    async def prune_batch(self, cutoff: datetime, now: datetime) -> dict[str, int]:
        """Delete up to PRUNE_BATCH prunable jobs with their rows, in one transaction;
        return the rows deleted per table (no jobs: nothing was left to prune)."""
        async with self._writing() as conn:
            found = (await conn.execute(self._prunable(cutoff).limit(PRUNE_BATCH))).all()
            if not found:
                return {}
            ids = [row.id for row in found]
            counts = await _delete_jobs(conn, ids)
            self.removed_counts.clear()
            await conn.execute(
                sa.insert(pruned_jobs),
                [
                    {
                        "job_id": row.id,
                        "name": row.name,
                        "source": row.source,
                        "state": row.state,
                        "pruned_at": now,
                    }
                    for row in found
                ],
            )
            return counts

    async def prune_events(self, cutoff: datetime) -> int:
        """Delete up to EVENT_BATCH events of no job (sources') older than ``cutoff``, with
        their deliveries, none pending; return how many events went."""
        async with self._writing() as conn:
            old = sa.select(events.c.id).where(
                events.c.job_id.is_(None),
                events.c.at < cutoff,
                ~sa.exists().where(
                    deliveries.c.event_id == events.c.id, deliveries.c.state.in_(UNSENT)
                ),
            )
            ids = list((await conn.execute(old.limit(EVENT_BATCH))).scalars())
            if not ids:
                return 0
            await conn.execute(sa.delete(deliveries).where(deliveries.c.event_id.in_(ids)))
            await conn.execute(sa.delete(events).where(events.c.id.in_(ids)))
            return len(ids)

    async def forget_pruned(self, cutoff: datetime) -> None:
        """Jobs pruned before ``cutoff`` are forgotten altogether (`history` says "no
        such job" of them)."""
        async with self._writing() as conn:
            await conn.execute(sa.delete(pruned_jobs).where(pruned_jobs.c.pruned_at < cutoff))

    async def purge(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Delete these jobs and every row they own at once (`forget --purge`), pending
        deliveries included."""
        self.removed_counts.clear()
        async with self._writing() as conn:
            return await _delete_jobs(conn, list(job_ids), pending_too=True)

    async def would_prune(self, cutoff: datetime) -> Pruned:
        """What pruning up to ``cutoff`` would delete, per table (`prune --dry-run`)."""
        which = self._prunable(cutoff).with_only_columns(jobs.c.id).subquery()
        of_jobs = sa.select(events.c.id).where(events.c.job_id.in_(sa.select(which.c.id)))
        counts = {
            "jobs": sa.select(sa.func.count()).select_from(which),
            "transitions": sa.select(sa.func.count()).where(
                transitions.c.job_id.in_(sa.select(which.c.id))
            ),
            "events": sa.select(sa.func.count()).where(events.c.id.in_(of_jobs)),
            "deliveries": sa.select(sa.func.count()).where(deliveries.c.event_id.in_(of_jobs)),
            "archives": sa.select(sa.func.count()).where(
                archives.c.job_id.in_(sa.select(which.c.id))
            ),
        }
        out = Pruned()
        async with self.engine.connect() as conn:
            for table, query in counts.items():
                out.rows[table] = int((await conn.execute(query)).scalar() or 0)
        return out

    async def row_counts(self) -> dict[str, int]:
        """Rows in each table pruning deletes from."""
        tables = {"jobs": jobs, "transitions": transitions, "events": events}
        tables |= {"deliveries": deliveries, "archives": archives}
        out = {}
        async with self.engine.connect() as conn:
            for name, table in tables.items():
                query = sa.select(sa.func.count()).select_from(table)
                out[name] = int((await conn.execute(query)).scalar() or 0)
        return out

    async def pruned_job(self, job_id: str) -> sa.Row[Any] | None:
        """The record of a job whose history was pruned, or None."""
        query = sa.select(pruned_jobs).where(pruned_jobs.c.job_id == job_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first()

    async def mark_removed(self, job_ids: Sequence[str], now: datetime) -> None:
        """These watched jobs are no longer watched (finished ``forget_after`` ago)."""
        self.removed_counts.clear()
        async with self._writing() as conn:
            await conn.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_(list(job_ids)), jobs.c.configured == sa.true())
                .values(configured=False, removed_at=now)
            )

    async def database_bytes(self) -> int:
        """The database's size on disk: the SQLite file and its WAL, or PostgreSQL's
        ``pg_database_size``."""
        path = self.database_file()
        if path is not None:
            size = 0
            for one in (path, path.with_name(path.name + "-wal")):
                with contextlib.suppress(OSError):
                    size += one.stat().st_size
            return size
        if not self.shared:
            return 0
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.pg_database_size(sa.func.current_database()))
            return int((await conn.execute(query)).scalar() or 0)

    async def reclaim(self) -> None:
        """Give the space of deleted rows back (SQLite; PostgreSQL's autovacuum does its
        own): the free pages a few thousand at a time, each step a short write of its
        own, then the WAL truncated."""
        path = self.database_file()
        if path is None:
            return
        while True:
            async with self._one_writer:
                left = await asyncio.to_thread(_sqlite, path, _vacuum_step)
            if left <= 0:
                break
        async with self._one_writer:
            await asyncio.to_thread(_sqlite, path, _checkpoint)


def _sqlite(path: Path, work: Callable[[sqlite3.Connection], int]) -> int:
    """``work`` on a connection of its own to the SQLite file (pragmas that must not
    run inside the engine's transactions)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout=10000")
        return work(conn)


def _vacuum_step(conn: sqlite3.Connection) -> int:
    """Give up to VACUUM_STEP free pages back; return how many are still free (0 as
    well when the file does not give pages back: auto_vacuum is not INCREMENTAL)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0
    if not conn.execute("PRAGMA freelist_count").fetchone()[0]:
        return 0
    conn.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP})").fetchall()
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _checkpoint(conn: sqlite3.Connection) -> int:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return 0


async def _delete_jobs(
    conn: AsyncConnection, ids: list[str], *, pending_too: bool = False
) -> dict[str, int]:
    """Delete these jobs with their transitions, events, deliveries and archive rows."""
    counts = dict.fromkeys(TABLES, 0)
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        of_jobs = sa.select(events.c.id).where(events.c.job_id.in_(chunk))
        gone = sa.delete(deliveries).where(deliveries.c.event_id.in_(of_jobs))
        if not pending_too:
            gone = gone.where(deliveries.c.state.not_in(UNSENT))
        counts["deliveries"] += (await conn.execute(gone)).rowcount
        for table in (events, transitions, archives):
            result = await conn.execute(sa.delete(table).where(table.c.job_id.in_(chunk)))
            counts[table.name] += result.rowcount
        counts["jobs"] += (await conn.execute(sa.delete(jobs).where(jobs.c.id.in_(chunk)))).rowcount
    return counts
