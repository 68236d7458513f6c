"""The ``verify`` step and ``certd probe``: what does this endpoint really serve?

A handshake with SNI, accepting any certificate at the TLS layer so we can
always report what was served, then verification with ``cryptography``
against the pinned bundle (the same verifier as ``check``), so "verified"
means the same thing in both places. The served chain is OpenSSL's
unverified chain (see ``served_chain`` for how it is reached), or the leaf
alone where that cannot be had.
"""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from certd.core.durations import rfc3339
from certd.errors import CheckFailed, VerifyError
from certd.inputs import CERT_LIMIT, read_file
from certd.pki.certs import cert_names, fingerprint, load_pem_certs, serial_hex
from certd.pki.x509check import verify_chain

__all__ = ["ProbeResult", "probe", "served_chain", "system_roots", "verify_served"]


@dataclass(frozen=True)
class ProbeResult:
    """One handshake's findings; ``error`` is set when the handshake or verification failed."""

    endpoint: str
    sni: str | None
    tls_version: str | None = None
    verified: bool = False
    error: str | None = None
    chain: list[x509.Certificate] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "sni": self.sni,
            "tls_version": self.tls_version,
            "verified": self.verified,
            "error": self.error,
            "chain": [
                {
                    "subject": c.subject.rfc4514_string(),
                    "issuer": c.issuer.rfc4514_string(),
                    "serial": serial_hex(c),
                    "not_after": rfc3339(c.not_valid_after_utc),
                    "sans": cert_names(c),
                    "fingerprint": fingerprint(c),
                }
                for c in self.chain
            ],
        }


def system_roots() -> tuple[x509.Certificate, ...]:
    """The system trust store, for ``certd probe`` without ``--ca-bundle``."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate:
            try:
                data = read_file(candidate, 16 * CERT_LIMIT)  # the whole system store, a few hundred KiB
                with warnings.catch_warnings():
                    # Some system roots carry encodings cryptography warns about (e.g. negative serials);
                    # the store is the operator's, not ours to lecture about on every probe.
                    warnings.simplefilter("ignore")
                    return tuple(load_pem_certs(data))
            except (OSError, ValueError):
                continue
    return ()


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    # ASCII digits in range: getaddrinfo would take 65536 + P as port P, and int() refuses "²" after isdigit() took it
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def served_chain(sock: ssl.SSLSocket) -> list[x509.Certificate]:
    """The certificates the peer sent, in the order sent, whether or not they verify.

    Why it reaches into ``ssl``: the served chain is the point of a probe (a
    missing intermediate is what it must show), and ``getpeercert`` gives only
    the leaf. The public ``SSLSocket.get_unverified_chain()`` (DER bytes)
    exists only from Python 3.13 and is used when present. Before that, the
    same OpenSSL call is only on the private ``_sslobj`` (an ``_ssl._SSLSocket``),
    whose ``get_unverified_chain()`` returns ``_ssl.Certificate`` objects; their
    ``public_bytes()`` gives PEM. This function is the only place certd touches
    ``_sslobj``; ``tests/test_library_seams.py`` checks its shape and names the
    Python version when it changes. Without either, the leaf alone is reported.
    """
    public = getattr(sock, "get_unverified_chain", None)
    if public is not None:  # Python >= 3.13
        return [x509.load_der_x509_certificate(der) for der in public() or []]
    private = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    if private is not None:  # Python 3.10 - 3.12
        return [x509.load_pem_x509_certificate(c.public_bytes().encode()) for c in private() or []]
    der = sock.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def probe(
    endpoint: str,
    sni: str | None,
    roots: tuple[x509.Certificate, ...] | None,
    *,
    timeout: float = 5.0,
    now: datetime | None = None,
) -> ProbeResult:
    """Handshake with ``endpoint`` sending ``sni``; verify against ``roots`` (system store if None)."""
    try:
        host, port = _split(endpoint)
    except ValueError as exc:
        return ProbeResult(endpoint, sni, error=str(exc))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we verify below with the pinned bundle, and want to see bad certs too
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            version = tls.version()
            chain = served_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(endpoint, sni, error=f"handshake failed: {exc}")
    if not chain:
        return ProbeResult(endpoint, sni, version, error="no certificate served")
    anchors = roots if roots is not None else system_roots()
    store = "the pinned roots" if roots is not None else "the system trust store"
    name, at = sni or host, now or datetime.now(UTC)
    why = _diagnose(chain, name, at)
    if why is not None:
        return ProbeResult(endpoint, sni, version, False, why, chain)
    if not anchors:
        return ProbeResult(endpoint, sni, version, False, f"{store} holds no certificates to verify against", chain)
    try:
        verify_chain(chain[0], tuple(chain[1:]), anchors, (name,), at)
    except CheckFailed:
        return ProbeResult(endpoint, sni, version, False, _untrusted(chain, store), chain)
    return ProbeResult(endpoint, sni, version, True, None, chain)


def _covers(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _which(i: int, cert: x509.Certificate) -> str:
    role = "leaf" if i == 0 else f"chain[{i}]"
    return f"the served {role} ({cert.subject.rfc4514_string()}, serial {serial_hex(cert)})"


def _diagnose(chain: list[x509.Certificate], name: str, now: datetime) -> str | None:
    """The first plain reason the served chain is unusable (expired, not yet valid, wrong name), or None."""
    for i, cert in enumerate(chain):
        if cert.not_valid_after_utc <= now:
            return f"{_which(i, cert)} expired at {rfc3339(cert.not_valid_after_utc)}"
        if cert.not_valid_before_utc > now:
            return f"{_which(i, cert)} is not valid before {rfc3339(cert.not_valid_before_utc)}"
    names = cert_names(chain[0])
    if not any(_covers(n, name) for n in names):
        return f"the served certificate does not cover {name} (it covers {', '.join(names) or 'no names'})"
    return None


def _untrusted(chain: list[x509.Certificate], store: str) -> str:
    top = chain[-1]
    served = "; ".join(f"[{i}] {c.subject.rfc4514_string()}" for i, c in enumerate(chain))
    return (f"the served chain does not lead to {store}: its top certificate ({top.subject.rfc4514_string()}) "
            f"was issued by {top.issuer.rfc4514_string()}, which is not trusted (served: {served})")


def verify_served(
    endpoint: str,
    sni: str,
    roots: tuple[x509.Certificate, ...],
    expected: x509.Certificate,
    timeout: timedelta,
) -> str:
    """Retry until ``endpoint`` serves ``expected`` with a verifying chain, or raise ``VerifyError``."""
    deadline = time.monotonic() + timeout.total_seconds()
    want = fingerprint(expected)
    delay = 0.1
    while True:
        result = probe(endpoint, sni, roots or None, timeout=min(5.0, max(timeout.total_seconds(), 0.5)))
        served = result.chain[0] if result.chain else None
        if served is not None and fingerprint(served) == want and result.verified:
            return f"serves serial {serial_hex(served)} ({result.tls_version}, chain verified)"
        if time.monotonic() >= deadline:
            if served is None:
                why = result.error or "no certificate served"
            elif fingerprint(served) != want:
                why = f"serves serial {serial_hex(served)}, expected {serial_hex(expected)}"
            else:
                why = f"serves the new certificate but its chain does not verify: {result.error}"
            raise VerifyError(f"verify {endpoint} (SNI {sni}): {why}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
