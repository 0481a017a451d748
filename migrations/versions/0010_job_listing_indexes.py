"""indexes for listings that filter by state or source and sort by name, and for
reading every job in the order it was registered, a chunk at a time

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
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_created", "jobs")
    op.drop_index("ix_jobs_name", "jobs")
    op.drop_index("ix_jobs_source_name", "jobs")
    op.drop_index("ix_jobs_state_name", "jobs")
