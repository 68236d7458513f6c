"""Engine, sessions and schema upgrades for the inventory.

SQLite is the embedded default for one host: WAL so readers never block the
writer (with ``synchronous=NORMAL``: crash-consistent, see the pragma), a
busy timeout so writers queue instead of failing, and every write
transaction started with ``BEGIN IMMEDIATE`` so a read-then-write cannot hit
SQLite's lock-upgrade deadlock (SQLITE_BUSY without waiting). Read-only
sessions (``sessions()``, as opposed to ``sessions.begin()``) start with a
plain deferred ``BEGIN``: in WAL they read a snapshot beside the writer
instead of queueing for the write lock, which with dozens of renewal workers
was where most of their time went. PostgreSQL is
for several replicas; there Alembic upgrades take an advisory lock so two
replicas starting together migrate once.

Faults an operator can cause (a damaged or read-only file, a lock held past
``busy_timeout``, a server that refuses us, a schema from a newer certd, a
database that holds another program's tables or certd's without their
Alembic revision) leave here as one-line ``InventoryError``s naming the
database, before anything is migrated into it; see
``db_faults.py``, which also keeps a new SQLite database and its ``-wal`` and
``-shm`` at 0600.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from certd.config.types import check_database_url, sqlite_file
from certd.errors import ConfigError, InventoryError
from certd.inventory.faults import NEWER_SCHEMA, inventory_error, prepare_sqlite_file, safe_url
from certd.inventory.models import Base

__all__ = ["Sessions", "create_db_engine", "migrations_dir", "schema_is_current", "session_factory", "upgrade"]


def migrations_dir() -> Path:
    """``migrations/`` next to the package in a checkout, or packaged inside a wheel."""
    package = Path(__file__).resolve().parent.parent  # certd/
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise InventoryError("cannot find certd's migrations directory", retryable=False)


def create_db_engine(url: str, *, busy_timeout: timedelta = timedelta(seconds=30)) -> Engine:
    """An engine configured for certd's concurrency rules (see module docstring).

    For a SQLite file this already checks that the file can be written and
    creates it (0600) when missing: ``InventoryError`` otherwise.
    """
    try:
        parsed = check_database_url(url)
    except ValueError as exc:  # load_config refuses these first; this is for a URL given some other way
        raise ConfigError(f"database.url: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        db = sqlite_file(parsed)
        if db is not None:
            if not db.parent.is_dir():
                raise ConfigError(f"database.url: directory {db.parent} does not exist")
            prepare_sqlite_file(url, db)
        engine = _sqlite_engine(url, db, busy_timeout)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout.total_seconds() * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            # WAL + NORMAL never corrupts and loses nothing on a process crash; a power loss may roll
            # back the last commits, which fencing and idempotent renewals make harmless (an extra renewal).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        # A server that drops our packets must fail the command, not hang it for the kernel's TCP timeout.
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=32, connect_args=connect_args)
    raise ConfigError(f"database.url: unsupported database {parsed.get_backend_name()!r} (sqlite or postgresql)")


_READ_ONLY = "certd_read_only"


def _sqlite_engine(url: str, db: Path | None, busy_timeout: timedelta) -> Engine:
    """A file database is opened ``mode=rw`` and kept to the file it was opened on (``_Identity``)."""
    if db is None:
        return create_engine(url, pool_size=8, max_overflow=32,
                             connect_args={"timeout": busy_timeout.total_seconds(), "check_same_thread": False})
    identity = _Identity(url, db)
    uri = f"file:{quote(str(db))}?mode=rw"

    def connect() -> sqlite3.Connection:
        identity.check()  # before connecting: a deleted file is never created again, empty, by a new connection
        return sqlite3.connect(uri, uri=True, timeout=busy_timeout.total_seconds(), check_same_thread=False)

    engine = create_engine(url, pool_size=8, max_overflow=32, creator=connect)
    event.listen(engine, "checkout", lambda *_: identity.check())
    return engine


class _Identity:
    """Is ``db`` still the file this engine opened? Checked at every connection taken from the pool.

    A SQLite file deleted (or replaced) under a running daemon goes on working through the connections
    already open — on the unlinked inode, so renewals recorded nowhere anyone reads, and files published
    that the inventory never knew — while a new connection would silently create an empty database. Here
    both end: taking a connection fails with one clear error (``/healthz`` fails with it too), and the
    fence before each publish takes one, so nothing is published unrecorded. A stat costs microseconds.
    """

    def __init__(self, url: str, db: Path) -> None:
        self.url, self.db = url, db
        st = db.stat()
        self.identity = (st.st_dev, st.st_ino)

    def check(self) -> None:
        where = f"database {safe_url(self.url)}: {self.db}"
        try:
            now = self.db.stat()
        except FileNotFoundError:
            raise InventoryError(f"{where} was deleted while certd ran: nothing more is recorded or published; "
                                 "restore it, or restart certd to begin an empty inventory",
                                 reason="InventoryGone", retryable=False) from None
        except OSError as exc:
            raise InventoryError(f"{where} cannot be checked: {exc.strerror}") from None
        if (now.st_dev, now.st_ino) != self.identity:
            raise InventoryError(f"{where} was replaced by another file while certd ran: nothing more is recorded "
                                 "or published until certd is restarted on it", reason="InventoryGone",
                                 retryable=False)


class Sessions(sessionmaker[Session]):
    """``sessions()`` for reads (deferred ``BEGIN`` on SQLite), ``sessions.begin()`` for writes (``IMMEDIATE``).

    Every caller already used exactly this split; binding the two to differently
    configured engines makes it cost nothing at the call sites. A read session
    must not write: on SQLite its deferred transaction could not upgrade its lock.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)
        self._write_bind = engine

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with self(bind=self._write_bind) as session, session.begin():
            yield session


def session_factory(engine: Engine) -> Sessions:
    return Sessions(engine)


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def _read_only(engine: Engine) -> Engine:
    """The engine with SQLite's deferred ``BEGIN``: looking at the schema must not queue for the write lock."""
    return engine.execution_options(**{_READ_ONLY: True})


# Every table any certd revision creates (migrations only add tables; their downgrades drop them), and the
# oldest ones, which a database from a newer certd still holds: how it differs from another Alembic project's.
_CERTD_TABLES = frozenset(Base.metadata.tables)
_FIRST_TABLES = frozenset({"certificates", "versions", "events", "leases", "accounts"})
_VERSION_TABLE = "alembic_version"


def _not_ours(url: URL, tables: set[str], heads: set[str], unknown: list[str]) -> str | None:
    """Why this database is not certd's to migrate or read (``None``: empty, or certd's at a known revision)."""
    foreign = sorted(tables - _CERTD_TABLES - {_VERSION_TABLE})
    if unknown:  # a revision certd does not know, and not a newer certd's (it would hold certd's first tables)
        shown = foreign or [_VERSION_TABLE]
    elif heads or not (tables - {_VERSION_TABLE}):
        return None
    elif foreign:
        shown = foreign
    else:
        state = "is empty" if _VERSION_TABLE in tables else "is missing"
        return (f"database {safe_url(url)}: certd's tables exist but {_VERSION_TABLE} {state}: their schema "
                "revision is unknown (an interrupted or hand-made setup); restore the database from a backup or "
                "point database.url at an empty database")
    listed = ", ".join(shown[:5]) + (", …" if len(shown) > 5 else "")
    revision = f"; its {_VERSION_TABLE} is at {', '.join(unknown)}" if unknown else ""
    return (f"database {safe_url(url)}: holds tables that are not certd's ({listed}{revision}): point "
            "database.url at an empty or certd database")


def _current_heads(engine: Engine, script: ScriptDirectory) -> set[str]:
    """The database's Alembic heads; ``InventoryError`` for one this certd does not know (a newer certd's).

    Also refuses a database that is not certd's: tables of another program (without an Alembic
    revision of certd's), or certd's tables whose revision was lost. Migrating into it would mix
    certd's schema into someone else's database.
    """
    with _read_only(engine).connect() as conn:
        tables = set(inspect(conn).get_table_names())
        heads = set(MigrationContext.configure(conn).get_current_heads())
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = sorted(heads - known)
    if unknown and tables >= _FIRST_TABLES:
        raise InventoryError(f"database {safe_url(engine.url)}: {NEWER_SCHEMA.format(revision=', '.join(unknown))}",
                             reason="SchemaTooNew", retryable=False)
    if (why := _not_ours(engine.url, tables, heads, unknown)) is not None:
        raise InventoryError(why, reason="NotCertdsDatabase", retryable=False)
    return heads


_ALEMBIC_LOCK = threading.Lock()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent, safe to run concurrently).

    Raises ``InventoryError`` (one line, naming the database) when it cannot
    be reached or written, or when its schema is newer than this certd's.
    """
    cfg = _alembic_config(engine)
    try:
        with _ALEMBIC_LOCK:  # Alembic's op/context proxies are process globals: one migration per process at a time
            _current_heads(engine, ScriptDirectory.from_config(cfg))
            command.upgrade(cfg, "head")
    except CommandError as exc:  # another replica of a newer certd migrated between our look and Alembic's
        revision = str(exc).rpartition("identified by ")[2].strip("'\" ")
        cause = NEWER_SCHEMA.format(revision=revision) if "Can't locate revision" in str(exc) else str(exc)
        raise InventoryError(f"database {safe_url(engine.url)}: {cause}", retryable=False) from exc
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise inventory_error(engine.url, exc) from exc


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest revision; ``InventoryError`` when unreadable or newer."""
    script = ScriptDirectory.from_config(_alembic_config(engine))
    try:
        heads = _current_heads(engine, script)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise inventory_error(engine.url, exc) from exc
    return heads == set(script.get_heads())
