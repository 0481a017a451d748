"""The durations of finished runs, the latest KEPT_DURATIONS per job name and source:
written with each success, trimmed as they come, read for typical durations and ETAs.
They outlive the jobs pruned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.store.schema import UTCDateTime, durations, jobs

# Finished durations kept per job name and source (ETAs and typical durations are drawn
# from the latest; see the durations table).
KEPT_DURATIONS = 50
_KEEP_DURATION = sa.insert(durations).from_select(
    ["name", "source", "job_id", "seconds", "at"],
    sa.select(
        jobs.c.name,
        jobs.c.source,
        jobs.c.id,
        sa.bindparam("d_seconds", type_=sa.Float),
        sa.bindparam("d_at", type_=UTCDateTime),
    ).where(jobs.c.id == sa.bindparam("d_job")),
)


def _same_key(table: sa.FromClause) -> sa.ColumnElement[bool]:
    """Rows of ``table`` (durations) of the job name and source of job ``d_job``."""
    of = sa.select(jobs.c.name, jobs.c.source).where(jobs.c.id == sa.bindparam("d_job"))
    return sa.tuple_(table.c.name, table.c.source).in_(of)


_LATER = durations.alias("later")
# The durations of that name and source older than the latest KEPT_DURATIONS, gone.
_TRIM_DURATIONS = sa.delete(durations).where(
    _same_key(durations),
    durations.c.id
    <= sa.select(_LATER.c.id)
    .where(_same_key(_LATER))
    .order_by(_LATER.c.id.desc())
    .offset(KEPT_DURATIONS)
    .limit(1)
    .scalar_subquery(),
)


async def keep_durations(conn: AsyncConnection, finished: Sequence[dict[str, Any]]) -> None:
    """Note these successes' durations (``d_job``, ``d_seconds``, ``d_at`` each) under
    their jobs' names, and drop what is older than the latest KEPT_DURATIONS of each."""
    await conn.execute(_KEEP_DURATION, finished)
    await conn.execute(_TRIM_DURATIONS, finished)
