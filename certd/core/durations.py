"""Duration strings (``90s``, ``5m``, ``12h``, ``30d``) used throughout the config, and RFC 3339 times.

One parser and one formatter, so a value printed by certd can always be
pasted back into the config. Durations are capped at ``MAX_DURATION`` (100
years): longer than anything certd schedules, and short enough that adding it
to or subtracting it from a certificate's dates never leaves ``datetime``'s
range, so a typo such as ``99999999999d`` is a config error, not a traceback.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["MAX_DURATION", "format_duration", "parse_duration", "rfc3339", "rfc3339_ms"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """Parse ``1d12h``-style strings; raise ``ValueError`` with a usable hint."""
    s = text.strip().lower()
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"invalid duration {text!r} (use e.g. 90s, 5m, 12h, 30d)")
    # Checked on the float, before timedelta() would raise OverflowError for a huge one.
    if total > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is too long (at most {format_duration(MAX_DURATION)}, 100 years)")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """Render as the shortest exact duration string (``1d12h``, ``90s``)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            n, seconds = divmod(seconds, size)
            parts.append(f"{n}{unit}")
    return sign + "".join(parts)


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, second precision; ``None`` stays ``None``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def rfc3339_ms(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds (history: steps a few ms apart must stay in order to the eye)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
