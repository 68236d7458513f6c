"""What every operation on a certificate works with, built once per process and passed in.

The operations (``renew``, ``operations``, ``runner``, ``ca_rotation``) take a
``Services`` value and use only what they need from it; none of them reaches
through the ``Pipeline`` façade, so the façade can stay a list of names the
doors call, and a test builds a ``Services`` with its own issuers, clock or
fault hook through ``App.open`` instead of poking at private caches.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509

from certd.config.model import CertificateConfig, Config
from certd.core.clock import Clock
from certd.core.kinds import EventKind
from certd.core.policy import min_remaining
from certd.deploy.base import DeployTarget
from certd.engine.attempt import Fault
from certd.engine.budget import Budget
from certd.engine.hold import Hold
from certd.engine.recorder import Recorder
from certd.engine.result import Result
from certd.engine.rollout import Prober, Rollout
from certd.errors import CertdError
from certd.inventory.leases import LeaseManager
from certd.inventory.models import Event
from certd.inventory.store import Inventory
from certd.issuers.base import Issuer
from certd.metrics import Metrics
from certd.pki.keybox import KeyBox
from certd.pki.x509check import Expectations
from certd.scrub import held_secrets, refreshed

__all__ = ["IssuerPool", "Services"]


class IssuerPool:
    """Each issuer built once, on first use, shared by every thread.

    Building may fail (a CA unreachable at start), so it happens inside the
    step that needs the issuer, where the failure is recorded like any other;
    ``preset`` issuers (tests, embedders) are used as they are.
    """

    def __init__(self, factory: Callable[[str], Issuer], preset: Mapping[str, Issuer] | None = None) -> None:
        self._factory = factory
        self._built: dict[str, Issuer] = dict(preset or {})
        self._lock = threading.Lock()

    def get(self, name: str) -> Issuer:
        with self._lock:
            if name not in self._built:
                self._built[name] = self._factory(name)
            return self._built[name]


@dataclass
class Services:
    """The config, the inventory and the helpers every operation shares (thread-safe)."""

    config: Config
    inventory: Inventory
    keybox: KeyBox
    clock: Clock
    rng: random.Random
    issuers: IssuerPool
    recorder: Recorder
    hold: Hold
    rollout: Rollout
    metrics: Metrics | None = None
    fault: Fault | None = None  # called as each step begins; raising there injects a fault (tests)

    @classmethod
    def build(
        cls,
        config: Config,
        inventory: Inventory,
        leases: LeaseManager,
        *,
        issuers: IssuerPool,
        targets: Mapping[str, DeployTarget],
        keybox: KeyBox,
        clock: Clock,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        fault: Fault | None = None,
    ) -> Services:
        rng = rng or random.SystemRandom()
        recorder = Recorder(inventory, clock, rng, metrics, secrets=refreshed(lambda: held_secrets(config)))

        def joined(name: str, ev: Event) -> Result:
            return joined_result(inventory, name, ev)

        return cls(config=config, inventory=inventory, keybox=keybox, clock=clock, rng=rng, issuers=issuers,
                   recorder=recorder, hold=Hold(leases, inventory, clock, joined),
                   rollout=Rollout(inventory, targets, prober, recorder, clock), metrics=metrics, fault=fault)

    def issuer(self, name: str) -> Issuer:
        """The issuer, built on first use (building may fail: call it inside a step)."""
        return self.issuers.get(name)

    def cert_config(self, name: str) -> CertificateConfig:
        cfg = self.config.certificates.get(name)
        if cfg is None:
            raise CertdError(f"certificate {name!r} is not in the configuration", reason="UnknownCertificate")
        return cfg

    def budget(self, issuer: str) -> Budget | None:
        """The issuer's rate-limit budget, if it has one."""
        limits = self.config.issuers[issuer].rate_limits
        return None if limits is None else Budget(self.inventory.sessions, issuer, limits)

    def expectations(self, cfg: CertificateConfig, roots: list[x509.Certificate] | None,
                     leaf: x509.Certificate | None = None) -> Expectations:
        """What ``check`` demands: a new certificate must outlive its own renewal window (short ones: a tenth).

        Where the CA chooses the lifetime (ACME), the issued certificate's own lifetime sets the floor.
        """
        lifetime = cfg.lifetime or (leaf.not_valid_after_utc - leaf.not_valid_before_utc if leaf else None)
        return Expectations(names=tuple(cfg.names), key_type=cfg.key, roots=tuple(roots) if roots else None,
                            min_remaining=min_remaining(lifetime, cfg.renew_before), lifetime=cfg.lifetime,
                            ext_key_usage=tuple(cfg.ext_key_usage), cap=self.lifetime_cap(cfg.issuer))

    def lifetime_cap(self, issuer_name: str) -> str:
        """What can make ``issuer_name`` sign for less than asked, for the message that says it did."""
        icfg = self.config.issuers.get(issuer_name)
        if icfg is not None and icfg.type == "vault":
            return (f"Vault role {getattr(icfg, 'role', '?')}'s max_ttl or the mount's max lease TTL "
                    f"at {getattr(icfg, 'url', '?')}")
        return "the CA's maximum lifetime"


def joined_result(inventory: Inventory, name: str, ev: Event) -> Result:
    """The Result of someone else's renewal, for a request that joined it."""
    rid = ev.renewal_id or ""
    version = inventory.version_for_renewal(rid)
    failed = ev.kind != EventKind.RENEWAL_SUCCEEDED
    return Result(
        name, "failed" if failed else "renewed", serial=version.serial if version else None,
        state=version.state if version else None, failed_step=ev.step if failed else None,
        error=ev.message if failed else None, renewal_id=rid,
    )
