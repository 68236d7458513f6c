"""What monitoring reads: ``certd check`` and ``GET /readyz``.

Both answer "does a person need to act?" for the whole estate, from the same
per-certificate status as ``list`` (``certd/status.py``), so a Nagios check,
a load balancer's readiness probe and the table an operator reads cannot
disagree. Nothing here renews, contacts a CA or writes: ``open_inventory``
even refuses to migrate or create a database, because a monitor that
silently made an empty inventory would report "ok" for certificates nobody
is renewing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from certd.config.model import Config
from certd.config.types import sqlite_file
from certd.core.durations import format_duration, rfc3339
from certd.core.status import Assessment, Severity, Status, assess
from certd.engine.app import App
from certd.errors import InventoryError
from certd.inventory.db import schema_is_current
from certd.inventory.models import Certificate, Version
from certd.scrub import public_message

__all__ = ["check_doc", "check_summary", "open_inventory", "readyz_doc"]


def open_inventory(config: Config) -> App:
    """The inventory exactly as it is: no migration, no config sync, no new SQLite file.

    Raises ``InventoryError`` when there is no inventory or its schema is not the newest
    (``certd db upgrade`` fixes both), ``ConfigError`` for an unusable URL.
    """
    path = sqlite_file(config.database.url)  # an unusable URL: create_db_engine names the problem
    if path is not None and not path.exists():
        raise InventoryError(f"no inventory at {path}: run `certd db upgrade` or `certd run` first",
                             retryable=False)
    app = App.open(config, migrate=False, sync=False)
    try:
        if not schema_is_current(app.engine):
            raise InventoryError("the inventory's schema is not the newest: run `certd db upgrade`", retryable=False)
    except BaseException:
        app.close()
        raise
    return app


def _configured(app: App, now: datetime) -> list[tuple[str, Version | None, Certificate | None, Assessment]]:
    """Every certificate the config asks for, assessed at one ``now`` (retired ones are nobody's concern)."""
    inv = app.inventory
    rows = {r.name: r for r in inv.certificates()}
    versions = inv.current_versions()
    return [(n, versions.get(n), rows.get(n), assess(rows.get(n), versions.get(n), now))
            for n in app.config.certificates]


def check_doc(app: App, *, warn_within: timedelta | None = None) -> dict[str, Any]:
    """``certd check --json``: the worst severity, one entry per configured certificate, and counts.

    ``warn_within`` raises an otherwise healthy certificate to ``warning`` when its ``not_after`` is that
    close (``expires_soon``); its ``status`` stays what ``list`` shows.
    """
    now = app.clock.now()
    entries: list[dict[str, Any]] = []
    for name, version, row, found in _configured(app, now):
        soon = (warn_within is not None and version is not None and found.severity is Severity.OK
                and version.not_after - now <= warn_within)
        entries.append({
            "name": name,
            "status": found.status.value,
            "severity": (Severity.WARNING if soon else found.severity).value,
            "expires_soon": soon,
            "message": found.message,
            "not_after": rfc3339(version.not_after) if version else None,
            "renew_at": rfc3339(version.renew_at) if version else None,
            "hard_deadline": rfc3339(found.hard_deadline),
            "last_error": row.last_error if row else None,
        })
    worst = max((Severity(e["severity"]) for e in entries), key=lambda s: s.rank, default=Severity.OK)
    by_status: dict[str, int] = {}
    for e in entries:
        by_status[e["status"]] = by_status.get(e["status"], 0) + 1
    return {
        "status": worst.value,
        "certificates": entries,
        "counts": {s.value: sum(1 for e in entries if e["severity"] == s.value) for s in Severity},
        "by_status": by_status,
        "warn_within": format_duration(warn_within) if warn_within is not None else None,
        "checked_at": rfc3339(now),
    }


# The order problems are named in ``check``'s summary line: worst first.
_SUMMARY_ORDER = (Status.EXPIRED, Status.CRITICAL, Status.REVOKED, Status.FAILING, Status.EXPIRING)
_MAX_NAMES = 5


def _named(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES]) + (f", +{len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")
    return f"{len(names)} {label} ({shown})"


def check_summary(doc: dict[str, Any]) -> str:
    """One Nagios plugin line: ``CERTD <STATUS> - <problems, with names> | ok=N warning=N critical=N``."""
    entries: list[dict[str, Any]] = doc["certificates"]
    parts = []
    for status in _SUMMARY_ORDER:
        names = [e["name"] for e in entries if e["status"] == status.value]
        if names:
            parts.append(_named(status.value, names))
    soon = [e["name"] for e in entries if e["expires_soon"]]
    if soon:
        parts.append(_named(f"within {doc['warn_within']} of expiry", soon))
    if not parts:
        ok = sum(1 for e in entries if e["severity"] == Severity.OK.value)
        parts.append(f"{ok} certificate{'s' if ok != 1 else ''} ok" if entries else "no certificates configured")
        pending = [e["name"] for e in entries if e["status"] == Status.PENDING.value]
        if pending:
            parts.append(_named("pending", pending))
    counts = doc["counts"]
    perf = " ".join(f"{s.value}={counts[s.value]}" for s in Severity)
    return f"CERTD {doc['status'].upper()} - {', '.join(parts)} | {perf}"


def readyz_doc(app: App) -> dict[str, Any]:
    """``GET /readyz``: ``degraded`` naming every expired or critical certificate, else ``ok``.

    Unauthenticated, so each entry carries only what an outage page needs: no keys, and ``last_error``
    without what a hook said (``scrub.public_message``).
    """
    check = check_doc(app)
    bad = [{"name": e["name"], "status": e["status"], "not_after": e["not_after"],
            "last_error": public_message(e["last_error"])}
           for e in check["certificates"] if e["severity"] == Severity.CRITICAL.value]
    # Failing or expiring with time left: not a reason to pull the instance, but named so an alert can say so.
    warnings = [{"name": e["name"], "status": e["status"], "not_after": e["not_after"]}
                for e in check["certificates"] if e["severity"] == Severity.WARNING.value]
    return {"status": "degraded" if bad else "ok", "certificates": bad, "warnings": warnings,
            "counts": check["counts"], "checked_at": check["checked_at"]}
