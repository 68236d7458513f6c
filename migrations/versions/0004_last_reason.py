"""Why the last attempt failed, as a machine reason (``BudgetExhausted``, ``rateLimited``, ...).

A config reload clears the backoff of every failing certificate except those
the CA itself rate-limited; telling the two apart needs the reason, not the
message.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("last_reason", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("last_reason")
