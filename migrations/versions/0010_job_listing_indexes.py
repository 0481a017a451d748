"""indexes for listings that filter by state or source and sort by name

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_name", "jobs", ["state", "name", "id"])
    op.create_index("ix_jobs_source_name", "jobs", ["source", "name", "id"])
    op.create_index("ix_jobs_name", "jobs", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_name", "jobs")
    op.drop_index("ix_jobs_source_name", "jobs")
    op.drop_index("ix_jobs_state_name", "jobs")
