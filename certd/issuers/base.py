"""The one small interface every issuer implements, and the values it trades in.

Modelled on certmagic's ``Issuer``: issuing is the only required ability.
Revocation is part of it because every issuer we ship can revoke; ARI is a
separate optional protocol (``RenewalInfo``) that only ACME implements, so
callers check for it with ``isinstance`` where they need it.

Issuers see CSRs and return certificates; they know nothing of files,
deploy targets or the inventory. They raise only ``certd.errors.IssuerError``
and its subclasses, converted at their own seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from cryptography import x509

from certd.core.kinds import EventKind
from certd.pki.keys import KeyType, PrivateKey
from certd.pki.revocation import RevocationReason

__all__ = [
    "AccountStore",
    "CaChain",
    "CaRotation",
    "IssueRequest",
    "Issued",
    "Issuer",
    "KeyRollover",
    "RenewalInfo",
    "RenewalWindow",
    "RevocationReason",
]


@dataclass(frozen=True)
class IssueRequest:
    """What the pipeline asks an issuer for.

    ``csr`` is signed by ``key``, which never leaves certd unless the issuer is
    configured to generate keys itself (then it ignores both and returns its
    own key in ``Issued.private_key``). ``replaces`` is the ARI certificate
    identifier of the certificate being renewed, when known.
    """

    certificate: str
    names: tuple[str, ...]
    key_type: KeyType
    csr: x509.CertificateSigningRequest
    lifetime: timedelta | None = None
    replaces: str | None = None


@dataclass(frozen=True)
class Issued:
    """A certificate as issued: the leaf and the intermediates (never a self-signed root)."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey | None = None
    # What the issuer had to do on the way that an operator should hear of (each becomes an event).
    notices: tuple[tuple[EventKind, str], ...] = ()


@dataclass(frozen=True)
class RenewalWindow:
    """An ARI ``suggestedWindow`` and when to ask again (``Retry-After``)."""

    start: datetime
    end: datetime
    retry_after: datetime | None = None
    explanation_url: str | None = None


class AccountStore(Protocol):
    """Where an issuer keeps its account (ACME): the key PEM and the account URL.

    Implemented by the inventory, so every replica sharing the database uses
    the same account; keys are encrypted there when ``[database] key_file`` is set.
    """

    def load_account(self, issuer: str, directory: str) -> tuple[bytes, str | None] | None: ...

    def save_account(self, issuer: str, directory: str, key_pem: bytes, uri: str | None) -> None: ...


@runtime_checkable
class Issuer(Protocol):
    """Issues and revokes certificates.

    ``issue`` must be safe to call from several worker threads at once.
    ``roots`` returns the pinned roots issued chains must verify to, or
    ``None`` when the operator pinned nothing (chains are then checked link
    by link, with a warning).
    """

    name: str

    def issue(self, request: IssueRequest) -> Issued: ...

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None: ...

    def roots(self) -> list[x509.Certificate] | None: ...


@runtime_checkable
class RenewalInfo(Protocol):
    """Optional: the issuer can suggest when to renew (ACME ARI, RFC 9773)."""

    def renewal_window(self, certificate: x509.Certificate, issuer_cert: x509.Certificate) -> RenewalWindow | None:
        ...

    def cert_id(self, certificate: x509.Certificate) -> str:
        ...


@runtime_checkable
class CaChain(Protocol):
    """Optional: the issuer knows its own CA certificates (intermediates and root) without a leaf.

    Vault and the local CA do; an ACME CA's chain is only known from an issued
    certificate, so ``trust.trust_bundle`` falls back to the current version's chain.
    """

    def ca_chain(self) -> list[x509.Certificate]: ...


@runtime_checkable
class CaRotation(Protocol):
    """Optional: certd can move the issuer to a new CA (``certd ca rotate``; see ``ca_rotation``).

    Three states, kept by the issuer so every process sees them: a *staged*
    next CA (pinned, not signing), the *current* CA (signing), and *retired*
    CAs (not signing, still pinned while a served certificate needs them).
    ``ca_chain`` includes the staged CA and ``roots`` every root of the three.
    """

    def rotation_state(self) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
        """(the staged CA's certificates, or []; the retired CAs' certificates)."""
        ...

    def stage_rotation(self) -> list[x509.Certificate]:
        """Make (or find) the next CA; idempotent. Its certificates, intermediate first."""
        ...

    def promote_rotation(self) -> list[x509.Certificate]:
        """The staged CA signs from now on; the one before is retired. The retired certificates."""
        ...

    def drop_retired(self, keep: set[str]) -> list[x509.Certificate]:
        """Forget retired CAs none of whose certificates' fingerprints are in ``keep``; those dropped."""
        ...


@runtime_checkable
class KeyRollover(Protocol):
    """Optional: the issuer's account key can be replaced in place (ACME RFC 8555 section 7.3.5)."""

    def rollover(self) -> str: ...
