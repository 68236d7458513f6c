"""An ACME CA (RFC 8555) as a certd issuer, through the ``acme`` and ``josepy`` packages.

One module per job: ``issuer`` (the ``Issuer`` the engine calls), ``account`` (directory, account key,
per-thread clients, key change), ``order`` (orders, challenges, finalize, chain choice), ``ari`` (RFC 9773
renewal information), ``network`` (bounded retries) and ``errors`` (problem documents into certd errors).
Only ``issuer.build`` and the names below are meant for the rest of certd; ``certd.issuers.build_issuer``
imports this package only when an ACME issuer is configured, so hosts without one never load ``acme``.
"""

from __future__ import annotations

from certd.issuers.acme.ari import cert_id
from certd.issuers.acme.issuer import AcmeIssuer, build

__all__ = ["AcmeIssuer", "build", "cert_id"]
