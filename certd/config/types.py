"""The value types every config table uses: durations, paths resolved against the config's directory, HOST:PORT.

Kept apart so the table modules (``config_issuers``, ``config_deploy``,
``config``) share one definition of each, and an operator gets the same
message for a bad duration wherever it appears.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from certd.core.durations import format_duration, parse_duration

__all__ = [
    "ConfigPath",
    "Duration",
    "HostPort",
    "Model",
    "PositiveDuration",
    "check_database_url",
    "path_too_long",
    "sqlite_file",
]


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("durations are strings such as '90s', '5m', '12h' or '30d'")
    return parse_duration(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0s, got {format_duration(value)}")
    return value


_NAME_MAX, _PATH_MAX = 255, 4095  # Linux: bytes in one component, and in a whole path


def path_too_long(value: Path | str) -> str | None:
    """Why the kernel would refuse ``value`` (ENAMETOOLONG), said before any call meets it."""
    encoded = str(value).encode("utf-8", "surrogateescape")
    if len(encoded) > _PATH_MAX:
        return f"the path is {len(encoded)} bytes long; at most {_PATH_MAX}"
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > _NAME_MAX:
        return f"one of its names is {len(longest)} bytes long; at most {_NAME_MAX}"
    return None


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    problem = path_too_long(value)
    if problem is not None:  # every later stat() would raise ENAMETOOLONG, as a traceback
        raise ValueError(problem)
    return value


def valid_port(port: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²", which ``int`` then refuses with a confusing error."""
    return port.isascii() and port.isdigit() and 0 < int(port) < 65536


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not valid_port(port):
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:8787)")
    return value


def _runtime_socket(value: str) -> str:
    """HAProxy's own address forms; a TCP port out of range would otherwise wrap or fail only at deploy time."""
    where = value.removeprefix("unix@")
    if not where.strip():
        raise ValueError("is empty: give the admin socket's path or HOST:PORT")
    tcp = where.startswith(("ipv4@", "ipv6@")) or ("/" not in where and re.fullmatch(r".+:\w+", where))
    if tcp:
        host, _, port = where.removeprefix("ipv4@").removeprefix("ipv6@").rpartition(":")
        if not host or not valid_port(port):
            raise ValueError(f"{value!r} is neither a socket path nor HOST:PORT with a port from 1 to 65535")
    return value


_SQLITE_FORMS = ("sqlite:///relative/path (against the config file's directory) or "
                 "sqlite:////absolute/path")


def check_database_url(url: str) -> URL:
    """The parsed URL, or ``ValueError`` saying why it cannot hold certd's inventory.

    Never echoes the URL (it may carry a password). Shared by the config
    validator (so check-config refuses what every command would) and
    ``create_db_engine`` (for callers that build an engine from a bare URL).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("not a SQLAlchemy URL (e.g. sqlite:////var/lib/certd/certd.db or "
                         "postgresql+psycopg://certd@db/certd)") from None
    except ValueError:  # make_url's int() of a port that is not a number
        raise ValueError("the port is not a number from 1 to 65535") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r} (sqlite or postgresql)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"port {parsed.port} is not from 1 to 65535")
    if backend == "sqlite":
        if parsed.host or parsed.username or parsed.password or parsed.port is not None:
            raise ValueError(f"a SQLite URL names a file, not a host: {_SQLITE_FORMS}")
        database = parsed.database or ""
        in_memory = (database in ("", ":memory:") or database.startswith("file::memory:")
                     or parsed.query.get("mode") == "memory")
        if in_memory:
            raise ValueError("an in-memory SQLite database cannot hold the inventory from one command to the "
                             f"next: name a file, {_SQLITE_FORMS}")
        too_long = path_too_long(database)
        if too_long is not None:
            raise ValueError(f"the SQLite file: {too_long}")
    return parsed


def sqlite_file(url: str | URL) -> Path | None:
    """The file a SQLite URL names; ``None`` for another database, an in-memory one, a ``file:`` URI or junk.

    The one reading of SQLite URLs: the loader resolves a relative file against the config's directory,
    check-config looks at the file's mode, the engine prepares it, ``certd check`` refuses to create it.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _database_url(url: str) -> str:
    """Checked with the config, so check-config refuses it; the message never echoes the URL (a password)."""
    check_database_url(url)
    return url


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
HostPort = Annotated[str, AfterValidator(_host_port)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
RuntimeSocket = Annotated[str, AfterValidator(_runtime_socket)]  # unix path, HOST:PORT, ipv4@/ipv6@HOST:PORT


class Model(BaseModel):
    """Every table: unknown keys are errors (typos must not pass silently), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


