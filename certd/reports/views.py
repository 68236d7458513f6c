"""Read-only documents shared by the CLI's ``--json`` and the HTTP API.

One function per document, so ``certd list --json`` and
``GET /v1/certificates`` can never disagree about a field. Shapes follow
the design's public interface; keys may be added, never renamed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from certd.core.durations import rfc3339, rfc3339_ms
from certd.core.status import assess
from certd.engine.app import App
from certd.inventory.models import Certificate, Version
from certd.scrub import public_message

__all__ = ["certificate_doc", "history_doc", "list_doc", "plan_doc"]


def certificate_doc(
    app: App, name: str, row: Certificate | None, version: Version | None, *,
    now: datetime | None = None, public: bool = False,
) -> dict[str, Any]:
    """One entry of ``list``; ``status`` and ``severity`` come from ``certd/status.py``, as everywhere."""
    cfg = app.config.certificates.get(name)
    names = list(cfg.names) if cfg else (json.loads(row.names) if row else [])
    found = assess(row, version, now or app.clock.now())
    return {
        "name": name,
        "issuer": cfg.issuer if cfg else (row.issuer if row else None),
        "names": names,
        "status": found.status.value,
        "severity": found.severity.value,
        "status_message": found.message,
        "serial": version.serial if version else None,
        "not_before": rfc3339(version.not_before) if version else None,
        "not_after": rfc3339(version.not_after) if version else None,
        "renew_at": rfc3339(version.renew_at) if version else None,
        "hard_deadline": rfc3339(found.hard_deadline),
        "last_error": (public_message(row.last_error) if public else row.last_error) if row else None,
        "failed_step": row.failed_step if row else None,
        "failures": row.failures if row else 0,
        "next_attempt_at": rfc3339(row.next_attempt_at) if row else None,
    }


def list_doc(app: App, *, public: bool = False) -> dict[str, Any]:
    """Every certificate in the config, then retired ones still in the inventory (``public``: for readers
    without credentials, so no hook output)."""
    inv = app.inventory
    rows = {r.name: r for r in inv.certificates()}
    versions = inv.current_versions()
    names = list(app.config.certificates) + sorted(n for n in rows if n not in app.config.certificates)
    now = app.clock.now()
    return {"certificates": [certificate_doc(app, n, rows.get(n), versions.get(n), now=now, public=public)
                             for n in names]}


def plan_doc(app: App) -> dict[str, Any]:
    """What would renew, when and why (the same verdict ``renew`` acts on)."""
    out = []
    for name, verdict in app.pipeline.verdicts().items():
        out.append(
            {
                "name": name,
                "due": verdict.due,
                "renew_at": rfc3339(verdict.at) if verdict.at else rfc3339(app.clock.now()),
                "reason": str(verdict.reason),
                "message": verdict.message,
            }
        )
    return {"plan": out}


def history_doc(app: App, name: str) -> dict[str, Any]:
    """Versions and events, newest first."""
    inv = app.inventory
    return {
        "name": name,
        "versions": [
            {
                "serial": v.serial,
                "state": v.state,
                "not_before": rfc3339(v.not_before),
                "not_after": rfc3339(v.not_after),
                "created_at": rfc3339_ms(v.created_at),
                "renew_at": rfc3339(v.renew_at),
                "failed_step": v.failed_step,
                "error": v.error,
                "renewal_id": v.renewal_id,
            }
            for v in inv.versions(name)
        ],
        "events": [
            {
                "at": rfc3339_ms(e.at),
                "kind": e.kind,
                "level": e.level,
                "step": e.step,
                "message": e.message,
                "renewal_id": e.renewal_id,
            }
            for e in inv.events(name)
        ],
    }
