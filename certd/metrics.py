"""Prometheus metrics, named after cert-manager's where they overlap.

One ``Metrics`` object per process owns its own registry (no global state),
so tests can build as many as they like. Counters are bumped as things
happen; the per-certificate gauges are computed from the inventory on every
scrape of ``/metrics`` (and after each scan), so they are right at the
moment they are read — after an expiry nobody acted on, during a renewal
that hangs, and for work done by another replica.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from certd.core.status import Condition

__all__ = ["READY_CONDITIONS", "Metrics"]

# Every condition is exported for every certificate (0 or 1), so an alert on one never sees a gap.
READY_CONDITIONS = tuple(Condition)
_READY_HELP = (
    "Independent flags (not one-hot; several can be 1), computed by certd/status.py: "
    "ready=a published, unexpired, unrevoked version is current; "
    "renewing=the policy wants a new certificate (due, or backing off after a failure); "
    "failing=the last renewal attempt failed (also when expired); "
    "expiring=the current version is past its renewal time (also when expired); "
    "critical=past the hard deadline, the last tenth of the lifetime, and not renewed: failing, running or hung "
    "(also when expired); "
    "expired=the current version is past notAfter; "
    "revoked=the current version was revoked."
)


class Metrics:
    """All certd metrics on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.expiration = Gauge(
            "certd_certificate_expiration_timestamp_seconds", "notAfter of the current version.", ["name"],
            registry=r,
        )
        self.renewal_time = Gauge(
            "certd_certificate_renewal_timestamp_seconds", "When the current version is due for renewal.",
            ["name"], registry=r,
        )
        self.ready = Gauge(
            "certd_certificate_ready_status", _READY_HELP,
            ["name", "condition"], registry=r,
        )
        self.renewals = Counter(
            "certd_renewals_total", "Renewal attempts by result.", ["name", "issuer", "result"], registry=r
        )
        self.renewal_duration = Histogram(
            "certd_renewal_duration_seconds", "Wall time of renewals that ran, by issuer and result.",
            ["issuer", "result"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.step_duration = Histogram(
            "certd_step_duration_seconds", "Wall time of each pipeline step (key, issue, check, publish, deploy, ...).",
            ["operation", "step"], buckets=(0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=r,
        )
        self.deploys = Counter(
            "certd_deploy_total", "Deploy target runs by result.", ["name", "target", "result"], registry=r
        )
        self.probes = Counter("certd_probe_total", "Verify probes by result.", ["name", "result"], registry=r)
        self.lifetime_shortened = Counter(
            "certd_lifetime_shortened_total", "Certificates the CA issued for less than the lifetime asked.",
            ["name", "issuer"], registry=r,
        )
        self.issuer_requests = Counter(
            "certd_issuer_requests_total", "Issue/revoke calls to issuers by result.", ["issuer", "result"],
            registry=r,
        )

    def set_certificate(
        self,
        name: str,
        *,
        not_after: datetime | None,
        renew_at: datetime | None,
        conditions: Collection[Condition],
    ) -> None:
        """Per-certificate gauges; ``conditions`` are the flags that hold (see ``certd/status.py``)."""
        if not_after is not None:
            self.expiration.labels(name).set(not_after.timestamp())
        if renew_at is not None:
            self.renewal_time.labels(name).set(renew_at.timestamp())
        for cond in READY_CONDITIONS:
            self.ready.labels(name, cond.value).set(1 if cond in conditions else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
