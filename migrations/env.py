"""Alembic environment: certd passes its own engine in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from certd.inventory.models import Base

config = context.config
target_metadata = Base.metadata
_LOCK_ID = 0x63657274  # "cert": serialises concurrent upgrades on PostgreSQL


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("certd migrations run online only (certd db upgrade)")
run_migrations_online()
