"""history that ends: when a job left the config, the recent durations of finished runs
in a table of their own (they outlive the jobs pruned), the jobs pruned (so `history` can
say so), and indexes that read watched jobs without a scan of history

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Finished durations kept per job name and source (the store keeps as many).
KEPT_DURATIONS = 50


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("removed_at", UTCDateTime, nullable=True))
    # A job that left the config before: removed when it was last polled (it was watched
    # until then), else when it last changed or was registered.
    op.execute(
        "UPDATE jobs SET removed_at = COALESCE(last_polled_at, last_changed_at, created_at) "
        "WHERE NOT configured"
    )
    op.create_index("ix_jobs_watched", "jobs", ["configured", "state", "name", "id"])
    op.create_index("ix_jobs_watched_created", "jobs", ["configured", "created_at", "id"])
    op.create_index("ix_jobs_removed_at", "jobs", ["removed_at"])
    op.create_index("ix_events_job", "events", ["job_id", "at"])

    op.create_table(
        "durations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_durations_key", "durations", ["name", "source", "id"])
    op.create_table(
        "pruned_jobs",
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pruned_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_pruned_jobs_at", "pruned_jobs", ["pruned_at"])

    # The durations of the runs that succeeded so far, the latest ones of each job name.
    if bind.dialect.name == "sqlite":
        seconds = "(julianday(end_time) - julianday(begin_time)) * 86400.0"
    else:
        seconds = "EXTRACT(EPOCH FROM end_time - begin_time)"
    op.execute(
        "INSERT INTO durations (name, source, job_id, seconds, at) "  # noqa: S608 (constants only)
        "SELECT name, source, id, seconds, end_time FROM ("
        f"  SELECT name, source, id, end_time, {seconds} AS seconds, ROW_NUMBER() OVER ("
        "    PARTITION BY name, source ORDER BY end_time DESC, id DESC) AS n"
        "  FROM jobs WHERE state = 'succeeded' AND begin_time IS NOT NULL"
        "  AND end_time IS NOT NULL AND end_time > begin_time"
        f") AS latest WHERE n <= {KEPT_DURATIONS} ORDER BY end_time, id"
    )


def downgrade() -> None:
    op.drop_index("ix_pruned_jobs_at", "pruned_jobs")
    op.drop_table("pruned_jobs")
    op.drop_index("ix_durations_key", "durations")
    op.drop_table("durations")
    op.drop_index("ix_events_job", "events")
    op.drop_index("ix_jobs_removed_at", "jobs")
    op.drop_index("ix_jobs_watched_created", "jobs")
    op.drop_index("ix_jobs_watched", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("removed_at")
