"""Prometheus metrics, named after cert-manager's where they overlap.

One ``Metrics`` object per process owns its own registry (no global state),
so tests can build as many as they like. The pipeline reports through
``observe_result``; the daemon refreshes the per-certificate gauges from
the inventory after each scan, so the gauges are right even for work done
by another replica.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

READY_CONDITIONS = ("ready", "renewing", "failing", "expiring")


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
            "certd_certificate_ready_status", "1 for the certificate's current condition, 0 for the others.",
            ["name", "condition"], registry=r,
        )
        self.renewals = Counter(
            "certd_renewals_total", "Renewal attempts by result.", ["name", "issuer", "result"], registry=r
        )
        self.renewal_duration = Histogram(
            "certd_renewal_duration_seconds", "Wall time of renewals that ran.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.deploys = Counter(
            "certd_deploy_total", "Deploy target runs by result.", ["name", "target", "result"], registry=r
        )
        self.probes = Counter("certd_probe_total", "Verify probes by result.", ["name", "result"], registry=r)
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
        condition: str,
    ) -> None:
        if not_after is not None:
            self.expiration.labels(name).set(not_after.timestamp())
        if renew_at is not None:
            self.renewal_time.labels(name).set(renew_at.timestamp())
        for cond in READY_CONDITIONS:
            self.ready.labels(name, cond).set(1 if cond == condition else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
