"""a job is its source, id, instance and params: the id the upstream knows, beside the key
a job is stored under when two configured jobs share an id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the same as the key (every row written before: ids were unique then).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("remote_id", sa.Text, nullable=True))
    op.create_index("ix_jobs_remote", "jobs", ["remote_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_remote", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("remote_id")
