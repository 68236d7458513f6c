"""Signed API requests already accepted: replay protection shared by every process on the inventory.

A signature is accepted once. Remembering that in memory forgot it at every
restart, and each replica had its own memory, so the same signed request
could be played once per replica and again after each restart. The
database is the one memory they share: ``remember`` inserts the
signature's SHA-256 (not the signature itself, which is a MAC over the
request and need not be kept) with ``expires_at`` = its timestamp + the
window, and the primary key makes the second insert fail on SQLite and
PostgreSQL alike, whichever process tries it. After ``expires_at`` the
timestamp check refuses the request anyway, so the row can go: expired
rows are deleted now and then, never more than once a minute per process.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from certd.errors import InventoryError
from certd.inventory.models import UsedSignature

__all__ = ["SignatureLedger"]

PURGE_EVERY = timedelta(minutes=1)


class SignatureLedger:
    """Insert-once memory of signatures; thread-safe (a session per call)."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session]]) -> None:
        # A provider, not a factory: the daemon swaps its inventory (and maybe its database) on reload.
        self._sessions = sessions
        self._last_purge: datetime | None = None
        self._lock = threading.Lock()

    def remember(self, signature: str, expires_at: datetime, now: datetime) -> bool:
        """Record ``signature`` until ``expires_at``; False if it was recorded before (a replay).

        Raises ``InventoryError`` when the database cannot answer: then nobody
        can know whether this is a replay, so the caller must refuse.
        """
        digest = hashlib.sha256(signature.encode()).hexdigest()
        sessions = self._sessions()
        try:
            with sessions.begin() as s:
                s.add(UsedSignature(digest=digest, expires_at=expires_at))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise InventoryError(f"cannot record a used API signature: {type(exc).__name__}") from exc
        self._purge(sessions, now)
        return True

    def _purge(self, sessions: sessionmaker[Session], now: datetime) -> None:
        with self._lock:
            if self._last_purge is not None and now - self._last_purge < PURGE_EVERY:
                return
            self._last_purge = now
        try:
            with sessions.begin() as s:
                s.execute(delete(UsedSignature).where(UsedSignature.expires_at < now))
        except SQLAlchemyError:
            pass  # housekeeping only: the next purge tries again, and stale rows refuse nothing valid
