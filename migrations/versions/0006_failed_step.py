"""The step the last failure happened in, as a column (``failed_step``) rather than a prefix of ``last_error``.

A deploy that succeeds clears only failures of the steps it re-ran; that
used to be read back from the text of ``last_error`` (``"deploy: ..."``).
Existing rows are backfilled from that prefix when it names a known step.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The step names of certd 0.1 (certd.core.kinds.Step), frozen here: a migration must not change with the code.
_STEPS = ("plan", "key", "issue", "check", "record", "trust", "publish", "deploy", "verify", "rollback", "revoke",
          "import", "install", "lease", "internal")


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("failed_step", sa.String(16), nullable=True))
    certificates = sa.table("certificates", sa.column("name", sa.String), sa.column("last_error", sa.Text),
                            sa.column("failed_step", sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(certificates.c.name, certificates.c.last_error)
                        .where(certificates.c.last_error.is_not(None))).all()
    for name, last_error in rows:
        step = last_error.partition(":")[0]
        if step in _STEPS:
            bind.execute(certificates.update().where(certificates.c.name == name).values(failed_step=step))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("failed_step")
