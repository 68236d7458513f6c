"""The value types every config table uses: durations, paths resolved against the config's directory, HOST:PORT.

Kept apart so the table modules (``config_issuers``, ``config_deploy``,
``config``) share one definition of each, and an operator gets the same
message for a bad duration wherever it appears.
"""

from __future__ import annotations

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


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8787)")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
HostPort = Annotated[str, AfterValidator(_host_port)]


class Model(BaseModel):
    """Every table: unknown keys are errors (typos must not pass silently), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


