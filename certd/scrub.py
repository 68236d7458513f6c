"""Keeping secrets and other people's words out of what certd stores and shows.

Two rules, applied where messages are written (``Recorder``) and read
(``views``), not in each module that might produce one:

* **Secrets certd holds** — the contents of every secret file the config
  names (API token, webhook secrets, TSIG and EAB keys, Vault credentials,
  the inventory key) and the values of hook ``env`` — are replaced by
  ``***`` in every event, ``last_error``, result and log line. A hook running
  under ``set -x``, or a webhook receiver echoing a header, would otherwise
  put them in the database and on the API.
* **What a hook or remote said** is marked with ``OUTPUT_MARK`` by the
  target that quotes it; reads without credentials show the message up to
  the mark only, so the unauthenticated API never shows a hook's output.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from certd.config.model import Config
from certd.config.secrets import SCRUBBED
from certd.inputs import read_file

__all__ = ["OUTPUT_MARK", "held_secrets", "public_message", "refreshed", "scrub"]

OUTPUT_MARK = " | output: "
_REDACTED = "***"
_MIN = 6  # shorter values would redact ordinary words
_MAX_FILE = 64 * 1024


def _file_values(path: Path) -> list[str]:
    try:
        text = read_file(path, _MAX_FILE).decode(errors="replace")
    except OSError:
        return []
    # The whole value, and each line of it (a TSIG key file holds the secret on one of its lines).
    values = [text.strip()]
    values += [m.group(1) for m in re.finditer(r'secret\s+"([^"]+)"', text)]
    return [v for v in values if len(v) >= _MIN]


def held_secrets(config: Config) -> tuple[str, ...]:
    """Every secret value the config points at, longest first (so a secret inside another is not half-kept)."""
    values: set[str] = set()
    models: list[object] = [config.database, config.daemon, *config.issuers.values(), *config.deploy.values()]
    for model in models:
        for key in SCRUBBED:
            path = getattr(model, key, None)
            if isinstance(path, Path):
                values.update(_file_values(path))
        env = getattr(model, "env", None)
        if isinstance(env, dict):
            values.update(v for v in env.values() if isinstance(v, str) and len(v) >= _MIN)
    return tuple(sorted(values, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, _REDACTED)
    return text


def public_message(text: str | None) -> str | None:
    """``text`` without what a hook or remote said: for reads without credentials."""
    if text is None or OUTPUT_MARK not in text:
        return text
    return text.split(OUTPUT_MARK, 1)[0] + " (its output: authenticated reads and `certd history`)"


def refreshed(read: Callable[[], tuple[str, ...]], every: float = 30.0) -> Callable[[], tuple[str, ...]]:
    """``read`` at most every ``every`` seconds: a token rotated under a running daemon is scrubbed soon after."""
    last: list[tuple[float, tuple[str, ...]]] = []
    lock = threading.Lock()

    def current() -> tuple[str, ...]:
        with lock:
            now = time.monotonic()
            if not last or now - last[0][0] > every:
                last[:] = [(now, read())]
            return last[0][1]

    return current
