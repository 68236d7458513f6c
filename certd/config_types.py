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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from certd.durations import format_duration, parse_duration

__all__ = ["ConfigPath", "Duration", "HostPort", "Model", "PositiveDuration"]


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


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
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


def _database_url(url: str) -> str:
    """Checked with the config, so check-config refuses it; the message never echoes the URL (a password)."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ValueError("not a SQLAlchemy URL (e.g. sqlite:///var/lib/certd/certd.db or "
                         "postgresql+psycopg://certd@db/certd)") from None
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r} (sqlite or postgresql)")
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


