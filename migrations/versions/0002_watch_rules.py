"""watch rules: per-job rule state, source health, events about a whole source

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_found", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("running_since", UTCDateTime))
        batch.add_column(sa.Column("progress_changed_at", UTCDateTime))
        batch.add_column(sa.Column("milestone", sa.Float, nullable=False, server_default="0"))
        for flag in ("stall_notified", "overdue_notified", "error_notified"):
            batch.add_column(sa.Column(flag, sa.Boolean, nullable=False, server_default=sa.false()))
    # Jobs seen running before this revision have had their "started" moment.
    op.execute(
        "UPDATE jobs SET running_since = last_changed_at, progress_changed_at = last_changed_at "
        "WHERE state = 'running'"
    )
    with op.batch_alter_table("events") as batch:
        batch.alter_column("job_id", existing_type=sa.String(128), nullable=True)
        batch.add_column(sa.Column("source", sa.String(64)))
    op.create_table(
        "source_health",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("error", sa.Text),
        sa.Column("error_since", UTCDateTime),
        sa.Column("error_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("source_health")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("source")
        batch.alter_column("job_id", existing_type=sa.String(128), nullable=False)
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "error_notified",
            "overdue_notified",
            "stall_notified",
            "milestone",
            "progress_changed_at",
            "running_since",
            "not_found",
        ):
            batch.drop_column(column)
