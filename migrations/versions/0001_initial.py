"""jobs, transitions, events and deliveries

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(128), nullable=False),
        sa.Column("configured", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
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
    )
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float),
        sa.Column("raw_status", sa.String(64)),
    )
    op.create_index("ix_transitions_job", "transitions", ["job_id", "id"])
    op.create_table(
        "events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), sa.ForeignKey("events.id"), nullable=False),
        sa.Column("notifier", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", UTCDateTime),
        sa.UniqueConstraint("event_id", "notifier", name="uq_deliveries_event_notifier"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("events")
    op.drop_index("ix_transitions_job", table_name="transitions")
    op.drop_table("transitions")
    op.drop_table("jobs")
