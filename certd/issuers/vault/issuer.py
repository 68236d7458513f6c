"""What certd asks of Vault's PKI engine and what it checks in the answer.

Why it is built this way:

* The key stays local by default: certd's CSR is sent to ``sign``. Only with
  ``vault_generates_key`` is ``issue`` used, and the key Vault returns is handed
  to the pipeline and never logged.
* Quiet when healthy: Vault roles take the CN and SANs from a CSR by default
  (``use_csr_common_name``/``use_csr_sans``) and answer every ``sign`` that also
  sends ``common_name``/``alt_names`` with two warnings. So the role is read
  once an hour and only what the role will not take from the CSR is sent; if
  the token may not read the role, the names are sent as before (correct for any
  role). Vault's ``warnings`` are logged at debug: they describe the request,
  not a fault. What an operator must hear about -- a certificate shorter than
  the lifetime asked for, as when the role's ``max_ttl`` caps it -- certd checks
  itself.
* HTTP, retries and error wording belong to ``client``, the token to ``auth``:
  this module only decides what to send and judges what came back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import hvac.exceptions as hvac_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certd.config.model import VaultIssuerConfig
from certd.core.clock import Clock, SystemClock
from certd.core.durations import format_duration
from certd.errors import IssuerError
from certd.inputs import read_file
from certd.issuers.base import AccountStore, Issued, IssueRequest
from certd.issuers.vault.auth import VaultAuth
from certd.issuers.vault.client import VaultSession
from certd.pki.certs import is_self_signed, load_pem_certs
from certd.pki.keys import is_ip, load_key_pem
from certd.pki.revocation import RevocationReason

__all__ = ["VaultIssuer", "build"]

log = logging.getLogger("certd.issuers.vault")  # one logger for the whole Vault issuer, whichever module speaks

_ROLE_REFRESH = timedelta(hours=1)  # a role edited under a running daemon is picked up within this time
# How much shorter than asked a certificate may be before it is worth a warning: issuance time and clock skew
# between certd and Vault, not a cap.
_LIFETIME_SLACK = timedelta(minutes=2)


@dataclass(frozen=True)
class _NameSources:
    """Whether the role takes the CN / the SANs from the CSR (Vault's defaults: both true)."""

    csr_common_name: bool = True
    csr_sans: bool = True


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
        # The session scrubs the token the auth holds at the time of an error, so it asks the auth late.
        self._session = VaultSession(name, config, attempts=attempts, backoff=backoff, sleep=sleep,
                                     secrets_in_play=lambda: self._auth.held())
        self._auth = VaultAuth(name, config, self._session, clock=self._clock)
        self._role_lock = threading.Lock()
        self._role: tuple[datetime, _NameSources | None] | None = None  # when read, and what (None: unreadable)
        self._mount = self._session.mount

    # ------------------------------------------------------------------ Issuer
    def issue(self, request: IssueRequest) -> Issued:
        """One issue under ``attempt_timeout``: a Vault that hangs or crawls cannot hold a worker."""
        with self._session.attempt(self._config.attempt_timeout):
            return self._issue(request)

    def _issue(self, request: IssueRequest) -> Issued:
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
        session = self._session
        response = session.call(action, lambda client: client.write_data(path, data=params), auth=self._auth)
        data = session.data(action, response)
        leaf = session.certs(action, [data.get("certificate")])[0]
        pems = data.get("ca_chain") or [data.get("issuing_ca")]
        chain = tuple(c for c in session.certs(action, pems) if c != leaf and not is_self_signed(c))
        key = None
        if cfg.vault_generates_key:
            try:
                key = load_key_pem(str(data.get("private_key") or "").encode())
            except ValueError as exc:
                raise IssuerError(session.message(action, f"Vault returned no usable private key ({exc})"),
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
                        format_duration(request.lifetime), self._session.where)

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

            response = self._session.call(action, read, auth=self._auth)
            sources: _NameSources | None = None
            if isinstance(response, dict):
                data = self._session.data(action, response)
                sources = _NameSources(csr_common_name=data.get("use_csr_common_name") is not False,
                                       csr_sans=data.get("use_csr_sans") is not False)
            else:
                detail = "no such role" if response is None else self._session.redact(str(response).strip()[:200])
                log.info("issuer %s: cannot read role %s at Vault %s (%s), so the names are sent with every sign "
                         "request and Vault may warn about them", self.name, self._config.role, path, detail)
            self._role = (now, sources)
            return sources

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        serial, mount = _vault_serial(certificate), self._mount
        action = f"revoke at {mount}/revoke"
        self._session.call(action, lambda c: c.secrets.pki.revoke_certificate(serial, mount_point=mount),
                           auth=self._auth)
        # Vault's revoke endpoint takes no reason code; the CRL entry carries none.
        log.info("issuer %s: revoked serial %s at Vault %s (reason %s is not sent: Vault has no reason field)",
                 self.name, serial, self._mount, reason.value)

    def roots(self) -> list[x509.Certificate] | None:
        path = self._config.roots
        if path is None:
            return None
        try:
            return load_pem_certs(read_file(path))
        except (OSError, ValueError) as exc:
            raise IssuerError(f"issuer {self.name}: cannot load roots from {path}: {exc}",
                              reason="RootsUnreadable") from exc

    def ca_chain(self) -> list[x509.Certificate]:
        """The issuing CA chain as Vault publishes it (intermediates and, from Vault 1.11, the root)."""
        ref, session = self._config.issuer_ref, self._session
        if ref:
            action = f"read of {self._mount}/issuer/{ref}"
            response = session.call(action, lambda c: c.secrets.pki.read_issuer(ref, mount_point=self._mount),
                                    auth=self._auth)
            return session.certs(action, session.data(action, response).get("ca_chain") or [])
        action = f"read of {self._mount}/ca_chain"
        text = session.call(action, lambda c: c.secrets.pki.read_ca_certificate_chain(mount_point=self._mount),
                            auth=None)  # public: the CA chain needs no token
        return session.certs(action, [text])

    def close(self) -> None:
        """Close the calling thread's HTTP connections (other threads keep theirs)."""
        self._session.close()

    def _pki_path(self, op: str) -> str:
        mount, role = quote(self._mount, safe="/"), quote(self._config.role, safe="")
        if self._config.issuer_ref:
            return f"{mount}/issuer/{quote(self._config.issuer_ref, safe='')}/{op}/{role}"
        return f"{mount}/{op}/{role}"


def build(name: str, config: VaultIssuerConfig, accounts: AccountStore) -> VaultIssuer:
    """Vault needs no account store: its identity is the auth method in the config."""
    return VaultIssuer(name, config)
