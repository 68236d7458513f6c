"""Following the CA's ARI renewal window (RFC 9773) after issuance.

A CA moves a window earlier when it plans to revoke (section 4.2), so the
renewal time follows the newest window; a time already inside the window is
kept, so a fleet's jitter is not redrawn on every poll. The window is asked
for again once its ``Retry-After`` has passed; an unreachable CA leaves the
stored time alone and is asked again in an hour.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

from certd.config.model import Config
from certd.core.clock import Clock
from certd.core.durations import rfc3339
from certd.core.kinds import EventKind
from certd.core.policy import pick_renew_at
from certd.engine.recorder import Recorder
from certd.inventory.store import Inventory
from certd.issuers.base import Issuer, RenewalInfo
from certd.pki.certs import load_pem_certs

__all__ = ["refresh_renewal_info"]


def refresh_renewal_info(config: Config, inventory: Inventory, issuer: Callable[[str], Issuer], clock: Clock,
                         rng: random.Random, recorder: Recorder) -> list[str]:
    """Re-ask every due current version's window; return the certificates whose renewal time moved."""
    now = clock.now()
    moved = []
    for version in inventory.ari_due(now):
        cfg = config.certificates.get(version.certificate)
        if cfg is None or cfg.issuer != version.issuer:
            continue
        ca = issuer(cfg.issuer)
        chain = load_pem_certs(version.chain_pem.encode())
        if not isinstance(ca, RenewalInfo) or not chain:
            continue
        leaf = load_pem_certs(version.cert_pem.encode())[0]
        window = ca.renewal_window(leaf, chain[0])
        if window is None:
            inventory.set_renewal_info(version.id, now, renew_at=version.renew_at or version.not_after,
                                       next_check=now + timedelta(hours=1))
            continue
        renew_at = version.renew_at
        if renew_at is None or not window.start <= renew_at <= window.end:
            renew_at = pick_renew_at(
                version.not_before, version.not_after, renew_before=cfg.renew_before,
                renew_fraction=cfg.renew_fraction, ari_window=(window.start, window.end), rng=rng,
            )
        inventory.set_renewal_info(version.id, now, renew_at=renew_at,
                                   next_check=window.retry_after or now + timedelta(hours=6))
        if renew_at != version.renew_at:
            moved.append(version.certificate)
            recorder.event(version.certificate, EventKind.ARI_WINDOW, f"the CA suggests renewing between "
                           f"{rfc3339(window.start)} and {rfc3339(window.end)}; renewal now at {rfc3339(renew_at)}",
                           None)
    return moved
