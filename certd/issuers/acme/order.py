"""One ACME order (RFC 8555 section 7.4): new order, authorizations and challenges, finalize, the chain.

Why it is built this way:

* ``acme``'s ``NewOrder`` has no ``replaces`` field (RFC 9773): ``NewOrder`` here adds it. A CA that refuses the
  ``replaces`` (already replaced, or an identifier it does not know) gets the order again without it.
* Identifiers come from the request's names, not from parsing the CSR back, so IP identifiers are typed as such.
* Polling is ours, not ``acme``'s fixed one-second sleep: it starts at a fraction of a second and doubles,
  honouring ``Retry-After``. Most of an order's time is polling, so this is where per-certificate latency is won.
* The solver is built on the first order, not at start-up: building the standalone HTTP-01 responder or reading
  the TSIG secret is only needed once there is something to validate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.json_util import field as jose_field
from josepy.jwk import JWK

from certd.config.model import AcmeIssuerConfig
from certd.errors import IssuerError, IssuerUnavailable
from certd.issuers.acme.errors import problem_text, retry_after_seconds
from certd.issuers.acme.network import AcmeNetwork, links, post_as_get, signed_post
from certd.issuers.base import Issued, IssueRequest
from certd.issuers.challenges.base import Challenge, ChallengeSolver
from certd.pki.certs import is_self_signed, load_pem_certs
from certd.pki.keys import is_ip

__all__ = ["NewOrder", "Orders"]

log = logging.getLogger("certd.issuers.acme")

_POLL_FIRST = 0.05  # Pebble and Boulder validate in milliseconds; doubling reaches the cap after 6 polls
_POLL_MAX = 3.0
_ORDER_TIMEOUT = timedelta(minutes=5)
_REPLACES_REFUSED = ("alreadyReplaced", "malformed", "conflict")  # what CAs answer to a ``replaces`` they reject


class NewOrder(messages.NewOrder):
    """``newOrder`` with RFC 9773's ``replaces``, which ``acme.messages.NewOrder`` lacks."""

    replaces: str | None = jose_field("replaces", omitempty=True)


class Orders:
    """Places and completes orders for one issuer; safe from many threads, each with its own client."""

    def __init__(
        self,
        name: str,
        config: AcmeIssuerConfig,
        *,
        solver: ChallengeSolver | None,
        sleep: Callable[[float], None],
    ) -> None:
        self.name = name
        self._config = config
        self._solver = solver
        self._sleep = sleep
        self._lock = threading.Lock()

    # -- the order -----------------------------------------------------------------
    def place(self, client: acme_client.ClientV2, request: IssueRequest) -> messages.OrderResource:
        """A new order for the request's names, with its authorizations fetched.

        An unknown ``profile`` is refused here, before ordering, so the error can list what the directory offers
        instead of whatever a CA answers to a profile it does not know.
        """
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
            order = NewOrder(identifiers=identifiers, profile=profile, replaces=replaces)
            try:
                response = signed_post(client, client.directory["newOrder"], order)
                break
            except messages.Error as err:
                if replaces is not None and err.code in _REPLACES_REFUSED:
                    log.info("%s: %s: the CA refused replaces=%s (%s); ordering without it",
                             self.name, request.certificate, replaces, err.code)
                    replaces = None
                    continue
                raise
        body = messages.Order.from_json(response.json())
        authzs = [_authorization(client, url) for url in body.authorizations]
        csr_pem = request.csr.public_bytes(serialization.Encoding.PEM)
        return messages.OrderResource(body=body, uri=response.headers.get("Location"), authorizations=authzs,
                                      csr_pem=csr_pem)

    # -- authorizations ------------------------------------------------------------
    def authorize(self, client: acme_client.ClientV2, order: messages.OrderResource) -> None:
        """Solve every pending authorization of ``order`` and wait until the CA has validated each one.

        All challenges are presented before the first is answered, and cleaned up whatever happens: one solver call
        per order lets a DNS solver wait for propagation once, and no token or TXT record outlives the order.
        """
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

    def _pick(self, authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
        """The configured challenge type; its absence is an error naming what the CA offers, not a fallback."""
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

    def _wait_authorization(self, client: acme_client.ClientV2, authzr: messages.AuthorizationResource,
                            deadline: float) -> None:
        ident = authzr.body.identifier.value
        for response in self._polls(client, authzr.uri, deadline, f"validation of {ident}"):
            body = messages.Authorization.from_json(response.json())
            if body.status == messages.STATUS_VALID:
                return
            if body.status != messages.STATUS_PENDING:
                errors = [c.error for c in body.challenges if c.error is not None]
                detail = problem_text(errors[0]) if errors else f"authorization is {body.status}"
                raise IssuerError(f"validation of {ident} failed: {detail}",
                                  reason=errors[0].code if errors and errors[0].code else "ValidationFailed")

    def _polls(self, client: acme_client.ClientV2, url: str, deadline: float, what: str) -> Iterator[requests.Response]:
        """POST-as-GET ``url`` until the caller stops, backing off and honouring ``Retry-After``."""
        delay = _POLL_FIRST
        while True:
            response = post_as_get(client, url)
            if isinstance(client.net, AcmeNetwork):
                try:
                    status = response.json().get("status")
                except (ValueError, AttributeError):
                    status = None
                client.net.waiting_for(f"{what}: the CA still said {status!r}")
            yield response
            wait = retry_after_seconds(response)
            pause = min(wait if wait is not None else delay, _POLL_MAX * 4)
            if time.monotonic() + pause > deadline:
                raise IssuerUnavailable(f"{what} did not finish within {_ORDER_TIMEOUT}")
            self._sleep(pause)
            delay = min(delay * 2, _POLL_MAX)

    # -- finalize and download -----------------------------------------------------
    def finalize(self, client: acme_client.ClientV2, order: messages.OrderResource) -> list[str]:
        """Finalize with the order's CSR and download the certificate: the default chain first, then the alternates.

        A CA may still be validating (``orderNotReady``) or answer ``ready`` later: the order is polled and
        finalized again when it says ``ready``, until it is ``valid`` or ``invalid``.
        """
        deadline = time.monotonic() + _ORDER_TIMEOUT.total_seconds()
        try:
            client.begin_finalization(order)
        except messages.Error as err:
            if err.code != "orderNotReady":
                raise
        for response in self._polls(client, order.uri, deadline, "issuance"):
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_INVALID:
                detail = problem_text(body.error) if body.error is not None else "the CA gave no reason"
                raise IssuerError(f"the order became invalid: {detail}", reason="OrderInvalid")
            if body.status == messages.STATUS_READY:
                client.begin_finalization(order)
                continue
            if body.status == messages.STATUS_VALID and body.certificate:
                cert_response = post_as_get(client, body.certificate)
                chains = [cert_response.text]
                if self._config.preferred_chain:
                    chains += [post_as_get(client, u).text for u in links(cert_response, "alternate")]
                return chains
        raise AssertionError("unreachable")  # pragma: no cover

    def choose_chain(self, certificate: str, fullchains: Sequence[str]) -> Issued:
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


def _authorization(client: acme_client.ClientV2, url: str) -> messages.AuthorizationResource:
    """The authorization at ``url``, fetched with POST-as-GET (``ClientV2.poll`` needs one already in hand)."""
    response = post_as_get(client, url)
    return messages.AuthorizationResource(body=messages.Authorization.from_json(response.json()),
                                          uri=response.headers.get("Location", url))


def _validation(chall: acme_challenges.Challenge, key: JWK) -> str:
    """What the CA looks for: HTTP-01 the key authorization; DNS-01 its digest (the TXT value)."""
    value: str = chall.validation(key)
    return value
