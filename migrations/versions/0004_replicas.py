"""several replicas: membership, versions for compare-and-set, delivery claims

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobherald.store import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("joined_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("jobs", sa.Integer, nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("source_health") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(32)))
        batch.add_column(sa.Column("claimed_at", UTCDateTime))
        batch.add_column(sa.Column("claimed_until", UTCDateTime))
        batch.add_column(sa.Column("sent_by", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_by")
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
    with op.batch_alter_table("source_health") as batch:
        batch.drop_column("version")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("version")
    op.drop_table("replicas")
