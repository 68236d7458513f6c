"""The one door to Vault's HTTP API: hvac clients, retries, and Vault's errors turned into certd's.

Why it is built this way:

* All HTTP goes through hvac, so Vault's paths, headers (``X-Vault-Token``,
  ``X-Vault-Namespace``) and error bodies are handled by the client Vault's
  users already trust; paths hvac has no helper for (the issuer-pinned
  ``<mount>/issuer/<ref>/sign/<role>``) go through hvac's generic ``write_data``.
* Threads: one hvac client per thread. hvac keeps the token as mutable adapter
  state on a ``requests.Session``, which is not documented as thread-safe; a
  shared client would let one worker's re-login swap the token under another
  worker's request. Per-thread clients keep connection reuse per worker.
* Errors are converted in one place (``VaultSession.converted``), the way
  certbot's ``ClientNetwork._check_response`` does for ACME; only
  unavailability (sealed, 429, 5xx, connection errors, timeouts) is retried,
  with bounded exponential backoff, because a refused request fails the same
  way again.
* Every message that leaves here is scrubbed of the secrets in play: those the
  caller names, and the token the authenticator holds at the time of the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions as hvac_errors
import requests
import requests.adapters
from cryptography import x509

from certd.config.model import VaultIssuerConfig
from certd.core.durations import format_duration
from certd.errors import CertdError, IssuerError, IssuerUnavailable, tls_reason

__all__ = ["Authenticator", "VaultSession"]

log = logging.getLogger("certd.issuers.vault")  # one logger for the whole Vault issuer, whichever module speaks

T = TypeVar("T")

_REDACTED = "[redacted]"


class Authenticator(Protocol):
    """Puts a valid token on an hvac client before a call (``auth.VaultAuth``).

    ``run`` raises ``IssuerError``/``IssuerUnavailable`` from a failed login and
    lets the call's own hvac exceptions through for ``VaultSession`` to convert.
    """

    def run(self, client: Any, action: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` with a token on ``client``."""
        ...


class _Deadline(threading.local):
    """The calling thread's attempt: (monotonic end, what to say when it passes), or None outside one."""

    value: tuple[float, str] | None = None

    def left(self) -> float | None:
        """Seconds the attempt has left (None: no attempt); raises once it is spent."""
        if self.value is None:
            return None
        left = self.value[0] - time.monotonic()
        if left <= 0:
            raise IssuerUnavailable(self.value[1], reason="AttemptDeadline")
        return left


class _BoundedAdapter(requests.adapters.HTTPAdapter):
    """Each request's timeout shrinks to what the attempt has left, and none starts once it is spent: a Vault
    that accepts and never answers, or answers request after request slowly, cannot hold a worker."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        left = self._deadline.left()
        if left is not None:
            wanted = timeout if isinstance(timeout, int | float) else left
            timeout = max(0.1, min(float(wanted), left))
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


class VaultSession:
    """HTTP to one Vault for one issuer: per-thread hvac clients, error conversion, retries; thread-safe.

    ``secrets_in_play`` is asked, when an error is being worded, which secrets
    (the token held right now) must not appear in it.
    """

    def __init__(
        self,
        name: str,
        config: VaultIssuerConfig,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        secrets_in_play: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.name = name
        self._config = config
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._secrets_in_play = secrets_in_play
        self._local = threading.local()
        self._deadline = _Deadline()
        self.mount = config.mount.strip("/")
        where = f"{config.url}, mount {self.mount}, role {config.role}"
        self.where = where + (f", namespace {config.namespace}" if config.namespace else "")

    def client(self) -> Any:
        """The calling thread's own hvac client: hvac keeps the token on a ``requests.Session`` (see above)."""
        client = getattr(self._local, "client", None)
        if client is None:
            cfg = self._config
            http = requests.Session()
            bounded = _BoundedAdapter(self._deadline)
            http.mount("https://", bounded)
            http.mount("http://", bounded)
            http.verify = str(cfg.ca_bundle) if cfg.ca_bundle is not None else True  # hvac takes the session's
            client = hvac.Client(
                session=http,
                url=cfg.url,
                token="",  # never fall back to VAULT_TOKEN / ~/.vault-token
                verify=str(cfg.ca_bundle) if cfg.ca_bundle is not None else True,
                timeout=cfg.timeout.total_seconds(),
                namespace=cfg.namespace or None,
            )
            self._local.client = client
        return client

    def close(self) -> None:
        """Close the calling thread's HTTP connections (other threads keep theirs)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.adapter.close()
            self._local.client = None

    @contextmanager
    def attempt(self, limit: timedelta) -> Iterator[None]:
        """One whole issue under ``limit`` (``attempt_timeout``), on the calling thread."""
        said = (f"issuer {self.name}: the attempt ran out of its {format_duration(limit)} "
                f"(issuers.{self.name}.attempt_timeout) waiting for Vault ({self.where})")
        self._deadline.value = (time.monotonic() + limit.total_seconds(), said)
        try:
            yield
        finally:
            self._deadline.value = None

    def call(self, action: str, fn: Callable[[Any], T], *, auth: Authenticator | None) -> T:
        """Run ``fn(client)``, authenticated by ``auth`` (None: with no token at all).

        Retries only when Vault is unavailable, with exponential backoff;
        raises ``IssuerError`` or, once the attempts are spent, ``IssuerUnavailable``.
        """
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._once(action, fn, auth)
            except IssuerUnavailable as exc:
                if attempt == self._attempts:
                    raise
                left = self._deadline.left()
                if left is not None and left <= delay:
                    raise IssuerUnavailable(f"{exc.message}; no time left to retry "
                                            f"(issuers.{self.name}.attempt_timeout)", reason=exc.reason) from exc
                log.warning("%s; retrying in %gs (attempt %d of %d)", exc.message, delay, attempt + 1,
                            self._attempts)
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _once(self, action: str, fn: Callable[[Any], T], auth: Authenticator | None) -> T:
        with self.converted(action):
            client = self.client()
            if auth is None:
                client.token = ""
                return fn(client)
            return auth.run(client, action, fn)

    # ---------------------------------------------------------------- errors
    def message(self, action: str, detail: str) -> str:
        """The wording of every Vault failure: which issuer, what it did, where."""
        return f"issuer {self.name}: Vault {action} failed ({self.where}): {detail}"

    def redact(self, text: str, secrets: tuple[str, ...] = ()) -> str:
        """``text`` with ``secrets`` and the token in play replaced (short strings would hit innocent text)."""
        for secret in (*secrets, *self._secrets_in_play()):
            if len(secret) >= 4:
                text = text.replace(secret, _REDACTED)
        return text

    @contextmanager
    def converted(self, action: str, *, login: bool = False, secrets: tuple[str, ...] = ()) -> Iterator[None]:
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
            detail = self.redact(str(exc.args[0] if exc.args and exc.args[0] else type(exc).__name__)[:500],
                                 secrets)
            if login and isinstance(exc, hvac_errors.Forbidden | hvac_errors.InvalidRequest
                                    | hvac_errors.Unauthorized):
                raise IssuerError(self.message(action, f"Vault rejected the credentials: {detail}"),
                                  reason="PermissionDenied") from exc
            if isinstance(exc, hvac_errors.Forbidden):
                raise IssuerError(self.message(action, f"permission denied by Vault ({detail}); the token's "
                                                       f"policies must allow this path"),
                                  reason="PermissionDenied") from exc
            if isinstance(exc, hvac_errors.InvalidRequest):
                raise IssuerError(self.message(action, f"Vault refused the request: {detail}"),
                                  reason="InvalidRequest") from exc
            if isinstance(exc, hvac_errors.VaultDown):
                raise IssuerUnavailable(self.message(action, f"Vault is sealed or down (503): {detail}"),
                                        reason="VaultSealed") from exc
            if isinstance(exc, hvac_errors.RateLimitExceeded):
                raise IssuerUnavailable(self.message(action, f"Vault answered 429 (rate limit or standby): {detail}"),
                                        reason="VaultRateLimited") from exc
            if isinstance(exc, hvac_errors.InternalServerError | hvac_errors.BadGateway):
                raise IssuerUnavailable(self.message(action, f"Vault server error: {detail}"),
                                        reason="VaultServerError") from exc
            if isinstance(exc, hvac_errors.InvalidPath):
                raise IssuerError(self.message(action, f"no such path in Vault (check mount, role, issuer_ref and "
                                                       f"namespace): {detail}"), reason="NotFound") from exc
            raise IssuerError(self.message(action, f"{type(exc).__name__}: {detail}"), reason="VaultError") from exc
        except requests.exceptions.SSLError as exc:
            trust = f"ca_bundle {cfg.ca_bundle}" if cfg.ca_bundle is not None else "the system trust store"
            raise IssuerError(self.message(action, f"Vault's TLS certificate at {cfg.url} did not verify against "
                                                   f"{trust} ({tls_reason(exc)})"),
                              reason="TLSVerifyFailed") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            if isinstance(exc, requests.exceptions.Timeout):
                kind = f"timed out after {cfg.timeout.total_seconds():g}s"
            else:
                kind = "connection failed"
            raise IssuerUnavailable(self.message(action, f"cannot reach Vault at {cfg.url}: {kind}"),
                                    reason="VaultUnreachable") from exc
        except requests.exceptions.RequestException as exc:
            raise IssuerUnavailable(self.message(action, f"request to Vault failed: {type(exc).__name__}"),
                                    reason="VaultUnreachable") from exc
        except OSError as exc:  # requests: a ca_bundle path that does not exist or cannot be read
            raise IssuerError(self.message(action, f"cannot use ca_bundle {cfg.ca_bundle}: {exc}"),
                              reason="TLSVerifyFailed") from exc

    # -------------------------------------------------------------- answers
    def data(self, action: str, response: Any) -> dict[str, Any]:
        """The ``data`` of a Vault answer; its ``warnings`` go to debug, a missing ``data`` is BadResponse."""
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise IssuerError(self.message(action, "Vault's answer has no data"), reason="BadResponse")
        warnings = response.get("warnings") or []
        for warning in [warnings] if isinstance(warnings, str) else warnings:
            # Debug, not warning: Vault warns about the request's shape (names it ignored, a TTL it capped);
            # what matters to an operator is checked by certd itself (the issuer's lifetime check).
            log.debug("issuer %s: Vault warned on %s (%s): %s", self.name, action, self.where, warning)
        return data

    def certs(self, action: str, pems: Any) -> list[x509.Certificate]:
        """Certificates from a list of PEM strings (each may hold several); an empty result is an error."""
        out: list[x509.Certificate] = []
        try:
            for pem in pems if isinstance(pems, list) else []:
                if pem:
                    out += x509.load_pem_x509_certificates(str(pem).encode())
        except ValueError as exc:
            raise IssuerError(self.message(action, f"Vault returned a malformed certificate: {exc}"),
                              reason="BadResponse") from exc
        if not out:
            raise IssuerError(self.message(action, "Vault returned no certificate"), reason="BadResponse")
        return out
