"""A few lines of PKI for tests, built with ``cryptography`` alone (nothing of certd's own CA).

Used where a test needs hierarchies certd's local CA does not make: deeper
chains, unrelated CAs, and decoys that copy a real CA's name with another key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certd.pki.keys import san_entries

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Node:
    """A certificate and the key it certifies."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str, issuer: Node | None = None, *, subject: x509.Name | None = None,
            days: int = 365) -> Node:
    """A CA certificate: self-signed when ``issuer`` is None; ``subject`` overrides the name (decoys)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = subject or _name(cn)
    signer_key = issuer.key if issuer else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer_key, hashes.SHA256())
    )
    return Node(cert, key)


def make_leaf(names: tuple[str, ...], issuer: Node, *, days: int = 30) -> Node:
    """A server certificate for ``names`` signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    return Node(cert, key)
