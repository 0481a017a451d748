"""silences and reports: held deliveries (what holds each back), the silences that hold
them, the reports sent per scheduled time, and an index of transitions by end

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("held_by", sa.String(32), nullable=True))
    op.create_index("ix_deliveries_held", "deliveries", ["state", "held_by"])
    op.create_table(
        "silences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.Text),
        sa.Column("source", sa.String(64)),
        sa.Column("notifier", sa.String(64)),
        sa.Column("kinds", sa.Text),
        sa.Column("everything", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("starts_at", UTCDateTime, nullable=False),
        sa.Column("ends_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expired_at", UTCDateTime),
        sa.Column("ended_at", UTCDateTime),
    )
    op.create_index("ix_silences_open", "silences", ["ended_at", "ends_at"])
    op.create_table(
        "report_runs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scheduled_at", UTCDateTime, primary_key=True),
        sa.Column("window_start", UTCDateTime, nullable=False),
        sa.Column("window_end", UTCDateTime, nullable=False),
        sa.Column("event_id", sa.String(32)),
        sa.Column("sent_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_transitions_end", "transitions", ["to_state", "at"])


def downgrade() -> None:
    op.drop_index("ix_transitions_end", "transitions")
    op.drop_table("report_runs")
    op.drop_index("ix_silences_open", "silences")
    op.drop_table("silences")
    op.drop_index("ix_deliveries_held", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("held_by")
