"""certd's own issuance budget, so a fleet never runs into the CA's rate limits.

Counted in the shared inventory (``issuance_log``), so every replica spends
from the same budget, over sliding windows:

- new orders per issuer account (``new_orders`` per ``orders_window``),
- certificates per registered domain (``certificates_per_domain`` per
  ``window``; the registered domain comes from the Public Suffix List, as the
  CA counts it; an IP address counts as its own domain),
- duplicate certificates, i.e. the same set of names (``duplicate_certificates``
  per ``window``).

The check and the reservation of an order happen in one transaction under a
per-issuer lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL), so concurrent workers cannot both take the last unit. Renewals
that carry an ARI ``replaces`` are exempt and not counted, as at Let's
Encrypt. A refusal is ``RateLimited`` with ``retry_after`` set to when the
oldest counted event leaves the window; the pipeline turns that into backoff.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache

from publicsuffixlist import PublicSuffixList
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from certd.config.model import RateLimitsConfig
from certd.core.durations import format_duration, rfc3339
from certd.errors import RateLimited
from certd.inventory.models import IssuanceLog
from certd.pki.keys import is_ip

__all__ = ["BUDGET_REASON", "Budget", "names_key", "registered_domain"]

# The reason of a refusal by certd's own budget, as opposed to the CA's ``rateLimited``.
BUDGET_REASON = "BudgetExhausted"


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def registered_domain(name: str) -> str:
    """``a.b.example.co.uk`` -> ``example.co.uk``; wildcards count for their base; IPs for themselves."""
    name = name.lower().removeprefix("*.")
    if is_ip(name):
        return name
    return _psl().privatesuffix(name) or name


def names_key(names: Iterable[str]) -> str:
    """The identity of a set of names, for the duplicate-certificate limit."""
    return hashlib.sha256("\n".join(sorted({n.lower() for n in names})).encode()).hexdigest()


class Budget:
    """The budget of one issuer."""

    def __init__(self, sessions: sessionmaker[Session], issuer: str, limits: RateLimitsConfig) -> None:
        self._sessions = sessions
        self.issuer = issuer
        self.limits = limits

    def _lock(self, s: Session) -> None:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"budget:{self.issuer}".encode())})

    def _refuse_if_full(
        self, s: Session, now: datetime, what: str, window: timedelta, limit: int | None, *conds: object
    ) -> None:
        if limit is None:
            return
        since = now - window
        q = select(func.count(), func.min(IssuanceLog.at)).where(
            IssuanceLog.issuer == self.issuer, IssuanceLog.at > since, *conds  # type: ignore[arg-type]
        )
        count, oldest = s.execute(q).one()
        if count >= limit:
            retry = (oldest + window - now) if oldest else window
            raise RateLimited(
                f"issuer {self.issuer}: certd's budget of {limit} {what} per {format_duration(window)} is spent; "
                f"holding back until {rfc3339(now + retry)} (inside the hard deadline, or with --force, "
                "certd asks the CA anyway)",
                reason=BUDGET_REASON,
                retry_after=max(retry, timedelta(seconds=1)),
            )

    def reserve(
        self, certificate: str, names: Iterable[str], now: datetime, *, exempt: bool, enforce: bool = True
    ) -> list[int]:
        """Refuse (``RateLimited``) or take one order and one certificate's worth of budget.

        The certificate units are taken now, not when the certificate arrives,
        so workers issuing at the same time cannot overspend; ``release`` gives
        them back when issuance fails (the order itself stays counted, as at the CA).
        Returns the reservation to release, empty when exempt. With ``enforce``
        false (the deadline or the operator overrides the budget) nothing is
        refused, but the order is still counted, so the budget stays true.
        """
        if exempt:
            return []
        names = list(names)
        with self._sessions.begin() as s:
            self._lock(s)
            domains = sorted({registered_domain(n) for n in names})
            if enforce:
                self._refuse_all(s, now, names, domains)
            s.add(IssuanceLog(issuer=self.issuer, kind="order", certificate=certificate, at=now))
            units = [IssuanceLog(issuer=self.issuer, kind="certificate", domain=d, certificate=certificate, at=now)
                     for d in domains]
            units.append(IssuanceLog(issuer=self.issuer, kind="names", names_key=names_key(names),
                                     certificate=certificate, at=now))
            s.add_all(units)
            s.flush()
            return [u.id for u in units]

    def _refuse_all(self, s: Session, now: datetime, names: list[str], domains: list[str]) -> None:
        lim = self.limits
        self._refuse_if_full(s, now, "new orders", lim.orders_window, lim.new_orders, IssuanceLog.kind == "order")
        for domain in domains:
            self._refuse_if_full(
                s, now, f"certificates for {domain}", lim.window, lim.certificates_per_domain,
                IssuanceLog.kind == "certificate", IssuanceLog.domain == domain,
            )
        self._refuse_if_full(
            s, now, "duplicate certificates for these names", lim.window, lim.duplicate_certificates,
            IssuanceLog.kind == "names", IssuanceLog.names_key == names_key(names),
        )

    def release(self, reservation: list[int]) -> None:
        """Give back the certificate units of an order that produced no certificate."""
        if not reservation:
            return
        with self._sessions.begin() as s:
            s.execute(delete(IssuanceLog).where(IssuanceLog.id.in_(reservation)))

    def used(self, now: datetime, domain: str) -> int:
        """Certificates counted for ``domain`` in the current window (for tests and ``plan``)."""
        with self._sessions() as s:
            q = select(func.count()).where(
                IssuanceLog.issuer == self.issuer, IssuanceLog.kind == "certificate", IssuanceLog.domain == domain,
                IssuanceLog.at > now - self.limits.window,
            )
            return int(s.execute(q).scalar_one())
