"""ACME Renewal Information (RFC 9773): naming a certificate to the CA and reading its suggested window.

The ``acme`` library has ``ClientV2.renewal_time``, but it draws the random renewal time itself on every call and
works in naive local time; certd draws once and stores it (see ``core``), so it needs the window, not a time.
These are the parts that know the RFC's encodings; fetching is the issuer's, under its error conversion.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta

import requests
from acme import messages
from cryptography import x509

from certd.errors import IssuerError
from certd.issuers.acme.errors import retry_after_seconds
from certd.issuers.base import RenewalWindow

__all__ = ["cert_id", "renewal_info_url", "window_from"]

_ARI_DEFAULT_RETRY = timedelta(hours=6)  # RFC 9773 section 4.3.3 suggests polling about every six hours


def cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 certificate identifier: base64url(AKI keyIdentifier) "." base64url(DER serial).

    Also what a renewal sends as ``replaces``, so the CA can tie the new order to the certificate it replaces.
    Raises ``IssuerError`` for a certificate without an AKI key identifier, which ARI cannot name.
    """
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise IssuerError("certificate has no Authority Key Identifier; ARI cannot name it") from exc
    if aki.key_identifier is None:
        raise IssuerError("certificate's Authority Key Identifier has no keyIdentifier; ARI cannot name it")
    serial = certificate.serial_number
    serial_der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return f"{_b64(aki.key_identifier)}.{_b64(serial_der)}"


def renewal_info_url(directory: messages.Directory, certificate: x509.Certificate) -> str | None:
    """Where the CA answers for ``certificate``, or None when the directory has no ``renewalInfo`` (no ARI)."""
    base = directory.to_partial_json().get("renewalInfo")
    if not base:
        return None
    return f"{str(base).rstrip('/')}/{cert_id(certificate)}"


def window_from(response: requests.Response, now: datetime) -> RenewalWindow:
    """The ``suggestedWindow`` in ``response``, in UTC, with when to ask again.

    ``Retry-After`` decides when to ask again, six hours when the CA gives none (RFC 9773 section 4.3.3);
    ``now`` is passed in so that this stays a function of what the CA said. Raises josepy's
    ``DeserializationError`` for an answer that is not a renewal info object.
    """
    info = messages.RenewalInfo.from_json(response.json())
    start = info.suggested_window.start
    end = info.suggested_window.end
    if start.tzinfo is None:
        start, end = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
    wait = retry_after_seconds(response)
    retry = now + (timedelta(seconds=wait) if wait is not None else _ARI_DEFAULT_RETRY)
    explanation = response.json().get("explanationURL")
    return RenewalWindow(start=start, end=end, retry_after=retry, explanation_url=explanation)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
