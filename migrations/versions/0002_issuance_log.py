"""Issuance log for rate-limit budgets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issuance_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("domain", sa.String(255), nullable=True),
        sa.Column("names_key", sa.String(64), nullable=True),
        sa.Column("certificate", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_issuance_log_issuer_kind_at", "issuance_log", ["issuer", "kind", "at"])


def downgrade() -> None:
    op.drop_table("issuance_log")
