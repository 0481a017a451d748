"""a delivery per notification URL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Deliveries made before this revision went to every URL of their notifier at once;
    # they keep the target "*", which the dispatcher sends to all of the notifier's URLs.
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("target", sa.String(32), nullable=False, server_default="*"))
        batch.add_column(sa.Column("url", sa.Text))
        batch.drop_constraint("uq_deliveries_event_notifier", type_="unique")
        batch.create_unique_constraint(
            "uq_deliveries_event_notifier_target", ["event_id", "notifier", "target"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_event_notifier_target", type_="unique")
        batch.create_unique_constraint("uq_deliveries_event_notifier", ["event_id", "notifier"])
        batch.drop_column("url")
        batch.drop_column("target")
