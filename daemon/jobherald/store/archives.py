"""Export archives to keep: a row written with the job's success, claimed by one
downloader at a time, marked kept (with its path, size and sha256) together with the
``archived`` event, or retried, or given up."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.store.base import StoreBase
from jobherald.store.events import NewEvent, insert_events
from jobherald.store.outbox import Claimer
from jobherald.store.schema import archives

# How long a download's claim holds while its replica lives (a big archive on a slow
# line takes long; a replica that dies loses its claims when its lease lapses).
ARCHIVE_CLAIM_FOR = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class ArchiveClaim:
    """One archive this process is to download now."""

    job_id: str
    archive_id: str
    source: str
    attempts: int
    created_at: datetime
    error_since: datetime | None
    error_notified: bool


@dataclass(frozen=True, slots=True)
class Kept:
    """An archive on disk: where, how big, its sha256."""

    path: str
    size: int
    sha256: str


async def insert_archive(
    conn: AsyncConnection, shared: bool, job_id: str, archive_id: str, source: str, at: datetime
) -> None:
    """Note an archive to keep (in the transaction that records its job's success)."""
    if shared:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        insert: Any = pg_insert(archives).on_conflict_do_nothing(index_elements=["job_id"])
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        insert = sqlite_insert(archives).on_conflict_do_nothing(index_elements=["job_id"])
    await conn.execute(
        insert.values(
            job_id=job_id,
            archive_id=archive_id,
            source=source,
            state="pending",
            created_at=at,
            attempts=0,
            next_attempt_at=at,
            error_notified=False,
        )
    )


class Archives(StoreBase):
    """The archives table."""

    async def claim_archives(
        self, now: datetime, claimer: Claimer, limit: int
    ) -> list[ArchiveClaim]:
        """Claim up to ``limit`` archives due for a download, for this process alone."""
        due = (
            sa.select(archives.c.job_id)
            .where(archives.c.state == "pending", archives.c.next_attempt_at <= now)
            .where(self.unheld(archives))
            .order_by(archives.c.next_attempt_at, archives.c.job_id)
            .limit(limit)
        )
        if self.shared:
            due = due.with_for_update(skip_locked=True)
        claim = (
            sa.update(archives)
            .where(archives.c.job_id.in_(due.scalar_subquery()))
            .values(claimed_by=claimer.token, claimed_until=self.db_time(ARCHIVE_CLAIM_FOR))
            .returning(
                archives.c.job_id,
                archives.c.archive_id,
                archives.c.source,
                archives.c.attempts,
                archives.c.created_at,
                archives.c.error_since,
                archives.c.error_notified,
            )
        )
        async with self._writing() as conn:
            rows = (await conn.execute(claim)).all()
        return [
            ArchiveClaim(
                job_id=row.job_id,
                archive_id=row.archive_id,
                source=row.source,
                attempts=row.attempts,
                created_at=_aware(row.created_at),
                error_since=_aware(row.error_since) if row.error_since else None,
                error_notified=bool(row.error_notified),
            )
            for row in rows
        ]

    async def archive_kept(
        self,
        job_id: str,
        kept: Kept,
        at: datetime,
        kept_by: str,
        new_events: Sequence[NewEvent],
    ) -> bool:
        """Record an archive on disk with its ``archived`` event; False if it was recorded
        already (the file is whole either way: whoever wrote it first tells)."""
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(archives)
                .where(archives.c.job_id == job_id, archives.c.state == "pending")
                .values(
                    state="kept",
                    path=kept.path,
                    size=kept.size,
                    sha256=kept.sha256,
                    done_at=at,
                    kept_by=kept_by,
                    attempts=archives.c.attempts + 1,
                    last_error=None,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            if not result.rowcount:
                return False
            await insert_events(conn, new_events, at, job_id=job_id)
            return True

    async def archive_failed(
        self,
        job_id: str,
        claimer: Claimer,
        error: str,
        retry_at: datetime | None,
        error_since: datetime,
        error_notified: bool,
        new_events: Sequence[NewEvent],
        at: datetime,
    ) -> bool:
        """Record a failed download (with the events it causes); with no ``retry_at``
        the archive is given up. False if this process no longer held the claim."""
        values: dict[str, Any] = {
            "attempts": archives.c.attempts + 1,
            "last_error": error[:1000],
            "error_since": error_since,
            "error_notified": error_notified,
            "claimed_by": None,
            "claimed_until": None,
        }
        if retry_at is None:
            values["state"] = "failed"
            values["done_at"] = at
        else:
            values["next_attempt_at"] = retry_at
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(archives)
                .where(
                    archives.c.job_id == job_id,
                    archives.c.claimed_by == claimer.token,
                    archives.c.state == "pending",
                )
                .values(**values)
            )
            if not result.rowcount:
                return False
            await insert_events(conn, new_events, at, job_id=job_id)
            return True

    async def archive_skipped(self, job_id: str, claimer: Claimer, why: str, at: datetime) -> None:
        """Leave an archive to the user (its source no longer keeps archives)."""
        async with self._writing() as conn:
            await conn.execute(
                sa.update(archives)
                .where(archives.c.job_id == job_id, archives.c.claimed_by == claimer.token)
                .values(
                    state="skipped", last_error=why, done_at=at, claimed_by=None, claimed_until=None
                )
            )

    async def release_archive(self, job_id: str, claimer: Claimer) -> None:
        """Give back a claim not acted on (a download cut off by a stop)."""
        async with self._writing() as conn:
            await conn.execute(
                sa.update(archives)
                .where(archives.c.job_id == job_id, archives.c.claimed_by == claimer.token)
                .values(claimed_by=None, claimed_until=None)
            )

    async def next_archive_at(self) -> datetime | None:
        """When the next download nobody holds falls due."""
        return await self.next_unheld_at(archives)

    async def archive_rows(self, job_ids: Iterable[str] | None = None) -> dict[str, sa.Row[Any]]:
        """The archive rows of these jobs (all when None), by job id."""
        query = sa.select(archives)
        if job_ids is not None:
            query = query.where(archives.c.job_id.in_(list(job_ids)))
        async with self.engine.connect() as conn:
            return {row.job_id: row for row in await conn.execute(query)}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
