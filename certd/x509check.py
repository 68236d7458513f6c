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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certd.certs import build_chain, cert_names, is_self_signed
from certd.durations import format_duration
from certd.errors import CheckFailed
from certd.keys import KeyType, PrivateKey, key_type_of

__all__ = ["CheckReason", "Expectations", "check_certificate", "usable_chain", "verify_chain"]

_CLOCK_SKEW = timedelta(minutes=5)


class CheckReason(StrEnum):
    """Why a certificate was refused."""

    KEY_MISMATCH = "KeyMismatch"
    KEY_TYPE = "KeyTypeMismatch"
    NAMES = "NamesNotCovered"
    CHAIN = "ChainInvalid"
    NOT_YET_VALID = "NotYetValid"
    VALIDITY = "ValidityTooShort"


@dataclass(frozen=True)
class Expectations:
    """What the inventory asked for; ``min_remaining`` is how long it must stay valid."""

    names: tuple[str, ...]
    key_type: KeyType | None
    roots: tuple[x509.Certificate, ...] | None
    min_remaining: timedelta = timedelta(minutes=1)


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
        raise _fail(CheckReason.KEY_TYPE, f"key type is {actual_type or 'unknown'}, expected {expect.key_type}")
    have = {_name_key(n) for n in cert_names(leaf)}
    missing = [n for n in expect.names if _name_key(n) not in have]
    if missing:
        raise _fail(CheckReason.NAMES, f"certificate does not cover {', '.join(missing)}")
    if leaf.not_valid_before_utc > now + _CLOCK_SKEW:
        raise _fail(CheckReason.NOT_YET_VALID, f"certificate is not valid before {leaf.not_valid_before_utc}")
    remaining = leaf.not_valid_after_utc - now
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
