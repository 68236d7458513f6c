"""Small, shared facts about X.509 certificates, all through ``cryptography``.

Serials are rendered as lowercase hex without separators and times as
timezone-aware UTC everywhere, because those are the shapes of certd's
public ``--json`` output and nothing should convert them twice.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

__all__ = [
    "build_chain",
    "cert_names",
    "certs_pem",
    "describe",
    "fingerprint",
    "is_self_signed",
    "issued_by",
    "load_pem_certs",
    "serial_hex",
]

# What parsing a certificate can raise: cryptography's own classes for these are not ValueErrors.
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
                 x509.UnsupportedGeneralNameType)
_BEGIN = b"-----BEGIN "
_DASHES = b"-----"
_CERT_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")  # the labels cryptography's own PEM loader accepts


def serial_hex(cert: x509.Certificate) -> str:
    """Lowercase hex, no separators, no leading zeros beyond one digit."""
    return format(cert.serial_number, "x")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _pem_cert_bodies(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The base64 body of every certificate block, numbered from 1; other blocks and text between are skipped.

    A linear scan with ``bytes.find`` rather than a regular expression, so
    that a megabyte of unterminated ``BEGIN`` lines costs one pass, not one
    pass per line.
    """
    pos, number = 0, 0
    while (start := data.find(_BEGIN, pos)) != -1:
        label_end = data.find(_DASHES, start + len(_BEGIN))
        if label_end == -1:
            return
        label = data[start + len(_BEGIN):label_end]
        pos = label_end + len(_DASHES)
        if label not in _CERT_LABELS:
            continue
        number += 1
        end = data.find(b"-----END " + label + _DASHES, pos)
        if end == -1:
            raise ValueError(f"malformed PEM certificate (block {number}): no END CERTIFICATE line")
        yield number, data[pos:end]
        pos = end + len(label) + 14


def _parse_fields(cert: x509.Certificate) -> None:
    """Parse now what certd reads later, so that a broken field is blamed on the input it came from.

    ``cryptography`` parses lazily: a certificate with valid outer DER but
    a broken name, extension or key loads fine and fails only when a check
    touches that part, far from the file it came from.
    """
    for part, read in (
        ("subject", lambda: cert.subject.rfc4514_string()),
        ("issuer", lambda: cert.issuer.rfc4514_string()),
        ("extensions", lambda: cert.extensions),
        ("public key", cert.public_key),
        ("signature algorithm", lambda: cert.signature_hash_algorithm),
        ("validity", lambda: (cert.not_valid_before_utc, cert.not_valid_after_utc)),
    ):
        try:
            read()
        except _PARSE_ERRORS as exc:
            raise ValueError(f"its {part} cannot be parsed ({exc})") from exc


def load_pem_certs(data: bytes, *, strict: bool = False) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ``ValueError`` if there is none or one is garbage.

    Text and other PEM blocks (a private key in ``combined.pem``) between
    the certificates are skipped. ``strict`` also parses every field certd
    reads (names, extensions, public key), for input from outside; stored
    and issuer-sent bundles (which may hold a root with a key type
    ``cryptography`` does not know) are loaded without it.
    """
    certs: list[x509.Certificate] = []
    for number, body in _pem_cert_bodies(data):
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"malformed PEM certificate (block {number}): not valid base64") from exc
        try:
            cert = x509.load_der_x509_certificate(der)
            if strict:
                _parse_fields(cert)
        except _PARSE_ERRORS as exc:
            raise ValueError(f"malformed PEM certificate (block {number}): {exc}") from exc
        certs.append(cert)
    if not certs:
        hint = " (this looks like DER: convert it with `openssl x509 -inform der`)" if data[:1] == b"\x30" else ""
        raise ValueError(f"no PEM certificate found{hint}")
    return certs


def certs_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def describe(cert: x509.Certificate) -> str:
    """Subject and serial, the two things an operator greps a bundle for."""
    try:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
    except _PARSE_ERRORS:
        subject = "(unparsable subject)"
    return f"{subject} (serial {serial_hex(cert)})"


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Issuer name matches and the signature verifies with the parent's key."""
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    """Subject equals issuer and the signature verifies with its own key."""
    try:
        if cert.subject != cert.issuer:
            return False
    except _PARSE_ERRORS:
        return False
    return issued_by(cert, cert)


def build_chain(
    leaf: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """The leaf's intermediates in order, built by signature; and the candidates that are not part of them.

    Bundles handed to certd are often wrong in ways a server would publish
    blindly: an unrelated CA ahead of the intermediate, the whole CA store,
    the root. Starting at the leaf, each link is a candidate whose subject
    is the current certificate's issuer *and* whose key verifies its
    signature (a name alone can be forged by anyone with a CA of their own).
    The walk stops at a self-signed root, which is never returned (servers
    do not send it) and not reported as dropped: it belongs to the chain.
    Where two candidates could sign the same link (a cross-signed
    intermediate next to its self-signed twin), the one that is not a root
    is taken, in input order, because only it can be sent. Duplicates and
    copies of the leaf are dropped silently; everything else left over is
    returned second, for the caller to warn about.
    """
    pool: list[x509.Certificate] = []
    seen = {leaf}
    for cert in candidates:
        if cert not in seen:
            seen.add(cert)
            pool.append(cert)
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in pool:
        try:
            by_subject.setdefault(cert.subject, []).append(cert)
        except _PARSE_ERRORS:
            continue  # an unparsable subject signs nothing
    chain: list[x509.Certificate] = []
    used: set[x509.Certificate] = set()
    current = leaf
    while not is_self_signed(current):
        try:
            named = by_subject.get(current.issuer, [])
        except _PARSE_ERRORS:
            break
        parents = [c for c in named if c not in used and issued_by(current, c)]
        if not parents:
            break
        onward = [c for c in parents if not is_self_signed(c)]
        if not onward:
            used.add(parents[0])  # the root: the end of the chain, not published
            break
        current = onward[0]
        chain.append(current)
        used.add(current)
    return tuple(chain), tuple(c for c in pool if c not in used)


def cert_names(cert: x509.Certificate) -> list[str]:
    """DNS and IP SANs as strings (lowercased DNS), in certificate order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    out += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return out
