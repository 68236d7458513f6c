"""SQLAlchemy 2 models: certificates, versions, events, leases, accounts.

Times are stored as naive UTC (SQLite keeps no zone) and handed back as
timezone-aware UTC by ``UTCDateTime``, so no caller ever compares a naive
datetime. The schema itself is owned by Alembic (``migrations/``); these
models must match the newest revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Account",
    "Base",
    "Certificate",
    "Event",
    "IssuanceLog",
    "Lease",
    "Meta",
    "NewVersion",
    "UTCDateTime",
    "UsedSignature",
    "Version",
    "VersionState",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class VersionState(StrEnum):
    """States of one certificate version (see the design)."""

    ISSUED = "issued"
    CHECKED = "checked"
    PUBLISHED = "published"
    DEPLOYED = "deployed"
    SERVED = "served"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"
    FAILED = "failed"


class Base(DeclarativeBase):
    pass


class Certificate(Base):
    """A certificate the config asks for (or asked for: ``retired_at``)."""

    __tablename__ = "certificates"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64))
    names: Mapped[str] = mapped_column(Text)  # JSON list, in config order
    key_type: Mapped[str] = mapped_column(String(16))
    config_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    current_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failed_step: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the step of ``last_error``


class Version(Base):
    """One issued certificate; its state follows it through the pipeline."""

    __tablename__ = "versions"
    __table_args__ = (Index("ix_versions_certificate_created", "certificate", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    certificate: Mapped[str] = mapped_column(ForeignKey("certificates.name"))
    renewal_id: Mapped[str] = mapped_column(String(32))
    serial: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(16))
    names: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ari_cert_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ari_next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    failed_step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    generation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text)
    key_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class NewVersion:
    """What is known of a certificate when it is first recorded (``Inventory.add_version``)."""

    renewal_id: str
    serial: str
    fingerprint: str
    issuer: str
    key_type: str
    names: str  # JSON list, in config order
    not_before: datetime
    not_after: datetime
    renew_at: datetime
    cert_pem: str
    chain_pem: str
    key_enc: bytes | None = None
    ari_cert_id: str | None = None
    ari_next_check_at: datetime | None = None


class Event(Base):
    """Something that happened to a certificate, with the renewal it belongs to."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_certificate_at", "certificate", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    certificate: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(48))
    level: Mapped[str] = mapped_column(String(8), default="info")
    step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    renewal_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Lease(Base):
    """Who may renew a certificate right now; ``token`` only ever grows (fencing)."""

    __tablename__ = "leases"

    certificate: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(Integer)
    renewal_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Account(Base):
    """An ACME account: its key (encrypted when a key file is configured) and URL."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("issuer", "directory", name="uq_accounts_issuer_directory"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer: Mapped[str] = mapped_column(String(64))
    directory: Mapped[str] = mapped_column(String(512))
    uri: Mapped[str | None] = mapped_column(String(512), nullable=True)
    key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IssuanceLog(Base):
    """One order placed or certificate received, for certd's rate-limit budget."""

    __tablename__ = "issuance_log"
    __table_args__ = (Index("ix_issuance_log_issuer_kind_at", "issuer", "kind", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "order" or "certificate"
    domain: Mapped[str | None] = mapped_column(String(255), nullable=True)
    names_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    certificate: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsedSignature(Base):
    """A signed API request already accepted; remembered until its timestamp leaves the window."""

    __tablename__ = "used_signatures"
    __table_args__ = (Index("ix_used_signatures_expires_at", "expires_at"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the signature header
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Meta(Base):
    """Facts about the inventory itself (e.g. ``key_check``: proves which key_file sealed its keys)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
