"""export archives kept on disk: one row per archive, claimed by one downloader

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("archive_id", sa.Text, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("error_since", UTCDateTime),
        sa.Column("error_notified", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("path", sa.Text),
        sa.Column("size", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("done_at", UTCDateTime),
        sa.Column("claimed_by", sa.String(32)),
        sa.Column("claimed_until", UTCDateTime),
        sa.Column("kept_by", sa.String(128)),
    )
    op.create_index("ix_archives_due", "archives", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_archives_due", "archives")
    op.drop_table("archives")
