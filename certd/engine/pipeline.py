"""The façade the doors call: one name per operation, each delegating to the engine.

The daemon, the CLI and the HTTP API all renew, deploy, import and revoke
through these methods, so none has its own copy of a step. The work lives in
``renew.py`` (the order of a renewal's steps), ``operations.py`` (the other
operations), ``runner.py`` (lease and the one failure writer) and
``plan.py`` (verdicts); they take ``Services``, never this façade.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509

from certd.core.policy import Verdict
from certd.engine import operations, plan, renew
from certd.engine.ari_refresh import refresh_renewal_info
from certd.engine.result import Result
from certd.engine.services import Services
from certd.engine.trust import trust_bundle
from certd.pki.revocation import RevocationReason

__all__ = ["Pipeline"]


class Pipeline:
    """Renew, deploy, import and revoke single certificates; thread-safe."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def renew(self, name: str, *, force: bool = False, wait: timedelta = timedelta(minutes=5),
              requested_at: datetime | None = None) -> Result:
        """Renew one certificate now if due (or forced); a renewal that finished after ``requested_at`` answers."""
        return renew.renew(self.services, name, force=force, wait=wait, requested_at=requested_at)

    def deploy(self, name: str, *, wait: timedelta = timedelta(minutes=5)) -> Result:
        """Re-run deploy + verify for the current version."""
        return operations.deploy(self.services, name, wait=wait)

    def revoke(self, name: str, reason: RevocationReason) -> Result:
        """Revoke the current version at its issuer and mark it revoked (no replacement here)."""
        return operations.revoke(self.services, name, reason)

    def import_certificate(self, name: str, cert_pem: bytes, key_pem_data: bytes, chain_pem: bytes | None) -> Result:
        """Adopt an existing certificate: check it like an issued one, publish it, record it."""
        return operations.import_certificate(self.services, name, cert_pem, key_pem_data, chain_pem)

    def needs_install(self, name: str) -> bool:
        """True when this host's files do not hold the inventory's current version (agent role)."""
        return operations.needs_install(self.services, name)

    def install(self, name: str) -> Result:
        """Agent role: publish the inventory's current version on this host, then deploy + verify."""
        return operations.install(self.services, name)

    def rollover(self, issuer_name: str) -> str:
        """Replace an issuer's account key (ACME key change); ``CertdError`` if the issuer has none."""
        return operations.rollover(self.services, issuer_name)

    def verdicts(self) -> dict[str, Verdict]:
        """``verdict`` for every configured certificate (for scans and ``plan``)."""
        return plan.verdicts(self.services)

    def trust_bundle(self, name: str) -> list[x509.Certificate]:
        """Intermediates and pinned roots of ``name``'s issuer: what a load balancer pins."""
        s = self.services
        cfg = s.cert_config(name)
        return trust_bundle(name, cfg.issuer, s.issuer(cfg.issuer), s.inventory, s.config)

    def refresh_renewal_info(self) -> list[str]:
        """Follow moved ARI windows (see ``ari_refresh``); the certificates whose renewal time moved."""
        s = self.services
        return refresh_renewal_info(s.config, s.inventory, s.issuer, s.clock, s.rng, s.recorder)
