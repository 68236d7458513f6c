"""The ``plan`` step's inputs, read from the inventory and the config, and the verdicts built from them.

``core/policy.py`` decides; this module only gathers what it decides on,
so ``certd plan``, the daemon's scans and ``renew`` (under its lease) ask
the same question the same way.
"""

from __future__ import annotations

import json

from certd.config.model import CertificateConfig
from certd.core.policy import Current, Verdict, Wanted, evaluate
from certd.engine.services import Services
from certd.inventory.models import Version, VersionState

__all__ = ["current", "verdict", "verdicts", "wanted"]


def current(version: Version | None) -> Current | None:
    """The inventory's current version, as the policy sees it."""
    if version is None:
        return None
    return Current(
        issuer=version.issuer, names=tuple(json.loads(version.names)), key_type=version.key_type,
        not_before=version.not_before, not_after=version.not_after,
        renew_at=version.renew_at or version.not_after, revoked=version.state == VersionState.REVOKED.value,
        failed=version.state == VersionState.FAILED.value,
    )


def wanted(cfg: CertificateConfig) -> Wanted:
    """The configured certificate, as the policy sees it."""
    return Wanted(issuer=cfg.issuer, names=tuple(cfg.names), key_type=str(cfg.key))


def verdict(s: Services, name: str, *, force: bool = False) -> Verdict:
    """What ``plan`` shows and what ``renew`` acts on, for one certificate."""
    row = s.inventory.certificate(name)
    return evaluate(wanted(s.cert_config(name)), current(s.inventory.current_version(name)), s.clock.now(),
                    force=force, next_attempt_at=row.next_attempt_at if row else None)


def verdicts(s: Services) -> dict[str, Verdict]:
    """``verdict`` for every configured certificate, from two queries (for scans)."""
    rows = s.inventory.plan_rows()
    now = s.clock.now()
    out: dict[str, Verdict] = {}
    for name, cfg in s.config.certificates.items():
        row, cur = rows.get(name, (None, None))
        out[name] = evaluate(wanted(cfg), cur, now, next_attempt_at=row.next_attempt_at if row else None)
    return out
