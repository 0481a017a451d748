"""texts an upstream or a person chooses have no length limit

A job's name and instance id come from a config or the command line; its status, type
and archive id from the upstream. As VARCHAR(n), a longer one failed every write on
PostgreSQL (what jobherald keeps is bounded by its own limits instead). SQLite does not
enforce VARCHAR lengths: its tables are left as they are.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = {
    "jobs": {"name": 256, "instance_id": 128, "raw_status": 64, "type": 64, "archive_id": 256},
    "transitions": {"raw_status": 64},
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, columns in COLUMNS.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.Text, existing_type=sa.String(length))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, columns in COLUMNS.items():
        for column, length in columns.items():
            op.alter_column(
                table,
                column,
                type_=sa.String(length),
                existing_type=sa.Text,
                postgresql_using=f"left({column}, {length})",
            )
