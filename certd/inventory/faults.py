"""Database faults an operator can cause, turned into one line each before SQLite or a driver sees them.

Every fault here ends a command with exit status 3 and one line naming the
database (its URL, password hidden, also one given as ``?password=``) and
the cause, never a traceback. Two jobs:

- ``prepare_sqlite_file`` runs before SQLite opens a file. SQLite gives its
  ``-wal`` and ``-shm`` files the exact permission bits of the database
  file, and creates them even for a connection that cannot write: a 0444
  database opened once leaves a 0444 ``-shm`` behind, owned by whoever ran
  that process, which keeps the database unusable after the operator fixed
  the database file's mode. So certd refuses a database it cannot write (the
  file, its directory, a ``-wal``/``-shm`` left behind) *before* opening it,
  and creates a new database file itself, 0600, so its ``-wal`` and ``-shm``
  are 0600 too whatever the umask.
- ``inventory_error`` turns a driver's error (``sqlite3``, psycopg, both as
  wrapped by SQLAlchemy) into an ``InventoryError`` with one line: lines
  joined, SQLAlchemy's "Background on this error" link dropped, the password
  scrubbed even if a driver echoed it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from certd.errors import InventoryError
from certd.places import read_only_mount

__all__ = ["NEWER_SCHEMA", "describe", "inventory_error", "prepare_sqlite_file", "safe_url"]

# Query parameters that carry credentials (libpq: password, sslpassword; others by their names).
_SECRET_PARAMS = ("password", "secret", "token", "passphrase")

NEWER_SCHEMA = "the database was created by a newer certd (revision {revision}); upgrade certd"


def _secrets(url: URL) -> list[str]:
    values = [url.password] if url.password else []
    for key, value in url.query.items():
        if any(word in key.lower() for word in _SECRET_PARAMS):
            values += [value] if isinstance(value, str) else list(value)
    return [str(v) for v in values if v]


def safe_url(url: str | URL) -> str:
    """The URL to show a person: password and credential query parameters as ``***``."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparsable URL>"
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    params = []
    for key, value in parsed.query.items():
        secret = any(word in key.lower() for word in _SECRET_PARAMS)
        for item in [value] if isinstance(value, str) else value:
            params.append(f"{quote(key)}={'***' if secret else quote(item, safe='/:,')}")
    return shown + ("?" + "&".join(params) if params else "")


def _scrub(text: str, url: URL | None) -> str:
    for secret in _secrets(url) if url is not None else []:
        text = text.replace(secret, "***")
    return text


def describe(exc: BaseException) -> str:
    """The cause in one line: the driver's own words, with a hint for the faults operators cause."""
    orig = getattr(exc, "orig", None) or exc
    lines = [" ".join(line.split()) for line in str(orig).splitlines()]
    text = "; ".join(line for line in lines if line and not line.startswith("(Background on this error"))
    lower = text.lower()
    if "file is not a database" in lower:
        return "file is not a database (not an SQLite file, or damaged): restore it from a backup"
    if "database is locked" in lower:
        return "database is locked: another process held it longer than [database] busy_timeout"
    if "readonly database" in lower:
        return (f"{text}: this process cannot write the database file, its directory, or its -wal/-shm files; "
                "fix their owner or mode")
    if "disk image is malformed" in lower:
        return f"{text}: the database is damaged; restore it from a backup"
    return text or type(orig).__name__


def inventory_error(url: str | URL, exc: BaseException) -> InventoryError:
    """``InventoryError("database <url>: <cause>")`` for a driver or SQLAlchemy error."""
    try:
        parsed: URL | None = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        parsed = None
    return InventoryError(f"database {safe_url(url)}: {_scrub(describe(exc), parsed)}")


def _who(path: Path) -> str:
    """Mode and owner of ``path`` against the uid this process runs as, for the error line."""
    try:
        st = path.stat()
    except OSError:
        return f"certd runs as uid {os.geteuid()}"
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}; certd runs as uid {os.geteuid()}"


def _writable(path: Path) -> bool:
    mode = os.R_OK | os.W_OK | (os.X_OK if path.is_dir() else 0)
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def prepare_sqlite_file(url: str, path: Path) -> None:
    """Refuse a SQLite database this process cannot write; create a missing one 0600.

    Raises ``InventoryError`` naming the database and what is not writable.
    The directory must exist (``create_db_engine`` reports that as a config
    error) and be writable: SQLite creates ``-wal`` and ``-shm`` beside the file.
    """
    directory = path.parent

    def refuse(cause: str) -> InventoryError:
        return InventoryError(f"database {safe_url(url)}: {cause}", reason="InventoryUnwritable", retryable=False)

    if read_only_mount(directory):  # not a mode problem: no chmod fixes it
        raise refuse(f"{directory} is on a read-only file system: certd records leases and events in the "
                     "database; put it on a writable one (StateDirectory= under systemd)")
    if not _writable(directory):
        raise refuse(f"directory {directory} is not writable ({_who(directory)}): SQLite needs to create "
                     f"{path.name}-wal and {path.name}-shm beside the database")
    if not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
        except FileExistsError:
            pass  # another certd created it a moment ago
        except OSError as exc:
            raise refuse(f"cannot create {path}: {exc.strerror}") from exc
        return
    if not path.is_file():
        raise refuse(f"{path} is not a regular file")
    if not _writable(path):
        raise refuse(f"the database file is read-only for this process ({_who(path)}): certd records leases "
                     "and events in it; fix its owner or mode (chmod 0600)")
    stale = [side for side in (path.with_name(path.name + s) for s in ("-wal", "-shm"))
             if side.exists() and not _writable(side)]
    if stale:
        names = " and ".join(str(side) for side in stale)
        raise refuse(f"{names} {'are' if len(stale) > 1 else 'is'} not writable ({_who(stale[0])}), left behind by "
                     "a process that could not write the database; fix the owner or mode (chmod 0600 "
                     f"{' '.join(str(side) for side in stale)}) while no certd runs")
