"""HashiCorp Vault's PKI secrets engine as a certd issuer.

Why it is built this way:

* All HTTP goes through hvac, so Vault's paths, headers (``X-Vault-Token``,
  ``X-Vault-Namespace``) and error bodies are handled by the client Vault's
  users already trust; paths hvac has no helper for (the issuer-pinned
  ``<mount>/issuer/<ref>/sign/<role>``) go through hvac's generic ``write_data``.
* The key stays local by default: certd's CSR is sent to ``sign``. Only with
  ``vault_generates_key`` is ``issue`` used, and the key Vault returns is handed
  to the pipeline and never logged.
* Secrets (token, role_id, secret_id, JWT) are read from their files at each
  login, stripped of whitespace, and not kept afterwards; only the Vault token
  they buy is held in memory, because every call needs it. Every message that
  leaves this module is scrubbed of the secrets in play.
* Token lifetime: a renewable token is renewed after 2/3 of its TTL (the only
  way to keep a periodic token from ``token_file`` alive); a token past its TTL
  is replaced by a new login; and a 403 -- a token revoked or expired early --
  triggers one new login and one retry, after which a 403 is a real policy
  denial. For ``auth = "token"`` "login" means re-reading ``token_file``, so an
  operator can rotate that file under a running daemon.
* Threads: one hvac client per thread, one token shared under a lock. hvac keeps
  the token as mutable adapter state on a ``requests.Session``, which is not
  documented as thread-safe; a shared client would let one worker's re-login swap
  the token under another worker's request. Per-thread clients keep connection
  reuse per worker, and the lock makes concurrent workers wait for one login
  instead of each starting their own.
* Quiet when healthy: Vault roles take the CN and SANs from a CSR by default
  (``use_csr_common_name``/``use_csr_sans``) and answer every ``sign`` that also
  sends ``common_name``/``alt_names`` with two warnings. So the role is read
  once an hour and only what the role will not take from the CSR is sent; if
  the token may not read the role, the names are sent as before (correct for any
  role). Vault's ``warnings`` are logged at debug: they describe the request,
  not a fault. What an operator must hear about -- a certificate shorter than
  the lifetime asked for, as when the role's ``max_ttl`` caps it -- certd checks
  itself and logs as a warning.
* Errors are converted in one place (``_converted``); only unavailability
  (sealed, 429, 5xx, connection errors, timeouts) is retried, with bounded
  exponential backoff, because a refused request fails the same way again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import hvac
import hvac.exceptions as hvac_errors
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certd.config.model import VaultIssuerConfig
from certd.core.clock import Clock, SystemClock
from certd.core.durations import format_duration
from certd.errors import CertdError, IssuerError, IssuerUnavailable, tls_reason
from certd.issuers.base import AccountStore, Issued, IssueRequest, RevocationReason
from certd.pki.certs import is_self_signed, load_pem_certs
from certd.pki.keys import is_ip, load_key_pem

__all__ = ["VaultIssuer"]

log = logging.getLogger("certd.issuers.vault")

T = TypeVar("T")

_RENEW_FRACTION = 2 / 3  # as Vault Agent's lifetime watcher: early enough to survive a failed renewal
_EXPIRY_MARGIN = timedelta(seconds=5)  # replace a token slightly early, so it cannot lapse in flight
_REDACTED = "[redacted]"
_ROLE_REFRESH = timedelta(hours=1)  # a role edited under a running daemon is picked up within this time
# How much shorter than asked a certificate may be before it is worth a warning: issuance time and clock skew
# between certd and Vault, not a cap.
_LIFETIME_SLACK = timedelta(minutes=2)


@dataclass(frozen=True)
class _NameSources:
    """Whether the role takes the CN / the SANs from the CSR (Vault's defaults: both true)."""

    csr_common_name: bool = True
    csr_sans: bool = True


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


def _vault_serial(certificate: x509.Certificate) -> str:
    """Vault's serial format: minimal big-endian bytes as colon-separated lowercase hex."""
    n = certificate.serial_number
    return ":".join(f"{b:02x}" for b in n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))


class VaultIssuer:
    """Issues through ``<mount>/sign/<role>`` (or ``issue`` when Vault generates keys); thread-safe."""

    def __init__(
        self,
        name: str,
        config: VaultIssuerConfig,
        *,
        clock: Clock | None = None,
        attempts: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._token: _Token | None = None
        self._role_lock = threading.Lock()
        self._role: tuple[datetime, _NameSources | None] | None = None  # when read, and what (None: unreadable)
        self._mount = config.mount.strip("/")
        where = f"{config.url}, mount {self._mount}, role {config.role}"
        self._where = where + (f", namespace {config.namespace}" if config.namespace else "")

    # ------------------------------------------------------------------ Issuer
    def issue(self, request: IssueRequest) -> Issued:
        cfg = self._config
        dns = [n for n in request.names if not is_ip(n)]
        ips = [n for n in request.names if is_ip(n)]
        params: dict[str, Any] = {"format": "pem"}
        # issue has no CSR: it needs every name. sign sends only what the role will not take from the CSR.
        sources = None if cfg.vault_generates_key else self._name_sources()
        csr_has_cn = bool(request.csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
        if dns and (sources is None or not sources.csr_common_name or not csr_has_cn):
            params["common_name"] = dns[0]
        if sources is None or not sources.csr_sans:
            if dns:
                params["alt_names"] = ",".join(dns)
            if ips:
                params["ip_sans"] = ",".join(ips)
        if request.lifetime is not None:
            params["ttl"] = f"{max(1, int(request.lifetime.total_seconds()))}s"
        if cfg.vault_generates_key:
            op = "issue"
            params["private_key_format"] = "pkcs8"
        else:
            op = "sign"
            params["csr"] = request.csr.public_bytes(serialization.Encoding.PEM).decode()
        path = self._pki_path(op)
        action = f"{op} at {path}"
        response = self._call(action, lambda client: client.write_data(path, data=params))
        data = self._data(action, response)
        leaf = self._certs(action, [data.get("certificate")])[0]
        pems = data.get("ca_chain") or [data.get("issuing_ca")]
        chain = tuple(c for c in self._certs(action, pems) if c != leaf and not is_self_signed(c))
        key = None
        if cfg.vault_generates_key:
            try:
                key = load_key_pem(str(data.get("private_key") or "").encode())
            except ValueError as exc:
                raise IssuerError(self._msg(action, f"Vault returned no usable private key ({exc})"),
                                  reason="BadResponse") from exc
        log.info("issuer %s: Vault %s issued serial %x for %s (not after %s)", self.name, action,
                 leaf.serial_number, ", ".join(request.names), leaf.not_valid_after_utc.isoformat())
        self._check_lifetime(request, leaf)
        return Issued(leaf=leaf, chain=chain, private_key=key)

    def _check_lifetime(self, request: IssueRequest, leaf: x509.Certificate) -> None:
        """Warn when Vault granted less than asked (it caps at the role's max_ttl, the mount's max lease TTL
        or the CA's expiry, and says so only in a warning). Wall-clock time on purpose: Vault's notAfter is
        its clock plus the TTL, so an injected test clock would make every certificate look wrong."""
        if request.lifetime is None:
            return
        granted = leaf.not_valid_after_utc - datetime.now(UTC)
        if granted < request.lifetime - max(_LIFETIME_SLACK, request.lifetime / 100):
            # Info, not a warning: the pipeline's check says it once, as an event and a metric (x509check).
            log.info("issuer %s: Vault issued serial %x for %s valid for only %s of the %s asked for (%s): "
                        "the role's max_ttl, the mount's max lease TTL or the CA's own expiry caps it",
                        self.name, leaf.serial_number, ", ".join(request.names),
                        format_duration(timedelta(seconds=int(granted.total_seconds()))),
                        format_duration(request.lifetime), self._where)

    def _name_sources(self) -> _NameSources | None:
        """The role's ``use_csr_*`` settings, read at most once per ``_ROLE_REFRESH``; None if unreadable.

        A token allowed to sign need not be allowed to read the role: then (403, 404, 400) the names are sent
        with every request, which is right for any role, at the price of Vault's warnings. Vault's refusal is
        caught inside the call, so a 403 here neither triggers the re-login that a 403 on sign does (it is a
        policy, not an expired token) nor hides a failed login or an unavailable Vault, which fail the issue
        exactly as the sign itself would have.
        """
        with self._role_lock:
            now = self._clock.now()
            if self._role is not None and now - self._role[0] < _ROLE_REFRESH:
                return self._role[1]
            path = f"{quote(self._mount, safe='/')}/roles/{quote(self._config.role, safe='')}"
            action = f"read of {path}"

            def read(client: Any) -> Any:
                try:
                    return client.read(path)
                except (hvac_errors.Forbidden, hvac_errors.InvalidPath, hvac_errors.InvalidRequest) as exc:
                    return exc

            response = self._call(action, read)
            sources: _NameSources | None = None
            if isinstance(response, dict):
                data = self._data(action, response)
                sources = _NameSources(csr_common_name=data.get("use_csr_common_name") is not False,
                                       csr_sans=data.get("use_csr_sans") is not False)
            else:
                detail = "no such role" if response is None else self._redact(str(response).strip()[:200], ())
                log.info("issuer %s: cannot read role %s at Vault %s (%s), so the names are sent with every sign "
                         "request and Vault may warn about them", self.name, self._config.role, path, detail)
            self._role = (now, sources)
            return sources

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        serial = _vault_serial(certificate)
        action = f"revoke at {self._mount}/revoke"
        self._call(action, lambda client: client.secrets.pki.revoke_certificate(serial, mount_point=self._mount))
        # Vault's revoke endpoint takes no reason code; the CRL entry carries none.
        log.info("issuer %s: revoked serial %s at Vault %s (reason %s is not sent: Vault has no reason field)",
                 self.name, serial, self._mount, reason.value)

    def roots(self) -> list[x509.Certificate] | None:
        path = self._config.roots
        if path is None:
            return None
        try:
            return load_pem_certs(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise IssuerError(f"issuer {self.name}: cannot load roots from {path}: {exc}",
                              reason="RootsUnreadable") from exc

    def ca_chain(self) -> list[x509.Certificate]:
        """The issuing CA chain as Vault publishes it (intermediates and, from Vault 1.11, the root)."""
        ref = self._config.issuer_ref
        if ref:
            action = f"read of {self._mount}/issuer/{ref}"
            response = self._call(action, lambda c: c.secrets.pki.read_issuer(ref, mount_point=self._mount))
            return self._certs(action, self._data(action, response).get("ca_chain") or [])
        action = f"read of {self._mount}/ca_chain"
        text = self._call(action, lambda c: c.secrets.pki.read_ca_certificate_chain(mount_point=self._mount),
                          auth=False)
        return self._certs(action, [text])

    def close(self) -> None:
        """Close the calling thread's HTTP connections (other threads keep theirs)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.adapter.close()
            self._local.client = None

    # ------------------------------------------------------------- plumbing
    def _pki_path(self, op: str) -> str:
        mount, role = quote(self._mount, safe="/"), quote(self._config.role, safe="")
        if self._config.issuer_ref:
            return f"{mount}/issuer/{quote(self._config.issuer_ref, safe='')}/{op}/{role}"
        return f"{mount}/{op}/{role}"

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            cfg = self._config
            client = hvac.Client(
                url=cfg.url,
                token="",  # never fall back to VAULT_TOKEN / ~/.vault-token
                verify=str(cfg.ca_bundle) if cfg.ca_bundle is not None else True,
                timeout=cfg.timeout.total_seconds(),
                namespace=cfg.namespace or None,
            )
            self._local.client = client
        return client

    def _call(self, action: str, fn: Callable[[Any], T], *, auth: bool = True) -> T:
        """Run ``fn(client)``; retry only when Vault is unavailable, with exponential backoff."""
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._once(action, fn, auth)
            except IssuerUnavailable as exc:
                if attempt == self._attempts:
                    raise
                log.warning("%s; retrying in %gs (attempt %d of %d)", exc.message, delay, attempt + 1,
                            self._attempts)
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _once(self, action: str, fn: Callable[[Any], T], auth: bool) -> T:
        with self._converted(action):
            client = self._client()
            if not auth:
                client.token = ""
                return fn(client)
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

    # ------------------------------------------------------------------ auth
    def _login(self, client: Any) -> _Token:
        cfg = self._config
        client.token = ""
        now = self._clock.now()
        if cfg.auth == "token":
            value = self._read_secret(cfg.token_file, "token_file")
            client.token = value
            with self._converted("token lookup-self (auth = token)", login=True, secrets=(value,)):
                info = client.auth.token.lookup_self()
            data = self._data("token lookup-self", info)
            ttl = int(data.get("ttl") or 0)
            token = _Token(value, now, timedelta(seconds=ttl) if ttl else None, bool(data.get("renewable")))
        elif cfg.auth == "approle":
            role_id = self._read_secret(cfg.role_id_file, "role_id_file")
            secret_id = self._read_secret(cfg.secret_id_file, "secret_id_file")
            with self._converted(f"login at auth/{cfg.approle_mount}", login=True, secrets=(role_id, secret_id)):
                response = client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=False,
                                                     mount_point=cfg.approle_mount)
            token = self._token_from(f"login at auth/{cfg.approle_mount}", response, now)
        else:
            jwt = self._read_secret(cfg.jwt_file, "jwt_file")
            with self._converted(f"login at auth/{cfg.kubernetes_mount}", login=True, secrets=(jwt,)):
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
            with self._converted("token renew-self", login=True):
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
            raise IssuerError(self._msg(action, "Vault's answer carries no client token"), reason="BadResponse")
        ttl = int(auth.get("lease_duration") or 0)
        return _Token(value, now, timedelta(seconds=ttl) if ttl else None, bool(auth.get("renewable")))

    def _read_secret(self, path: Path | None, key: str) -> str:
        if path is None:
            raise IssuerError(f"issuer {self.name}: {key} is not set", reason="AuthConfig")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise IssuerError(f"issuer {self.name}: cannot read {key} {path}: {reason}",
                              reason="AuthConfig") from None
        if not value:
            raise IssuerError(f"issuer {self.name}: {key} {path} is empty", reason="AuthConfig")
        return value

    # ---------------------------------------------------------------- errors
    def _msg(self, action: str, detail: str) -> str:
        return f"issuer {self.name}: Vault {action} failed ({self._where}): {detail}"

    def _redact(self, text: str, secrets: tuple[str, ...]) -> str:
        token = self._token.value if self._token is not None else ""
        for secret in (*secrets, token):
            if len(secret) >= 4:
                text = text.replace(secret, _REDACTED)
        return text

    @contextmanager
    def _converted(self, action: str, *, login: bool = False, secrets: tuple[str, ...] = ()) -> Iterator[None]:
        """The one place where hvac's and requests' exceptions become certd errors.

        During a login, 400 counts as a credential rejection too: Vault answers a
        wrong AppRole secret_id with 400 ``invalid role or secret ID``.
        """
        cfg = self._config
        try:
            yield
        except CertdError:
            raise
        except hvac_errors.VaultError as exc:
            detail = self._redact(str(exc.args[0] if exc.args and exc.args[0] else type(exc).__name__)[:500],
                                  secrets)
            if login and isinstance(exc, hvac_errors.Forbidden | hvac_errors.InvalidRequest
                                    | hvac_errors.Unauthorized):
                raise IssuerError(self._msg(action, f"Vault rejected the credentials: {detail}"),
                                  reason="PermissionDenied") from exc
            if isinstance(exc, hvac_errors.Forbidden):
                raise IssuerError(self._msg(action, f"permission denied by Vault ({detail}); the token's "
                                                    f"policies must allow this path"),
                                  reason="PermissionDenied") from exc
            if isinstance(exc, hvac_errors.InvalidRequest):
                raise IssuerError(self._msg(action, f"Vault refused the request: {detail}"),
                                  reason="InvalidRequest") from exc
            if isinstance(exc, hvac_errors.VaultDown):
                raise IssuerUnavailable(self._msg(action, f"Vault is sealed or down (503): {detail}"),
                                        reason="VaultSealed") from exc
            if isinstance(exc, hvac_errors.RateLimitExceeded):
                raise IssuerUnavailable(self._msg(action, f"Vault answered 429 (rate limit or standby): {detail}"),
                                        reason="VaultRateLimited") from exc
            if isinstance(exc, hvac_errors.InternalServerError | hvac_errors.BadGateway):
                raise IssuerUnavailable(self._msg(action, f"Vault server error: {detail}"),
                                        reason="VaultServerError") from exc
            if isinstance(exc, hvac_errors.InvalidPath):
                raise IssuerError(self._msg(action, f"no such path in Vault (check mount, role, issuer_ref and "
                                                    f"namespace): {detail}"), reason="NotFound") from exc
            raise IssuerError(self._msg(action, f"{type(exc).__name__}: {detail}"), reason="VaultError") from exc
        except requests.exceptions.SSLError as exc:
            trust = f"ca_bundle {cfg.ca_bundle}" if cfg.ca_bundle is not None else "the system trust store"
            raise IssuerError(self._msg(action, f"Vault's TLS certificate at {cfg.url} did not verify against "
                                                f"{trust} ({tls_reason(exc)})"),
                              reason="TLSVerifyFailed") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            if isinstance(exc, requests.exceptions.Timeout):
                kind = f"timed out after {cfg.timeout.total_seconds():g}s"
            else:
                kind = "connection failed"
            raise IssuerUnavailable(self._msg(action, f"cannot reach Vault at {cfg.url}: {kind}"),
                                    reason="VaultUnreachable") from exc
        except requests.exceptions.RequestException as exc:
            raise IssuerUnavailable(self._msg(action, f"request to Vault failed: {type(exc).__name__}"),
                                    reason="VaultUnreachable") from exc
        except OSError as exc:  # requests: a ca_bundle path that does not exist or cannot be read
            raise IssuerError(self._msg(action, f"cannot use ca_bundle {cfg.ca_bundle}: {exc}"),
                              reason="TLSVerifyFailed") from exc

    def _data(self, action: str, response: Any) -> dict[str, Any]:
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise IssuerError(self._msg(action, "Vault's answer has no data"), reason="BadResponse")
        warnings = response.get("warnings") or []
        for warning in [warnings] if isinstance(warnings, str) else warnings:
            # Debug, not warning: Vault warns about the request's shape (names it ignored, a TTL it capped);
            # what matters to an operator is checked by certd itself (_check_lifetime).
            log.debug("issuer %s: Vault warned on %s (%s): %s", self.name, action, self._where, warning)
        return data

    def _certs(self, action: str, pems: Any) -> list[x509.Certificate]:
        """Certificates from a list of PEM strings (each may hold several); an empty result is an error."""
        out: list[x509.Certificate] = []
        try:
            for pem in pems if isinstance(pems, list) else []:
                if pem:
                    out += x509.load_pem_x509_certificates(str(pem).encode())
        except ValueError as exc:
            raise IssuerError(self._msg(action, f"Vault returned a malformed certificate: {exc}"),
                              reason="BadResponse") from exc
        if not out:
            raise IssuerError(self._msg(action, "Vault returned no certificate"), reason="BadResponse")
        return out


def build(name: str, config: VaultIssuerConfig, accounts: AccountStore) -> VaultIssuer:
    """Vault needs no account store: its identity is the auth method in the config."""
    return VaultIssuer(name, config)
