"""Initial inventory: certificates, versions, events, leases, accounts.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("retired_at", sa.DateTime, nullable=True),
        sa.Column("current_version_id", sa.Integer, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("certificate", sa.String(64), sa.ForeignKey("certificates.name"), nullable=False),
        sa.Column("renewal_id", sa.String(32), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("not_before", sa.DateTime, nullable=False),
        sa.Column("not_after", sa.DateTime, nullable=False),
        sa.Column("renew_at", sa.DateTime, nullable=True),
        sa.Column("ari_cert_id", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failed_step", sa.String(16), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("generation", sa.String(128), nullable=True),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("chain_pem", sa.Text, nullable=False),
        sa.Column("key_enc", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_versions_certificate_created", "versions", ["certificate", "created_at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("certificate", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(48), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("renewal_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_events_certificate_at", "events", ["certificate", "at"])
    op.create_table(
        "leases",
        sa.Column("certificate", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("token", sa.Integer, nullable=False),
        sa.Column("renewal_id", sa.String(32), nullable=True),
        sa.Column("acquired_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("directory", sa.String(512), nullable=False),
        sa.Column("uri", sa.String(512), nullable=True),
        sa.Column("key_enc", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("issuer", "directory", name="uq_accounts_issuer_directory"),
    )


def downgrade() -> None:
    for table in ("accounts", "leases", "events", "versions", "certificates"):
        op.drop_table(table)
