"""Migration 0006 adds ``certificates.failed_step`` and fills it from the ``last_error`` prefix of older rows."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text

from certd.inventory.db import create_db_engine, migrations_dir, upgrade


def test_failed_step_is_backfilled_from_last_error(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.attributes["engine"] = engine
        command.upgrade(cfg, "0005")  # an inventory from before the column
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [("a", "deploy: deploy hook: command false exited 1"), ("b", "verify: handshake failed"),
                ("c", None), ("d", "something that names no step: x")]
        with engine.begin() as conn:
            for name, error in rows:
                conn.execute(text(
                    "INSERT INTO certificates (name, issuer, names, key_type, config_hash, created_at, updated_at, "
                    "failures, last_error) VALUES (:n, 'local', '[]', 'ecdsa-p256', '', :t, :t, :f, :e)"),
                    {"n": name, "t": now, "f": 0 if error is None else 1, "e": error})
        upgrade(engine)
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT name, failed_step FROM certificates")).all())  # type: ignore[arg-type]
        assert got == {"a": "deploy", "b": "verify", "c": None, "d": None}
    finally:
        engine.dispose()
