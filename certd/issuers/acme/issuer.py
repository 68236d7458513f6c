"""An ACME CA (RFC 8555) as a certd issuer: the ``Issuer``, ``RenewalInfo`` and ``KeyRollover`` protocols.

This module only sequences the steps and names them; each step's knowledge lives next door: ``account`` (directory,
account, per-thread clients, key change), ``order`` (orders, challenges, chains), ``ari`` (RFC 9773),
``network`` (retries) and ``errors`` (problem documents into certd errors). Every public method runs its steps
under ``errors.converted``, so callers only ever see ``IssuerError`` and its subclasses, named
``ACME <issuer>: <certificate>: <step>: ...``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from josepy.errors import DeserializationError
from josepy.json_util import field as jose_field

from certd.config.model import AcmeIssuerConfig
from certd.core.clock import Clock, SystemClock
from certd.core.durations import format_duration
from certd.core.kinds import EventKind
from certd.errors import CertdError, IssuerError
from certd.inputs import read_file
from certd.issuers.acme import ari
from certd.issuers.acme.account import AcmeAccount
from certd.issuers.acme.errors import converted, problem_text
from certd.issuers.acme.network import attempt_deadline, signed_post
from certd.issuers.acme.order import Orders
from certd.issuers.base import AccountStore, Issued, IssueRequest, RenewalWindow
from certd.issuers.challenges.base import ChallengeSolver
from certd.pki.certs import load_pem_certs
from certd.pki.revocation import RevocationReason

__all__ = ["AcmeIssuer", "build"]

log = logging.getLogger("certd.issuers.acme")


class _Revocation(messages.Revocation):
    """``revokeCert`` whose ``reason`` may be left out (``acme.messages.Revocation`` always sends one)."""

    reason: int | None = jose_field("reason", omitempty=True)  # type: ignore[assignment]


class AcmeIssuer:
    """Issues through one ACME directory with one account; ``issue`` is safe from many threads."""

    def __init__(
        self,
        name: str,
        config: AcmeIssuerConfig,
        accounts: AccountStore,
        *,
        solver: ChallengeSolver | None = None,
        clock: Clock | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._account = AcmeAccount(name, config, accounts, attempts=max(1, attempts), backoff=backoff, sleep=sleep)
        self._orders = Orders(name, config, solver=solver, sleep=sleep)
        self.roots()  # a missing or broken roots file fails building the issuer, inside the step that needs it

    # -- Issuer --------------------------------------------------------------------
    def roots(self) -> list[x509.Certificate] | None:
        """The pinned roots, read at every use (like the Vault issuer's): a root the operator adds to the file
        (a CA that had to make a new one) counts from the next attempt on, without a reload."""
        path = self._config.roots
        if path is None:
            return None
        try:
            return load_pem_certs(read_file(path))
        except (OSError, ValueError) as exc:
            raise IssuerError(f"issuer {self.name}: cannot load roots from {path}: {exc}",
                              reason="RootsUnreadable") from exc

    def issue(self, request: IssueRequest) -> Issued:
        """One order under the attempt's deadline (``attempt_timeout``), every request of it included — the
        directory, the account, a registration made again: a CA that hangs cannot hold a worker."""
        limit = self._config.attempt_timeout
        said = (f"the attempt ran out of its {format_duration(limit)} (issuers.{self.name}.attempt_timeout) "
                "waiting for the CA")
        with attempt_deadline(limit.total_seconds(), said):
            return self._issue_or_register(request)

    def _issue_or_register(self, request: IssueRequest) -> Issued:
        """One order; a CA that forgot the account gets it registered again and the order placed once more."""
        try:
            return self._issue(request)
        except IssuerError as err:
            deactivated = err.reason == "unauthorized" and "deactivated" in err.message.lower()
            if err.reason != "accountDoesNotExist" and not deactivated:
                raise
            lost, why = self._account.uri, "the account is deactivated" if deactivated else "accountDoesNotExist"
        with self._converted(request.certificate, "account"):
            uri = self._account.register_again(lost or "", new_key=deactivated)
        try:
            issued = self._issue(request)
        except IssuerError as err:
            if err.reason != "accountDoesNotExist":
                raise
            # Forgotten again moments after it was made: a CA out of step with itself (a replica behind, a
            # reset in progress), not an account an operator must fix. Retried on the normal backoff, which
            # keeps attempts coming up to the deadline, instead of the hour a hopeless failure waits.
            raise IssuerError(f"{err.message} (again, right after registering {uri}: retried)",
                              reason=err.reason, retryable=True) from err
        notice = (EventKind.ACCOUNT_REGISTERED_AGAIN,
                  f"issuer {self.name}: the CA answered {why} for {lost}; registered again as {uri}")
        return replace(issued, notices=(*issued.notices, notice))

    def _issue(self, request: IssueRequest) -> Issued:
        with self._converted(request.certificate, "order"):
            client = self._account.client()
        return self._order(client, request)

    def _order(self, client: acme_client.ClientV2, request: IssueRequest) -> Issued:
        with self._converted(request.certificate, "order"):
            order = self._orders.place(client, request)
        with self._converted(request.certificate, "challenge"):
            self._orders.authorize(client, order)
        with self._converted(request.certificate, "finalize"):
            fullchains = self._orders.finalize(client, order)
        return self._orders.choose_chain(request.certificate, fullchains)

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        self.revoke_reporting(certificate, reason)

    def revoke_reporting(self, certificate: x509.Certificate, reason: RevocationReason) -> str | None:
        """Revoke with ``reason`` (RFC 8555 section 7.6); returns why the reason was dropped, or None.

        A CA that refuses reason codes (``badRevocationReason``: OpenBao takes only 0 or none) gets the request
        once more without a reason: the certificate must stop being trusted, which matters more than the reason
        code in the CRL. That the reason was dropped is logged at warning and returned, for the event.
        """
        with self._converted(None, "revoke"):
            client = self._account.client()
            try:
                self._post_revocation(client, certificate, reason.code)
                return None
            except messages.Error as err:
                if err.code == "alreadyRevoked":
                    log.info("%s: serial %x was already revoked", self.name, certificate.serial_number)
                    return None
                if err.code != "badRevocationReason":
                    raise
                refused = problem_text(err)
            try:
                self._post_revocation(client, certificate, None)
            except messages.Error as err:
                if err.code != "alreadyRevoked":
                    raise
                log.info("%s: serial %x was already revoked", self.name, certificate.serial_number)
                return None  # nothing was revoked now, so no reason was dropped now
            note = f"the CA refused reason {reason} ({refused}); revoked without a reason"
            if reason is RevocationReason.UNSPECIFIED:  # an absent reasonCode means unspecified: nothing lost
                log.info("%s: serial %x: %s", self.name, certificate.serial_number, note)
                return None
            log.warning("%s: serial %x: %s", self.name, certificate.serial_number, note)
            return note

    @staticmethod
    def _post_revocation(client: acme_client.ClientV2, certificate: x509.Certificate, code: int | None) -> None:
        """Not ``ClientV2.revoke``: that always sends a reason, and the retry without one must not."""
        response = signed_post(client, client.directory["revokeCert"],
                               _Revocation(certificate=certificate, reason=code))
        if response.status_code != 200:
            raise acme_errors.ClientError(f"revocation answered HTTP {response.status_code}, not 200")

    # -- RenewalInfo (RFC 9773) ------------------------------------------------------
    def cert_id(self, certificate: x509.Certificate) -> str:
        return ari.cert_id(certificate)

    def renewal_window(self, certificate: x509.Certificate, issuer_cert: x509.Certificate) -> RenewalWindow | None:
        """The CA's suggested window, or None when it has no ARI or cannot answer now.

        ARI is advice: a failure to fetch it is logged and the lifetime rule decides.
        """
        try:
            with self._converted(None, "renewal-info"):
                url = ari.renewal_info_url(self._account.directory(), certificate)
                if url is None:
                    return None
                response = self._account.client().net.get(url, content_type="application/json")
                return ari.window_from(response, self._clock.now())
        except CertdError as err:
            log.warning("%s: renewal info unavailable, the lifetime rule decides: %s", self.name, err)
            return None
        except DeserializationError as err:
            log.warning("%s: renewal info not understood, the lifetime rule decides: %s", self.name, err)
            return None

    # -- KeyRollover (RFC 8555 section 7.3.5) -------------------------------------------
    def rollover(self) -> str:
        """Replace the account key at the CA, then in the inventory; returns the account URL."""
        with self._converted(None, "key-rollover"):
            return self._account.rollover()

    # -- error conversion ------------------------------------------------------------
    def _converted(self, certificate: str | None, step: str) -> AbstractContextManager[None]:
        where = f"ACME {self.name}" + (f": {certificate}" if certificate else "") + f": {step}"
        return converted(where, directory=self._config.directory, ca_bundle=self._config.ca_bundle,
                         last_response=self._last_response)

    def _last_response(self) -> requests.Response | None:
        net = self._account.network()
        return net.last_response if net is not None else None


def build(name: str, config: AcmeIssuerConfig, accounts: AccountStore) -> AcmeIssuer:
    """The issuer for one ``[issuers.NAME]`` table of type ``acme`` (see ``certd.issuers.build_issuer``)."""
    return AcmeIssuer(name, config, accounts)
