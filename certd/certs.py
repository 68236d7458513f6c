"""Small, shared facts about X.509 certificates, all through ``cryptography``.

Serials are rendered as lowercase hex without separators and times as
timezone-aware UTC everywhere, because those are the shapes of certd's
public ``--json`` output and nothing should convert them twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

__all__ = [
    "cert_names",
    "certs_pem",
    "fingerprint",
    "intermediates_only",
    "is_self_signed",
    "load_pem_certs",
    "not_after",
    "not_before",
    "rfc3339",
    "serial_hex",
]


def serial_hex(cert: x509.Certificate) -> str:
    """Lowercase hex, no separators, no leading zeros beyond one digit."""
    return format(cert.serial_number, "x")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def not_before(cert: x509.Certificate) -> datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, second precision; ``None`` stays ``None``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def load_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``ValueError`` if there is none or one is garbage."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("no PEM certificate found")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"malformed PEM certificate: {exc}") from exc


def certs_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def is_self_signed(cert: x509.Certificate) -> bool:
    """Subject equals issuer and the signature verifies with its own key."""
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def intermediates_only(chain: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    """Drop self-signed roots: servers send intermediates only (``chain.pem``)."""
    return tuple(c for c in chain if not is_self_signed(c))


def cert_names(cert: x509.Certificate) -> list[str]:
    """DNS and IP SANs as strings (lowercased DNS), in certificate order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    out += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return out
