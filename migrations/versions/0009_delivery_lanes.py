"""a lane per notifier URL, claimed as a whole; the digest that carried a delivery

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("digest_id", sa.String(32)))
    op.create_index(
        "ix_deliveries_lane", "deliveries", ["notifier", "target", "state", "next_attempt_at"]
    )
    op.create_table(
        "lanes",
        sa.Column("notifier", sa.String(64), primary_key=True),
        sa.Column("target", sa.String(32), primary_key=True),
        sa.Column("claimed_by", sa.String(32)),
        sa.Column("claimed_until", UTCDateTime),
    )


def downgrade() -> None:
    op.drop_table("lanes")
    op.drop_index("ix_deliveries_lane", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("digest_id")
