"""Logging to stderr: JSON lines when not on a terminal, plain text when on one.

Machines (journald, Kubernetes, log shippers) read the JSON form; people at
a terminal read the text form. Both carry the certificate name and the
renewal id when a record belongs to a renewal, so one renewal can be
followed through every step. Nothing here formats secrets: callers never
pass them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["RepeatFilter", "setup_logging"]

_EXTRA_KEYS = ("certificate", "renewal_id", "event", "step")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


# What varies between otherwise identical lines: times, durations, long numbers (ports, counts, pids).
# Short digit runs stay: they are part of names (c1, backend-2), and each name keeps its own lines.
_VARYING = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)?|\b\d+(?:\.\d+)?\s?(?:ms|s)\b|\d{4,}")


class RepeatFilter(logging.Filter):
    """Lines that repeat are written ``burst`` times per ``window`` seconds; the rest are counted and said once.

    A daemon whose database vanished fails every scan, and one whose descriptors ran out logged each
    refused accept: 442,883 lines (225 MB) in a minute, which fills the disk the renewals need. Lines are
    the same when their logger, level, certificate and text agree, times and long numbers aside,
    so each certificate keeps its own lines. The first such line of the next window says how many were dropped.
    """

    def __init__(self, burst: int = 10, window: float = 60.0, keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.keys, self.clock = burst, window, keys, clock
        self._seen: OrderedDict[tuple[str, int, str, str], list[float]] = OrderedDict()  # [start, passed, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(getattr(record, "certificate", "")),
               _VARYING.sub("#", record.getMessage())[:400])
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window:
                dropped = int(entry[2]) if entry is not None else 0
                self._seen[key] = [now, 1, 0]
                self._seen.move_to_end(key)
                while len(self._seen) > self.keys:
                    self._seen.popitem(last=False)
                if dropped:
                    record.msg, record.args = (f"{record.getMessage()} ({dropped} more lines like this in the "
                                               f"last {self.window:g}s were not written)"), None
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                return True
            entry[2] += 1
            return False


def setup_logging(level: str = "info", *, json_logs: bool | None = None) -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    if use_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "alembic", "apscheduler", "hvac", "acme"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
