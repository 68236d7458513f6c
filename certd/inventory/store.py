"""Queries over the inventory: the only place that reads or writes its rows.

Writes that belong to a renewal take the renewal's ``LeaseInfo`` and check
it in the same transaction (``assert_held``), which is how a holder whose
lease lapsed is stopped from recording anything. Writes that store a sealed
key check, in the same way, that the inventory is still sealed with this
process's key (``keycheck.assert_sealing_key``): after ``certd db rotate-key``
a replica still on the old key cannot store keys nobody can open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from certd.config.model import CertificateConfig, Config
from certd.core.kinds import EventKind, Step
from certd.core.policy import Current
from certd.errors import InventoryError
from certd.inventory.faults import inventory_error
from certd.inventory.keycheck import assert_sealing_key
from certd.inventory.leases import LeaseInfo, assert_held
from certd.inventory.models import Account, Certificate, Event, Lease, NewVersion, Version, VersionState
from certd.pki.keybox import KeyBox

__all__ = ["Inventory", "SyncReport", "config_hash"]

def config_hash(cert: CertificateConfig) -> str:
    """A stable digest of the settings that decide what gets issued."""
    material = json.dumps(
        {"issuer": cert.issuer, "names": cert.names, "key": str(cert.key), "lifetime": str(cert.lifetime)},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    retired: tuple[str, ...]


class Inventory:
    """Session-per-call access to the inventory; safe to share between threads."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], keybox: KeyBox | None = None) -> None:
        self.engine = engine
        self.sessions = sessions
        self.keybox = keybox or KeyBox(None)

    # -- issuer accounts (AccountStore) -------------------------------------------
    def load_account(self, issuer: str, directory: str) -> tuple[bytes, str | None] | None:
        """The stored account key PEM and URL for this issuer and directory, if any."""
        with self.sessions() as s:
            row = s.execute(
                select(Account).where(Account.issuer == issuer, Account.directory == directory)
            ).scalar_one_or_none()
            if row is None:
                return None
            key = row.key_enc
            if key.startswith(b"cd1"):
                key = self.keybox.open(key, f"account:{issuer}:{directory}")
            return key, row.uri

    def save_account(self, issuer: str, directory: str, key_pem: bytes, uri: str | None) -> None:
        """Store (or replace) the account; the key is sealed when a key file is configured."""
        sealed = self.keybox.seal(key_pem, f"account:{issuer}:{directory}") if self.keybox.enabled else key_pem
        with self.sessions.begin() as s:
            if self.keybox.enabled:
                assert_sealing_key(s, self.keybox)
            row = s.execute(
                select(Account).where(Account.issuer == issuer, Account.directory == directory)
            ).scalar_one_or_none()
            if row is None:
                s.add(Account(issuer=issuer, directory=directory, uri=uri, key_enc=sealed,
                              created_at=datetime.now(UTC)))
            else:
                row.uri, row.key_enc = uri, sealed

    # -- configuration sync ------------------------------------------------------
    def sync(self, config: Config, now: datetime) -> SyncReport:
        """Make the certificates table match the config: add, update, retire (never delete)."""
        added: list[str] = []
        changed: list[str] = []
        retired: list[str] = []
        try:
            with self.sessions.begin() as s:
                rows = {c.name: c for c in s.execute(select(Certificate)).scalars()}
                for name, cert in config.certificates.items():
                    digest = config_hash(cert)
                    row = rows.get(name)
                    if row is None:
                        s.add(
                            Certificate(
                                name=name,
                                issuer=cert.issuer,
                                names=json.dumps(cert.names),
                                key_type=str(cert.key),
                                config_hash=digest,
                                created_at=now,
                                updated_at=now,
                                failures=0,
                            )
                        )
                        added.append(name)
                    elif row.config_hash != digest or row.retired_at is not None:
                        row.issuer, row.names, row.key_type = cert.issuer, json.dumps(cert.names), str(cert.key)
                        row.config_hash, row.updated_at, row.retired_at = digest, now, None
                        changed.append(name)
                for name, row in rows.items():
                    if name not in config.certificates and row.retired_at is None:
                        row.retired_at = now
                        retired.append(name)
                for name in added + changed + retired:
                    kind = (EventKind.CONFIG_ADDED if name in added
                            else EventKind.CONFIG_CHANGED if name in changed else EventKind.CONFIG_RETIRED)
                    s.add(Event(certificate=name, at=now, kind=kind.value, level="info", message=kind.split(".")[1]))
        except SQLAlchemyError as exc:
            raise inventory_error(self.engine.url, exc) from exc
        return SyncReport(tuple(added), tuple(changed), tuple(retired))

    # -- reads -------------------------------------------------------------------
    def certificate(self, name: str) -> Certificate | None:
        with self.sessions() as s:
            row = s.get(Certificate, name)
            if row is not None:
                s.expunge(row)
            return row

    def certificates(self) -> list[Certificate]:
        with self.sessions() as s:
            rows = list(s.execute(select(Certificate).order_by(Certificate.name)).scalars())
            s.expunge_all()
            return rows

    def plan_rows(self) -> dict[str, tuple[Certificate, Current | None]]:
        """What renewal policy reads for every certificate, in one narrow query (scans run this often)."""
        q = select(
            Certificate.name, Certificate.next_attempt_at, Version.issuer, Version.names, Version.key_type,
            Version.not_before, Version.not_after, Version.renew_at, Version.state,
        ).outerjoin(Version, Certificate.current_version_id == Version.id)
        out: dict[str, tuple[Certificate, Current | None]] = {}
        with self.sessions() as s:
            for name, next_at, issuer, names, key_type, nb, na, renew_at, state in s.execute(q):
                current = None if issuer is None else Current(
                    issuer=issuer, names=tuple(json.loads(names)), key_type=key_type, not_before=nb, not_after=na,
                    renew_at=renew_at or na, revoked=state == VersionState.REVOKED.value,
                    failed=state == VersionState.FAILED.value,
                )
                out[name] = (Certificate(name=name, next_attempt_at=next_at), current)
        return out

    def version(self, version_id: int) -> Version | None:
        with self.sessions() as s:
            row = s.get(Version, version_id)
            if row is not None:
                s.expunge(row)
            return row

    def current_version(self, name: str) -> Version | None:
        with self.sessions() as s:
            cert = s.get(Certificate, name)
            if cert is None or cert.current_version_id is None:
                return None
            row = s.get(Version, cert.current_version_id)
            if row is not None:
                s.expunge(row)
            return row

    def current_versions(self) -> dict[str, Version]:
        with self.sessions() as s:
            q = select(Version).join(Certificate, Certificate.current_version_id == Version.id)
            rows = {v.certificate: v for v in s.execute(q).scalars()}
            s.expunge_all()
            return rows

    def held_leases(self, now: datetime) -> set[str]:
        """The certificates an operation holds the lease of at ``now`` (a renewal or a deploy is running)."""
        with self.sessions() as s:
            return set(s.execute(select(Lease.certificate).where(Lease.expires_at > now)).scalars())

    def previously_served(self) -> dict[str, Version]:
        """Per certificate, the newest version before its current one that was deployed or served.

        While the current version's rollout is in progress (or failed without a rollback), servers may
        still present this one: the trust bundle keeps its CA until the new one is confirmed.
        """
        served = (VersionState.SUPERSEDED.value, VersionState.DEPLOYED.value, VersionState.SERVED.value)
        with self.sessions() as s:
            newest = (
                select(Version.certificate, func.max(Version.id).label("id"))
                .join(Certificate, Certificate.name == Version.certificate)
                .where(Version.state.in_(served), Version.id != func.coalesce(Certificate.current_version_id, -1))
                .group_by(Version.certificate)
                .subquery()
            )
            q = select(Version).join(newest, Version.id == newest.c.id)
            rows = {v.certificate: v for v in s.execute(q).scalars()}
            s.expunge_all()
            return rows

    def versions(self, name: str) -> list[Version]:
        with self.sessions() as s:
            q = select(Version).where(Version.certificate == name).order_by(Version.id.desc())
            rows = list(s.execute(q).scalars())
            s.expunge_all()
            return rows

    def events(self, name: str, limit: int = 200) -> list[Event]:
        with self.sessions() as s:
            q = select(Event).where(Event.certificate == name).order_by(Event.id.desc()).limit(limit)
            rows = list(s.execute(q).scalars())
            s.expunge_all()
            return rows

    def finished_since(self, name: str, since: datetime, *, exclude: str) -> Event | None:
        """The newest renewal of ``name`` that succeeded or failed at or after ``since``."""
        with self.sessions() as s:
            q = (
                select(Event)
                .where(
                    Event.certificate == name,
                    Event.kind.in_((EventKind.RENEWAL_SUCCEEDED, EventKind.RENEWAL_FAILED)),
                    Event.at >= since,
                    Event.renewal_id != exclude,
                )
                .order_by(Event.id.desc())
                .limit(1)
            )
            row = s.execute(q).scalar_one_or_none()
            if row is not None:
                s.expunge(row)
            return row

    def version_for_renewal(self, renewal_id: str) -> Version | None:
        with self.sessions() as s:
            q = select(Version).where(Version.renewal_id == renewal_id).order_by(Version.id.desc()).limit(1)
            row = s.execute(q).scalar_one_or_none()
            if row is not None:
                s.expunge(row)
            return row

    # -- writes ------------------------------------------------------------------
    def event(
        self,
        name: str,
        kind: EventKind,
        message: str,
        now: datetime,
        *,
        renewal_id: str | None = None,
        step: Step | None = None,
        level: str = "info",
    ) -> None:
        """Append an event; events are history, not state, so they are not fenced."""
        with self.sessions.begin() as s:
            s.add(
                Event(
                    certificate=name, at=now, kind=kind.value, level=level, step=step.value if step else None,
                    message=message,
                    renewal_id=renewal_id,
                )
            )

    def add_version(self, lease: LeaseInfo, now: datetime, new: NewVersion) -> int:
        """Record an issued (or imported) certificate as ``issued``; fenced by the lease."""
        with self.sessions.begin() as s:
            assert_held(s, lease, now)
            if new.key_enc is not None:
                assert_sealing_key(s, self.keybox)
            row = Version(certificate=lease.certificate, created_at=now, updated_at=now,
                          state=VersionState.ISSUED.value, **asdict(new))
            s.add(row)
            s.flush()
            return row.id

    def update_version(self, lease: LeaseInfo, version_id: int, now: datetime, **fields: Any) -> None:
        with self.sessions.begin() as s:
            assert_held(s, lease, now)
            s.execute(update(Version).where(Version.id == version_id).values(updated_at=now, **fields))

    def ari_due(self, now: datetime) -> list[Version]:
        """Current versions whose CA speaks ARI and whose ``Retry-After`` has passed (unexpired, unrevoked)."""
        with self.sessions() as s:
            q = (
                select(Version)
                .join(Certificate, Certificate.current_version_id == Version.id)
                .where(Version.ari_cert_id.is_not(None), Version.not_after > now,
                       Version.state != VersionState.REVOKED.value,
                       (Version.ari_next_check_at.is_(None)) | (Version.ari_next_check_at <= now))
            )
            rows = list(s.execute(q).scalars())
            s.expunge_all()
            return rows

    def set_renewal_info(self, version_id: int, now: datetime, *, renew_at: datetime, next_check: datetime) -> None:
        """Record a fresh ARI answer. No lease: only scheduling fields change, never what is published."""
        with self.sessions.begin() as s:
            s.execute(update(Version).where(Version.id == version_id)
                      .values(renew_at=renew_at, ari_next_check_at=next_check, updated_at=now))

    def make_current(
        self, lease: LeaseInfo, version_id: int, now: datetime, *, previous_state: str | None = None
    ) -> int | None:
        """Point the certificate at ``version_id``; mark the one it replaces (returned) superseded."""
        with self.sessions.begin() as s:
            assert_held(s, lease, now)
            cert = s.get(Certificate, lease.certificate)
            if cert is None:
                raise InventoryError(f"certificate {lease.certificate} vanished from the inventory")
            previous = cert.current_version_id
            if previous is not None and previous != version_id:
                s.execute(
                    update(Version)
                    .where(Version.id == previous, Version.state != VersionState.REVOKED.value)
                    .values(state=previous_state or VersionState.SUPERSEDED.value, updated_at=now)
                )
            cert.current_version_id = version_id
            return previous

    def record_failure(
        self,
        name: str,
        now: datetime,
        *,
        step: Step,
        error: str,
        reason: str | None,
        backoff: Callable[[int], datetime],
    ) -> datetime | None:
        """Count a failure and set its backoff in one transaction; return when the next attempt may start.

        ``backoff`` maps the new failure count to the end of the backoff. The
        counter is bumped in the transaction that reads it (two failures
        recorded at once count twice), and no reader ever sees the failure
        without its backoff. ``None`` when the certificate has no row.
        """
        with self.sessions.begin() as s:
            cert = s.get(Certificate, name)
            if cert is None:
                return None
            cert.failures = (cert.failures or 0) + 1
            cert.next_attempt_at = backoff(cert.failures)
            cert.last_error, cert.last_error_at, cert.last_reason = error, now, reason
            cert.failed_step = step.value
            return cert.next_attempt_at

    def clear_failure(self, name: str, *, steps: tuple[Step, ...] | None = None) -> None:
        """A success: forget the failure record, or only a failure of one of ``steps`` (what was re-run)."""
        with self.sessions.begin() as s:
            q = update(Certificate).where(Certificate.name == name)
            if steps is not None:
                q = q.where(Certificate.failed_step.in_([step.value for step in steps]))
            s.execute(q.values(failures=0, next_attempt_at=None, last_error=None, last_reason=None, failed_step=None))

    def check_sealing_key(self) -> None:
        """Before a renewal orders: the key it will seal with is still the inventory's (``InventoryError``)."""
        if self.keybox.enabled:
            with self.sessions.begin() as s:
                assert_sealing_key(s, self.keybox)

    def clear_backoffs(self, *, keep_reasons: Iterable[str], keep_steps: Iterable[str] = ()) -> list[str]:
        """End every backoff except those whose reason is in ``keep_reasons`` or whose failed step is in
        ``keep_steps``; return the names."""
        keep, steps = list(keep_reasons), list(keep_steps)
        with self.sessions.begin() as s:
            q = select(Certificate.name).where(Certificate.next_attempt_at.is_not(None))
            if keep:
                q = q.where((Certificate.last_reason.is_(None)) | (Certificate.last_reason.not_in(keep)))
            if steps:
                q = q.where((Certificate.failed_step.is_(None)) | (Certificate.failed_step.not_in(steps)))
            names = list(s.execute(q).scalars())
            if names:
                s.execute(update(Certificate).where(Certificate.name.in_(names)).values(next_attempt_at=None))
            return names

