"""An ACME CA (RFC 8555) as a certd issuer, through the ``acme`` and ``josepy`` packages.

Why it is built this way:

* One ``ClientNetwork``/``ClientV2`` per worker thread, sharing one account key
  and account URL: ``ClientNetwork`` keeps a single nonce pool and a
  ``requests.Session`` and is not safe to share between threads. The
  directory is fetched once and shared (it is immutable JSON).
* The account (an EC P-256 key, signed with ES256) lives in the inventory
  through ``AccountStore``, so every replica on one database uses the same
  account, sealed when ``[database] key_file`` is set. It is created on first
  use, with External Account Binding when configured.
* ``acme`` retries a ``badNonce`` only once, and a busy client against a CA
  that rejects nonces (Pebble: 5% by default) then fails now and then; our
  network class retries ``badNonce`` a bounded number of times, retries 5xx
  and connection errors with exponential backoff and jitter, honours a short
  ``Retry-After`` in place and turns a long one into ``retry_after`` on the
  error, so the scheduler waits instead of the worker.
* ``acme``'s ``NewOrder`` has no ``replaces`` field (RFC 9773): ``_NewOrder``
  adds it. A CA that refuses the ``replaces`` (already replaced, or an
  identifier it does not know) gets the order again without it.
* Polling is ours, not ``acme``'s fixed one-second sleep: it starts at a
  quarter second and doubles, honouring ``Retry-After``. Most of an order's
  time is polling, so this is where per-certificate latency is won.
* Every failure is an ``IssuerError`` naming the certificate, the step and
  the CA's problem document (type and detail), never a key or EAB secret.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from certd import __version__
from certd.config.model import AcmeIssuerConfig
from certd.core.clock import Clock, SystemClock
from certd.errors import CertdError, IssuerError, IssuerUnavailable, RateLimited, tls_reason
from certd.issuers.base import AccountStore, Issued, IssueRequest, RenewalWindow, RevocationReason
from certd.issuers.challenges.base import Challenge, ChallengeSolver
from certd.pki.certs import is_self_signed, load_pem_certs
from certd.pki.keys import is_ip

__all__ = ["AcmeIssuer", "build", "cert_id"]

log = logging.getLogger("certd.issuers.acme")

T = TypeVar("T")

_BAD_NONCE_RETRIES = 10  # Pebble at 50% rejection: 10 in a row is ~1 in 1000 requests; bounded, not endless
_RETRY_IN_PLACE = 30.0  # seconds: a longer Retry-After goes back to the scheduler with the error
_POLL_FIRST = 0.05  # Pebble and Boulder validate in milliseconds; doubling reaches the cap after 6 polls
_POLL_MAX = 3.0
_ORDER_TIMEOUT = timedelta(minutes=5)
_ARI_DEFAULT_RETRY = timedelta(hours=6)  # RFC 9773 section 4.3.3 suggests polling about every six hours


class _NewOrder(messages.NewOrder):
    """``newOrder`` with RFC 9773's ``replaces``, which ``acme.messages.NewOrder`` lacks."""

    replaces: str | None = jose_field("replaces", omitempty=True)


class _Revocation(messages.Revocation):
    """``revokeCert`` whose ``reason`` may be left out (``acme.messages.Revocation`` always sends one)."""

    reason: int | None = jose_field("reason", omitempty=True)  # type: ignore[assignment]


def cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 certificate identifier: base64url(AKI keyIdentifier) "." base64url(DER serial)."""
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise IssuerError("certificate has no Authority Key Identifier; ARI cannot name it") from exc
    if aki.key_identifier is None:
        raise IssuerError("certificate's Authority Key Identifier has no keyIdentifier; ARI cannot name it")
    serial = certificate.serial_number
    serial_der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return f"{_b64(aki.key_identifier)}.{_b64(serial_der)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _retry_after_seconds(response: requests.Response | None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), if the server sent one."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _problem(error: messages.Error) -> str:
    """A problem document as one line: ``code: detail (subproblems)``."""
    text = f"{error.code or error.typ}: {error.detail or error.description or 'no detail given'}"
    subs = getattr(error, "subproblems", None) or ()
    parts = []
    for sub in subs:
        ident = getattr(getattr(sub, "identifier", None), "value", None)
        parts.append(f"{ident + ': ' if ident else ''}{getattr(sub, 'detail', '')}")
    return f"{text} ({'; '.join(parts)})" if parts else text


class _Network(acme_client.ClientNetwork):
    """``ClientNetwork`` with bounded retries, and the last response kept for its ``Retry-After``.

    One per thread, like its parent, so ``last_response`` needs no lock.
    """

    def __init__(self, *args: Any, attempts: int, backoff: float, sleep: Callable[[float], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.last_response: requests.Response | None = None
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response: requests.Response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        delay = retry_after if retry_after is not None else self._backoff * 2**attempt
        self._sleep(delay * random.uniform(1.0, 1.25))  # noqa: S311 - jitter, not a secret

    def _with_retries(self, call: Callable[[], requests.Response]) -> requests.Response:
        bad_nonces = 0
        attempt = 0
        while True:
            self.last_response = None
            try:
                return call()
            except messages.Error as err:
                if err.code == "badNonce" and bad_nonces < _BAD_NONCE_RETRIES:
                    bad_nonces += 1
                    continue
                status = self.last_response.status_code if self.last_response is not None else 0
                if not self._retry_in_place(status, attempt):
                    raise
            except acme_errors.ClientError:
                status = self.last_response.status_code if self.last_response is not None else 0
                if status < 500 or attempt + 1 >= self._attempts:
                    raise
            except (requests.ConnectionError, requests.Timeout):
                if attempt + 1 >= self._attempts:
                    raise
            self._pause(attempt, _retry_after_seconds(self.last_response))
            attempt += 1

    def _retry_in_place(self, status: int, attempt: int) -> bool:
        """5xx (and 503 with a short ``Retry-After``) are worth another try here; 429 never is."""
        if status < 500 or attempt + 1 >= self._attempts:
            return False
        wait = _retry_after_seconds(self.last_response)
        return wait is None or wait <= _RETRY_IN_PLACE

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        return self._with_retries(lambda: self._post_once(*args, **kwargs))

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        parent_get = super().get
        return self._with_retries(lambda: parent_get(*args, **kwargs))


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
        self._accounts = accounts
        self._solver = solver
        self._clock: Clock = clock or SystemClock()
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._directory: messages.Directory | None = None
        self._key: JWK | None = None
        self._account: messages.RegistrationResource | None = None
        self._generation = 0  # bumped by a key rollover: every thread's client is rebuilt with the new key
        self._roots: list[x509.Certificate] | None = None
        if config.roots is not None:
            self._roots = load_pem_certs(Path(config.roots).read_bytes())

    # -- Issuer --------------------------------------------------------------------
    def roots(self) -> list[x509.Certificate] | None:
        return self._roots

    def issue(self, request: IssueRequest) -> Issued:
        with self._converted(request.certificate, "order"):
            client = self._client()
            order = self._new_order(client, request)
            self._authorize(client, request.certificate, order)
        with self._converted(request.certificate, "finalize"):
            fullchains = self._finalize(client, order, request.csr)
        return self._choose_chain(request.certificate, fullchains)

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        self.revoke_reporting(certificate, reason)

    def revoke_reporting(self, certificate: x509.Certificate, reason: RevocationReason) -> str | None:
        """Revoke with ``reason`` (RFC 8555 section 7.6); returns why the reason was dropped, or None.

        A CA that refuses reason codes (``badRevocationReason``: OpenBao takes only 0 or none) gets the request
        once more without a reason: the certificate must stop being trusted, which matters more than the reason
        code in the CRL. That the reason was dropped is logged at warning and returned, for the event.
        """
        with self._converted(None, "revoke"):
            client = self._client()
            try:
                self._post_revocation(client, certificate, reason.code)
                return None
            except messages.Error as err:
                if err.code == "alreadyRevoked":
                    log.info("%s: serial %x was already revoked", self.name, certificate.serial_number)
                    return None
                if err.code != "badRevocationReason":
                    raise
                refused = _problem(err)
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
        response = client._post(client.directory["revokeCert"], _Revocation(certificate=certificate, reason=code))
        if response.status_code != 200:
            raise acme_errors.ClientError(f"revocation answered HTTP {response.status_code}, not 200")

    # -- RenewalInfo (RFC 9773) ------------------------------------------------------
    def cert_id(self, certificate: x509.Certificate) -> str:
        return cert_id(certificate)

    def renewal_window(self, certificate: x509.Certificate, issuer_cert: x509.Certificate) -> RenewalWindow | None:
        """The CA's suggested window, or None when it has no ARI or cannot answer now.

        ARI is advice: a failure to fetch it is logged and the lifetime rule decides.
        """
        try:
            with self._converted(None, "renewal-info"):
                directory = self._get_directory()
                base = directory.to_partial_json().get("renewalInfo")
                if not base:
                    return None
                net = self._client().net
                response = net.get(f"{base.rstrip('/')}/{cert_id(certificate)}", content_type="application/json")
                info = messages.RenewalInfo.from_json(response.json())
        except CertdError as err:
            log.warning("%s: renewal info unavailable, the lifetime rule decides: %s", self.name, err)
            return None
        except DeserializationError as err:
            log.warning("%s: renewal info not understood, the lifetime rule decides: %s", self.name, err)
            return None
        start = info.suggested_window.start
        end = info.suggested_window.end
        if start.tzinfo is None:
            start, end = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
        wait = _retry_after_seconds(response)
        retry = self._clock.now() + (timedelta(seconds=wait) if wait is not None else _ARI_DEFAULT_RETRY)
        explanation = response.json().get("explanationURL")
        return RenewalWindow(start=start, end=end, retry_after=retry, explanation_url=explanation)

    # -- account key rollover (RFC 8555 section 7.3.5) ----------------------------------
    def rollover(self) -> str:
        """Replace the account key with a new one at the CA, then in the inventory; returns the account URL.

        The CA switches first: if storing the new key failed after that, the old key would be useless,
        so the new key is stored in the same step and a failure there is reported loudly.
        """
        with self._converted(None, "key-rollover"):
            client = self._client()
            old_key = client.net.key
            assert old_key is not None and self._account is not None
            url = client.directory["keyChange"]
            new_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            new_key = JWKEC.load(new_pem)
            payload = json.dumps({"account": self._account.uri, "oldKey": old_key.public_key().to_partial_json()})
            inner = acme_jws.JWS.sign(payload.encode(), key=new_key, alg=ES256, nonce=None, url=url)
            client._post(url, inner)
            with self._lock:
                self._accounts.save_account(self.name, self._config.directory, new_pem, self._account.uri)
                self._key = new_key
                self._generation += 1
            log.info("%s: account key rolled over for %s", self.name, self._account.uri)
            return str(self._account.uri)

    # -- clients and account ---------------------------------------------------------
    def _network(self, key: JWK | None, account: messages.RegistrationResource | None) -> _Network:
        verify: bool | str = str(self._config.ca_bundle) if self._config.ca_bundle else True
        return _Network(
            key=key,
            account=account,
            alg=ES256,
            verify_ssl=verify,
            user_agent=f"certd/{__version__}",
            timeout=max(1, int(self._config.timeout.total_seconds())),
            attempts=self._attempts,
            backoff=self._backoff,
            sleep=self._sleep,
        )

    def _get_directory(self) -> messages.Directory:
        with self._lock:
            if self._directory is None:
                net = self._network(None, None)
                try:
                    self._directory = acme_client.ClientV2.get_directory(self._config.directory, net)
                except (DeserializationError, ValueError, KeyError) as exc:
                    raise IssuerError(
                        f"{self._config.directory} is not an ACME directory ({type(exc).__name__})",
                        reason="NotAcme",
                    ) from exc
                except acme_errors.ClientError as exc:
                    raise IssuerError(
                        f"{self._config.directory} is not an ACME directory (HTTP {_status(net)})",
                        reason="NotAcme",
                    ) from exc
                if "newOrder" not in self._directory.to_partial_json():
                    self._directory = None
                    raise IssuerError(f"{self._config.directory} is not an ACME directory (no newOrder)",
                                      reason="NotAcme")
            return self._directory

    def _client(self) -> acme_client.ClientV2:
        """This thread's client, made on first use with the shared directory and account."""
        client: acme_client.ClientV2 | None = getattr(self._local, "client", None)
        if client is not None and getattr(self._local, "generation", -1) == self._generation:
            return client
        directory = self._get_directory()
        key, account = self._ensure_account(directory)
        client = acme_client.ClientV2(directory, self._network(key, account))
        self._local.client, self._local.generation = client, self._generation
        return client

    def _ensure_account(self, directory: messages.Directory) -> tuple[JWK, messages.RegistrationResource]:
        with self._lock:
            if self._key is not None and self._account is not None:
                return self._key, self._account
            stored = self._accounts.load_account(self.name, self._config.directory)
            if stored is not None:
                key_pem, uri = stored
                key = JWKEC.load(key_pem)
            else:
                key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                key, uri = JWKEC.load(key_pem), None
            if uri is None:
                uri = self._register(directory, key)
                self._accounts.save_account(self.name, self._config.directory, key_pem, uri)
                log.info("%s: ACME account registered at %s", self.name, uri)
            self._key = key
            self._account = messages.RegistrationResource(body=messages.Registration(), uri=uri)
            return key, self._account

    def _register(self, directory: messages.Directory, key: JWK) -> str:
        client = acme_client.ClientV2(directory, self._network(key, None))
        fields: dict[str, Any] = {"terms_of_service_agreed": True}
        if self._config.email:
            fields["email"] = self._config.email
        if self._config.eab_kid and self._config.eab_hmac_key_file:
            hmac_key = Path(self._config.eab_hmac_key_file).read_text().strip()
            fields["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(), kid=self._config.eab_kid, hmac_key=hmac_key,
                directory=directory,
            )
        elif client.external_account_required():
            raise IssuerError("the CA requires External Account Binding: set eab_kid and eab_hmac_key_file",
                              reason="EabRequired")
        try:
            regr = client.new_account(messages.NewRegistration.from_data(**fields))
        except acme_errors.ConflictError as conflict:  # the key already has an account: reuse it
            return str(conflict.location)
        return str(regr.uri)

    # -- the order -----------------------------------------------------------------
    def _new_order(self, client: acme_client.ClientV2, request: IssueRequest) -> messages.OrderResource:
        profile = self._config.profile
        if profile:
            offered = (client.directory.to_partial_json().get("meta") or {}).get("profiles") or {}
            if profile not in offered:
                raise IssuerError(f"the CA offers no profile {profile!r} (it offers: {', '.join(offered) or 'none'})",
                                  reason="UnknownProfile")
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_IP if is_ip(n) else messages.IDENTIFIER_FQDN, value=n)
            for n in request.names
        ]
        replaces = request.replaces
        while True:
            order = _NewOrder(identifiers=identifiers, profile=profile, replaces=replaces)
            try:
                response = client._post(client.directory["newOrder"], order)
                break
            except messages.Error as err:
                if replaces is not None and err.code in ("alreadyReplaced", "malformed", "conflict"):
                    log.info("%s: %s: the CA refused replaces=%s (%s); ordering without it",
                             self.name, request.certificate, replaces, err.code)
                    replaces = None
                    continue
                raise
        body = messages.Order.from_json(response.json())
        authzs = [client._authzr_from_response(client._post_as_get(url), uri=url) for url in body.authorizations]
        csr_pem = request.csr.public_bytes(serialization.Encoding.PEM)
        return messages.OrderResource(body=body, uri=response.headers.get("Location"), authorizations=authzs,
                                      csr_pem=csr_pem)

    def _pick(self, authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
        wanted = self._config.challenge
        for challb in authzr.body.challenges:
            if challb.chall.typ == wanted:
                return challb
        ident = authzr.body.identifier.value
        offered = ", ".join(c.chall.typ for c in authzr.body.challenges) or "none"
        hint = " (wildcard names need challenge = 'dns-01')" if authzr.body.wildcard else ""
        raise IssuerError(f"the CA offers no {wanted} challenge for {ident} (offered: {offered}){hint}",
                          reason="ChallengeUnavailable")

    def _solver_for_order(self) -> ChallengeSolver:
        with self._lock:
            if self._solver is None:
                if self._config.challenge == "dns-01":
                    from certd.issuers.challenges.dns01_rfc2136 import build_dns01

                    self._solver = build_dns01(self._config)
                else:
                    from certd.issuers.challenges.http01 import build_http01

                    self._solver = build_http01(self._config)
            return self._solver

    def _authorize(self, client: acme_client.ClientV2, certificate: str, order: messages.OrderResource) -> None:
        pending = [a for a in order.authorizations if a.body.status == messages.STATUS_PENDING]
        if not pending:
            return  # every authorization still valid from an earlier order
        key = client.net.key
        assert key is not None  # every client is made with the account key
        picked = [(authzr, self._pick(authzr)) for authzr in pending]
        todo = [
            Challenge(
                domain=("*." if authzr.body.wildcard else "") + authzr.body.identifier.value,
                token=challb.chall.encode("token"),
                validation=_validation(challb.chall, key),
            )
            for authzr, challb in picked
        ]
        solver = self._solver_for_order()
        try:
            solver.present(todo)
            for _, challb in picked:
                client.answer_challenge(challb, challb.chall.response(key))
            deadline = time.monotonic() + _ORDER_TIMEOUT.total_seconds()
            for authzr, _ in picked:
                self._wait_authorization(client, authzr, deadline)
        finally:
            solver.cleanup(todo)

    def _wait_authorization(self, client: acme_client.ClientV2, authzr: messages.AuthorizationResource,
                            deadline: float) -> None:
        ident = authzr.body.identifier.value
        for response in self._polls(client, authzr.uri, deadline, f"validation of {ident}"):
            body = messages.Authorization.from_json(response.json())
            if body.status == messages.STATUS_VALID:
                return
            if body.status != messages.STATUS_PENDING:
                errors = [c.error for c in body.challenges if c.error is not None]
                detail = _problem(errors[0]) if errors else f"authorization is {body.status}"
                raise IssuerError(f"validation of {ident} failed: {detail}",
                                  reason=errors[0].code if errors and errors[0].code else "ValidationFailed")

    def _polls(self, client: acme_client.ClientV2, url: str, deadline: float, what: str) -> Iterator[requests.Response]:
        """POST-as-GET ``url`` until the caller stops, backing off and honouring ``Retry-After``."""
        delay = _POLL_FIRST
        while True:
            response: requests.Response = client._post_as_get(url)
            yield response
            wait = _retry_after_seconds(response)
            pause = min(wait if wait is not None else delay, _POLL_MAX * 4)
            if time.monotonic() + pause > deadline:
                raise IssuerUnavailable(f"{what} did not finish within {_ORDER_TIMEOUT}")
            self._sleep(pause)
            delay = min(delay * 2, _POLL_MAX)

    def _finalize(self, client: acme_client.ClientV2, order: messages.OrderResource,
                  csr: x509.CertificateSigningRequest) -> list[str]:
        deadline = time.monotonic() + _ORDER_TIMEOUT.total_seconds()
        try:
            client._post(order.body.finalize, messages.CertificateRequest(csr=csr))
        except messages.Error as err:
            if err.code != "orderNotReady":
                raise
        for response in self._polls(client, order.uri, deadline, "issuance"):
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_INVALID:
                detail = _problem(body.error) if body.error is not None else "the CA gave no reason"
                raise IssuerError(f"the order became invalid: {detail}", reason="OrderInvalid")
            if body.status == messages.STATUS_READY:
                client._post(order.body.finalize, messages.CertificateRequest(csr=csr))
                continue
            if body.status == messages.STATUS_VALID and body.certificate:
                cert_response = client._post_as_get(body.certificate)
                chains = [cert_response.text]
                if self._config.preferred_chain:
                    chains += [client._post_as_get(u).text for u in client._get_links(cert_response, "alternate")]
                return chains
        raise AssertionError("unreachable")  # pragma: no cover

    def _choose_chain(self, certificate: str, fullchains: Sequence[str]) -> Issued:
        """The default chain, or the first alternate whose top issuer CN is ``preferred_chain`` (as certbot)."""
        parsed = []
        for pem in fullchains:
            certs = load_pem_certs(pem.encode())
            if not certs:
                raise IssuerError(f"{self.name}: {certificate}: download: the CA returned no certificate",
                                  reason="BadCertificate")
            parsed.append(certs)
        chosen = parsed[0]
        if self._config.preferred_chain:
            for certs in parsed:
                top = certs[-1]
                names = [a.value for a in top.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
                if self._config.preferred_chain in names:
                    chosen = certs
                    break
            else:
                log.info("%s: %s: no chain ends at %r; using the default chain", self.name, certificate,
                         self._config.preferred_chain)
        leaf, rest = chosen[0], chosen[1:]
        return Issued(leaf=leaf, chain=tuple(c for c in rest if not is_self_signed(c)))

    # -- error conversion ------------------------------------------------------------
    @contextmanager
    def _converted(self, certificate: str | None, step: str) -> Iterator[None]:
        """Turn ``acme``, ``requests`` and ``josepy`` errors into certd's, naming certificate, step and problem."""
        where = f"ACME {self.name}" + (f": {certificate}" if certificate else "") + f": {step}"
        try:
            yield
        except CertdError as err:
            if err.message.startswith("ACME "):
                raise
            raise type(err)(f"{where}: {err.message}", reason=err.reason, retryable=err.retryable,
                            retry_after=err.retry_after) from err
        except messages.Error as err:
            raise self._from_problem(where, err) from err
        except requests.exceptions.SSLError as exc:
            raise IssuerError(f"{where}: TLS to {self._config.directory} does not verify"
                              f"{' against ' + str(self._config.ca_bundle) if self._config.ca_bundle else ''}"
                              f": {tls_reason(exc)}", reason="TLSVerifyFailed") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise IssuerUnavailable(f"{where}: cannot reach {self._config.directory}: {type(exc).__name__}") from exc
        except acme_errors.ClientError as exc:
            raise IssuerUnavailable(f"{where}: unexpected answer from the CA: {str(exc)[:200]}") from exc
        except acme_errors.Error as exc:
            raise IssuerError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        except DeserializationError as exc:
            raise IssuerError(f"{where}: the CA's answer is not valid ACME: {str(exc)[:200]}",
                              reason="NotAcme") from exc

    def _from_problem(self, where: str, err: messages.Error) -> IssuerError:
        message = f"{where}: {_problem(err)}"
        net = getattr(getattr(self._local, "client", None), "net", None)
        wait = _retry_after_seconds(getattr(net, "last_response", None))
        retry_after = timedelta(seconds=wait) if wait is not None else None
        code = err.code or "problem"
        if code == "rateLimited":
            return RateLimited(message, reason="rateLimited", retry_after=retry_after or timedelta(hours=1))
        status = _status(net)
        if status >= 500 or code in ("serverInternal", "badNonce"):
            return IssuerUnavailable(message, reason=code, retry_after=retry_after)
        return IssuerError(message, reason=code, retryable=code in ("connection", "dns", "incorrectResponse"))


def _status(net: Any) -> int:
    response = getattr(net, "last_response", None)
    return int(response.status_code) if response is not None else 0


def _validation(chall: acme_challenges.Challenge, key: JWK) -> str:
    """What the CA looks for: HTTP-01 the key authorization; DNS-01 its digest (the TXT value)."""
    value: str = chall.validation(key)
    return value


def build(name: str, config: AcmeIssuerConfig, accounts: AccountStore) -> AcmeIssuer:
    return AcmeIssuer(name, config, accounts)
