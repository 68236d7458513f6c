"""The ``check`` step: a new certificate is published only if it passes all of these.

Each check has a named reason (shown in events, ``history`` and
``last_error``) so an operator can tell a CA mistake from a config mistake.
Checks are pure: they take the certificate material, the expectations and
``now``, and either return warnings or raise ``CheckFailed``.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certd.core.durations import format_duration
from certd.errors import CheckFailed
from certd.pki.certs import build_chain, cert_names, is_self_signed
from certd.pki.keys import KeyType, PrivateKey, key_description, key_type_of

__all__ = ["CheckReason", "Expectations", "check_certificate", "usable_chain", "verify_chain", "weak_signature"]

_CLOCK_SKEW = timedelta(minutes=5)


class CheckReason(StrEnum):
    """Why a certificate was refused."""

    KEY_MISMATCH = "KeyMismatch"
    KEY_TYPE = "KeyTypeMismatch"
    NAMES = "NamesNotCovered"
    CHAIN = "ChainInvalid"
    NOT_YET_VALID = "NotYetValid"
    VALIDITY = "ValidityTooShort"
    TRUNCATED = "LifetimeShortenedByCA"
    EKU = "ExtendedKeyUsageMissing"
    WEAK_SIGNATURE = "WeakSignature"


@dataclass(frozen=True)
class Expectations:
    """What the inventory asked for; ``min_remaining`` is how long it must stay valid."""

    names: tuple[str, ...]
    key_type: KeyType | None
    roots: tuple[x509.Certificate, ...] | None
    min_remaining: timedelta = timedelta(minutes=1)
    lifetime: timedelta | None = None  # asked for; None: the CA chooses (ACME)
    ext_key_usage: tuple[str, ...] = ()  # "serverAuth", "clientAuth": what the certificate must allow
    cap: str = "a Vault role's or mount's max_ttl, or the CA's fixed maximum"  # what may cap the lifetime, named


def _fail(reason: CheckReason, message: str) -> CheckFailed:
    return CheckFailed(message, reason=str(reason))


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name_key(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """IP names compare as addresses (``2001:DB8::0001`` is ``2001:db8::1``), DNS names without case."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name.lower()


def _verifier_subject(names: tuple[str, ...]) -> x509.verification.Subject:
    name = names[0]
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if name.startswith("*."):
        name = "certd-check" + name[1:]
    return x509.DNSName(name)


def verify_chain(
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    roots: tuple[x509.Certificate, ...] | None,
    names: tuple[str, ...],
    now: datetime,
) -> list[str]:
    """Verify leaf + intermediates to the pinned roots; without roots, link by link.

    Returns warnings; raises ``CheckFailed(ChainInvalid)``.
    """
    if roots:
        verifier = (
            PolicyBuilder().store(Store(list(roots))).time(now).build_server_verifier(_verifier_subject(names))
        )
        try:
            verifier.verify(leaf, list(chain))
        except VerificationError as exc:
            raise _fail(CheckReason.CHAIN, f"chain does not verify to the pinned roots: {exc}") from exc
        return []
    links = [leaf, *chain]
    for child, parent in itertools.pairwise(links):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise _fail(
                CheckReason.CHAIN, f"chain is broken between {child.subject.rfc4514_string()} and its issuer"
            ) from exc
    top = links[-1]
    warning = "no roots are pinned for this issuer: the chain was checked link by link only"
    if not is_self_signed(top):
        warning += f" (its top, {top.issuer.rfc4514_string()}, is not in the chain)"
    return [warning]


_EKU_OIDS = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}


def shortened_lifetime(leaf: x509.Certificate, chain: Sequence[x509.Certificate], asked: timedelta | None,
                       cap: str = "a Vault role's or mount's max_ttl, or the CA's fixed maximum") -> str | None:
    """How and why the CA gave less than ``asked`` (None: it did not).

    Measured on the certificate itself (notAfter - notBefore, the CA's own clock), with a slack of a
    minute or 1% for backdating. The failure behind cert-manager #7157/#7741: Vault's
    ``leaf_not_after_behavior = truncate`` cut certificates at the CA's expiry and the client ordered
    again at once, thousands of times.
    """
    if asked is None:
        return None
    got = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    if got >= asked - max(timedelta(minutes=1), asked / 100):
        return None
    issuer = chain[0] if chain else None
    if issuer is not None and abs(leaf.not_valid_after_utc - issuer.not_valid_after_utc) <= timedelta(seconds=2):
        cause = (f"cut at the issuing CA's own expiry ({issuer.subject.rfc4514_string()} expires "
                 f"{issuer.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}): the CA must be renewed first")
    else:
        cause = f"capped by the CA ({cap})"
    return f"the CA issued it for {format_duration(got)} of the {format_duration(asked)} asked: {cause}"


def _ekus(leaf: x509.Certificate) -> set[x509.ObjectIdentifier] | None:
    try:
        return set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None  # no EKU extension: every usage is allowed (RFC 5280 4.2.1.12)


_WEAK_HASHES = {"sha1": "SHA-1", "md5": "MD5"}


def weak_signature(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> str | None:
    """A certificate in the served chain signed with a hash TLS clients refuse, said as such.

    The chain verifier refuses these too, but its words ("validation failed", a path problem) send an
    operator looking at the chain's order, not at the CA's signing profile.
    """
    for cert in (leaf, *chain):
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            continue  # the verifier names what it cannot read
        name = _WEAK_HASHES.get(algorithm.name) if algorithm is not None else None
        if name is not None:
            which = "the certificate" if cert is leaf else f"the intermediate {cert.subject.rfc4514_string()}"
            return (f"{which} is signed with {name}, which CAs stopped using and TLS clients refuse: the CA's "
                    "signing profile must use SHA-256 or stronger")
    return None


def check_certificate(
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    key: PrivateKey,
    expect: Expectations,
    now: datetime,
) -> list[str]:
    """Run every check in order; return warnings or raise ``CheckFailed`` at the first failure."""
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise _fail(CheckReason.KEY_MISMATCH, "the certificate's public key does not match the private key")
    actual_type = key_type_of(key)
    if expect.key_type is not None and actual_type != expect.key_type:
        raise _fail(CheckReason.KEY_TYPE, f"key type is {key_description(key)}, expected {expect.key_type}")
    weak = weak_signature(leaf, chain)
    if weak is not None:
        raise _fail(CheckReason.WEAK_SIGNATURE, weak)
    have = {_name_key(n) for n in cert_names(leaf)}
    missing = [n for n in expect.names if _name_key(n) not in have]
    if missing:
        raise _fail(CheckReason.NAMES, f"certificate does not cover {', '.join(missing)}")
    ekus = _ekus(leaf)
    lacking = [u for u in expect.ext_key_usage if ekus is not None and _EKU_OIDS[u] not in ekus]
    if lacking:
        raise _fail(CheckReason.EKU, f"certificate does not allow {', '.join(lacking)} (extended key usage), which "
                    "ext_key_usage asks for: the CA's profile leaves it out (a Vault role's ext_key_usage, "
                    "server_flag/client_flag)")
    if leaf.not_valid_before_utc > now + _CLOCK_SKEW:
        raise _fail(CheckReason.NOT_YET_VALID, f"certificate is not valid before {leaf.not_valid_before_utc}")
    remaining = leaf.not_valid_after_utc - now
    shortened = shortened_lifetime(leaf, chain, expect.lifetime, expect.cap)
    if remaining < expect.min_remaining and shortened is not None:
        raise _fail(CheckReason.TRUNCATED, f"{shortened}; valid for {format_duration(max(remaining, timedelta(0)))} "
                    f"more, it would be due for renewal at once (it needs {format_duration(expect.min_remaining)}), "
                    "so certd does not order again until the cause is fixed or lifetime is lowered")
    if remaining < expect.min_remaining:
        raise _fail(
            CheckReason.VALIDITY,
            f"certificate is valid for {format_duration(max(remaining, timedelta(0)))} more, "
            f"needs at least {format_duration(expect.min_remaining)}",
        )
    return verify_chain(leaf, chain, expect.roots, expect.names, now)


def usable_chain(
    leaf: x509.Certificate, candidates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate] | None,
    on_dropped: Callable[[tuple[x509.Certificate, ...]], None],
) -> tuple[x509.Certificate, ...]:
    """The leaf's intermediates built by signature; what was dropped goes to ``on_dropped`` first.

    ``CheckFailed`` when none fit: without pinned roots the chain check would
    pass a bare leaf, though a chain was given and none of it leads anywhere —
    a broken chain, not a self-contained one.
    """
    chain, dropped = build_chain(leaf, candidates)
    on_dropped(dropped)
    if dropped and not chain and roots is None and not is_self_signed(leaf):
        raise _fail(CheckReason.CHAIN, f"chain is broken: no certificate given issued {leaf.subject.rfc4514_string()} "
                    f"(its issuer is {leaf.issuer.rfc4514_string()})")
    return chain
