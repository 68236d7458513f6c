"""Per-certificate leases with fencing tokens, in the shared database.

The contract (after certmagic's ``Locker``): at most one holder renews a
certificate at a time across every process and replica sharing the
inventory. A lease expires unless its holder extends it; the ``token`` grows
by one on every acquisition, so a holder whose lease lapsed (a paused VM, a
long GC) finds its token stale and must not write. ``assert_held`` is called
inside the transaction that records a result, so the check and the write
commit together.

Everything is plain SQL that behaves the same on SQLite (writers serialised
by ``BEGIN IMMEDIATE``) and PostgreSQL (row locks): an UPDATE that only
matches an expired or own row, else an INSERT that fails on the primary key
if someone else got there first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certd.errors import LeaseLost
from certd.inventory.models import Lease

__all__ = ["LeaseInfo", "LeaseManager", "assert_held"]


@dataclass(frozen=True)
class LeaseInfo:
    """A lease we hold."""

    certificate: str
    owner: str
    token: int
    renewal_id: str
    expires_at: datetime


def assert_held(session: Session, lease: LeaseInfo, now: datetime) -> None:
    """Raise ``LeaseLost`` unless ``lease`` is still ours, locking the row until commit."""
    stmt = select(Lease).where(
        Lease.certificate == lease.certificate, Lease.owner == lease.owner, Lease.token == lease.token
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    if row is None or row.expires_at <= now:
        raise LeaseLost(f"certificate {lease.certificate}: lease lost (another holder took over); not writing")


class LeaseManager:
    """Acquire, extend and release leases."""

    def __init__(self, sessions: sessionmaker[Session], owner: str, ttl: timedelta) -> None:
        self._sessions = sessions
        self.owner = owner
        self.ttl = ttl

    def try_acquire(self, certificate: str, renewal_id: str, now: datetime) -> LeaseInfo | None:
        """Take the lease if it is free or expired; ``None`` if someone else holds it."""
        expires = now + self.ttl
        with self._sessions.begin() as s:
            res = s.execute(
                update(Lease)
                .where(Lease.certificate == certificate, Lease.expires_at <= now)
                .values(
                    owner=self.owner,
                    token=Lease.token + 1,
                    renewal_id=renewal_id,
                    acquired_at=now,
                    expires_at=expires,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                token = s.execute(select(Lease.token).where(Lease.certificate == certificate)).scalar_one()
                return LeaseInfo(certificate, self.owner, token, renewal_id, expires)
        try:
            with self._sessions.begin() as s:
                s.add(
                    Lease(
                        certificate=certificate,
                        owner=self.owner,
                        token=1,
                        renewal_id=renewal_id,
                        acquired_at=now,
                        expires_at=expires,
                    )
                )
        except IntegrityError:
            return None
        return LeaseInfo(certificate, self.owner, 1, renewal_id, expires)

    def extend(self, lease: LeaseInfo, now: datetime) -> LeaseInfo:
        """Push the expiry out; ``LeaseLost`` if it is no longer ours."""
        expires = now + self.ttl
        with self._sessions.begin() as s:
            res = s.execute(
                update(Lease)
                .where(
                    Lease.certificate == lease.certificate,
                    Lease.owner == lease.owner,
                    Lease.token == lease.token,
                    Lease.expires_at > now,
                )
                .values(expires_at=expires)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost(f"certificate {lease.certificate}: lease lost before it could be extended")
        return LeaseInfo(lease.certificate, lease.owner, lease.token, lease.renewal_id, expires)

    def release(self, lease: LeaseInfo, now: datetime) -> None:
        """Expire our lease now so the next waiter can go; a no-op if it was already taken."""
        with self._sessions.begin() as s:
            s.execute(
                update(Lease)
                .where(
                    Lease.certificate == lease.certificate,
                    Lease.owner == lease.owner,
                    Lease.token == lease.token,
                )
                .values(expires_at=now)
                .execution_options(synchronize_session=False)
            )
