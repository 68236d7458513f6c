"""Who certd is to Vault: a token, an AppRole or a Kubernetes service account, and keeping its token alive.

Why it is built this way:

* Secrets (token, role_id, secret_id, JWT) are read from their files at each
  login, stripped of whitespace, and not kept afterwards; only the Vault token
  they buy is held in memory, because every call needs it.
* Token lifetime: a renewable token is renewed after 2/3 of its TTL (the only
  way to keep a periodic token from ``token_file`` alive); a token past its TTL
  is replaced by a new login; and a 403 -- a token revoked or expired early --
  triggers one new login and one retry, after which a 403 is a real policy
  denial. For ``auth = "token"`` "login" means re-reading ``token_file``, so an
  operator can rotate that file under a running daemon.
* One token for all threads, under a lock, so that concurrent workers wait for
  one login instead of each starting their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import hvac.exceptions as hvac_errors

from certd.config.model import VaultIssuerConfig
from certd.core.clock import Clock
from certd.errors import IssuerError, IssuerUnavailable
from certd.inputs import read_text
from certd.issuers.vault.client import VaultSession

__all__ = ["VaultAuth"]

log = logging.getLogger("certd.issuers.vault")  # one logger for the whole Vault issuer, whichever module speaks

T = TypeVar("T")

_RENEW_FRACTION = 2 / 3  # as Vault Agent's lifetime watcher: early enough to survive a failed renewal
_EXPIRY_MARGIN = timedelta(seconds=5)  # replace a token slightly early, so it cannot lapse in flight


@dataclass(frozen=True)
class _Token:
    """A Vault token and what Vault told us about its lifetime (``ttl`` None: no expiry known)."""

    value: str
    obtained: datetime
    ttl: timedelta | None
    renewable: bool

    def expired(self, now: datetime) -> bool:
        if self.ttl is None:
            return False
        return now >= self.obtained + self.ttl - min(_EXPIRY_MARGIN, self.ttl / 10)

    def renew_due(self, now: datetime) -> bool:
        return self.renewable and self.ttl is not None and now >= self.obtained + self.ttl * _RENEW_FRACTION


class VaultAuth:
    """The issuer's Vault token: logs in, renews and logs in again as needed; thread-safe.

    Implements ``client.Authenticator``. A failed login raises ``IssuerError``
    (``AuthConfig`` for an unusable secret file, ``PermissionDenied`` for
    rejected credentials, ``BadResponse`` for an answer without a token) or
    ``IssuerUnavailable``.
    """

    def __init__(self, name: str, config: VaultIssuerConfig, session: VaultSession, *, clock: Clock) -> None:
        self.name = name
        self._config = config
        self._session = session
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None

    def held(self) -> tuple[str, ...]:
        """The token held now, for the session to scrub from error messages."""
        token = self._token
        return (token.value,) if token is not None else ()

    def run(self, client: Any, action: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` with a live token; a 403 buys one new login and one retry (the token may be revoked)."""
        token = self._current_token(client)
        client.token = token
        try:
            return fn(client)
        except hvac_errors.Forbidden:
            log.info("issuer %s: Vault denied %s; logging in again once", self.name, action)
            client.token = self._relogin(client, stale=token)
            return fn(client)

    def _current_token(self, client: Any) -> str:
        with self._lock:
            now = self._clock.now()
            token = self._token
            if token is None or token.expired(now):
                token = self._login(client)
            elif token.renew_due(now):
                token = self._renew(client, token)
            self._token = token
            return token.value

    def _relogin(self, client: Any, *, stale: str) -> str:
        with self._lock:
            if self._token is None or self._token.value == stale:  # else another thread already did
                self._token = self._login(client)
            return self._token.value

    def _login(self, client: Any) -> _Token:
        cfg, session = self._config, self._session
        client.token = ""
        now = self._clock.now()
        if cfg.auth == "token":
            value = self._read_secret(cfg.token_file, "token_file")
            client.token = value
            with session.converted("token lookup-self (auth = token)", login=True, secrets=(value,)):
                info = client.auth.token.lookup_self()
            data = session.data("token lookup-self", info)
            ttl = int(data.get("ttl") or 0)
            token = _Token(value, now, timedelta(seconds=ttl) if ttl else None, bool(data.get("renewable")))
        elif cfg.auth == "approle":
            role_id = self._read_secret(cfg.role_id_file, "role_id_file")
            secret_id = self._read_secret(cfg.secret_id_file, "secret_id_file")
            with session.converted(f"login at auth/{cfg.approle_mount}", login=True, secrets=(role_id, secret_id)):
                response = client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=False,
                                                     mount_point=cfg.approle_mount)
            token = self._token_from(f"login at auth/{cfg.approle_mount}", response, now)
        else:
            jwt = self._read_secret(cfg.jwt_file, "jwt_file")
            with session.converted(f"login at auth/{cfg.kubernetes_mount}", login=True, secrets=(jwt,)):
                response = client.auth.kubernetes.login(role=cfg.kubernetes_role, jwt=jwt, use_token=False,
                                                        mount_point=cfg.kubernetes_mount)
            token = self._token_from(f"login at auth/{cfg.kubernetes_mount}", response, now)
        log.info("issuer %s: authenticated to Vault %s (auth %s, token ttl %s)", self.name, cfg.url, cfg.auth,
                 token.ttl if token.ttl is not None else "none")
        return token

    def _renew(self, client: Any, token: _Token) -> _Token:
        client.token = token.value
        now = self._clock.now()
        try:
            with self._session.converted("token renew-self", login=True):
                response = client.auth.token.renew_self()
            return self._token_from("token renew-self", response, now)
        except IssuerUnavailable:
            raise
        except IssuerError as exc:
            log.info("issuer %s: token renewal refused (%s); logging in again", self.name, exc.reason)
            return self._login(client)

    def _token_from(self, action: str, response: Any, now: datetime) -> _Token:
        auth = response.get("auth") if isinstance(response, dict) else None
        value = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(auth, dict) or not isinstance(value, str) or not value:
            raise IssuerError(self._session.message(action, "Vault's answer carries no client token"),
                              reason="BadResponse")
        ttl = int(auth.get("lease_duration") or 0)
        return _Token(value, now, timedelta(seconds=ttl) if ttl else None, bool(auth.get("renewable")))

    def _read_secret(self, path: Path | None, key: str) -> str:
        if path is None:
            raise IssuerError(f"issuer {self.name}: {key} is not set", reason="AuthConfig")
        try:
            value = read_text(path).strip()
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise IssuerError(f"issuer {self.name}: cannot read {key} {path}: {reason}",
                              reason="AuthConfig") from None
        if not value:
            raise IssuerError(f"issuer {self.name}: {key} {path} is empty", reason="AuthConfig")
        return value
