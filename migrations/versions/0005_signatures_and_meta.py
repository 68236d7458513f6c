"""Used API signatures (replay protection across restarts and replicas) and inventory metadata.

``used_signatures`` remembers each accepted signed request for the signature
window, so a replay is refused by every replica, also after a restart.
``meta`` holds small facts about the inventory itself, e.g. the check value
of the key that seals private keys, so a wrong ``key_file`` is refused at
start instead of at install time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_signatures",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_used_signatures_expires_at", "used_signatures", ["expires_at"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("used_signatures")
