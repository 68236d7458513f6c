"""What ``certd audit-lb`` reports: named findings with a line and a fixed severity, and the TLS backends found.

Each pitfall is a ``Code`` with one severity (``SEVERITY``), as a status has
one in ``certd/status.py``: the exit code, the JSON and the table cannot
disagree about how bad a finding is, and a test compares codes, not prose.

The severities follow one question, "can someone read or change traffic
because of this?":

- ``critical``: the load balancer would accept any certificate for the
  backend (no verification, or verification without any name check), or
  the server refuses the config (verify without a CA file), or ``--live``
  shows the backend failing the handshake the load balancer makes.
- ``warning``: weaker than the setup it should be (system store instead of a
  pinned bundle, no SNI, health checks that prove less, TLS below 1.2 at the
  edge, no HSTS, headers the backends rely on not set), or something the
  audit could not confirm (a CA file it cannot read).
- ``ok`` (a note): a version-dependent default that happens to be safe on
  current releases (HAProxy >= 2.2 defaults to TLS 1.2); said so it is
  stated rather than relied on, without changing the exit code.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from certd.core.status import Severity
from certd.inputs import CERT_LIMIT, read_bounded

__all__ = [
    "MAX_PINNED",
    "OLD_TLS",
    "SEVERITY",
    "SYSTEM_CA",
    "Audit",
    "AuditError",
    "Code",
    "Finding",
    "TlsBackend",
    "count_certificates",
    "covers",
    "is_ip",
    "unreadable",
]

MAX_PINNED = 10  # more CA certificates than this in a ca-file is a trust store, not a pinned bundle
SYSTEM_CA = "@system-ca"  # HAProxy's name for the system trust store; also what an unpinned nginx trusts
OLD_TLS = frozenset({"sslv3", "tlsv1", "tlsv1.0", "tlsv10", "tlsv1.1", "tlsv11"})


class AuditError(ValueError):
    """The file cannot be judged at all (unreadable, neither HAProxy nor nginx, unbalanced braces): UNKNOWN."""


class Code(StrEnum):
    """One pitfall; the value is what ``--json`` and the table show."""

    VERIFY_NONE = "verify-none"  # a TLS backend whose certificate is not verified
    NO_CA_FILE = "no-ca-file"  # verification asked for, nothing to verify against: the server refuses the config
    NO_NAME_CHECK = "no-name-check"  # verified chain, but no name: any certificate from the CA passes
    SYSTEM_CA = "system-ca"  # verified against the system store (or a file that big), not a pinned bundle
    CA_FILE_UNREADABLE = "ca-file-unreadable"  # the audit could not count what the CA file holds
    CA_FILE_NOT_BUNDLE = "ca-file-not-bundle"  # pins another file than the issuer's bundle_file certd keeps current
    NO_SNI = "no-sni"  # no server name sent: a backend with several certificates picks its default
    NO_SSL_NAME = "no-ssl-name"  # nginx checks (and sends) the upstream group's name, which no certificate holds
    NAME_NOT_COVERED = "name-not-covered"  # the name checked is not among the backend certificate's names
    PLAINTEXT_BACKEND = "plaintext-backend"  # the load balancer talks to this backend without TLS
    NO_CHECK = "no-check"  # no health check: a dead backend keeps getting traffic
    CHECK_NOT_TLS = "check-not-tls"  # health checks go in clear text to another port or address
    CHECK_NO_SNI = "check-no-sni"  # health checks send no SNI (HAProxy's `sni` is not used by checks)
    CHECK_NOT_HTTP = "check-not-http"  # the check only proves a handshake, not GET /healthz
    TLS_BELOW_12 = "tls-below-1.2"  # the edge accepts TLS 1.0 or 1.1
    TLS_MIN_IMPLICIT = "tls-min-implicit"  # no minimum stated; the build's default decides (a note)
    CA_FILE_NOT_LIVE = "ca-file-not-live"  # no client crt: a pushed ca-file is not applied until a reload (a note)
    NO_HSTS = "no-hsts"  # no Strict-Transport-Security at the edge
    NO_FORWARDED_PROTO = "no-forwarded-proto"  # backends cannot tell the client used HTTPS
    NO_REQUEST_ID = "no-request-id"  # no X-Request-ID to join the load balancer's and the backend's logs
    LIVE_HANDSHAKE = "live-handshake"  # --live: the handshake the load balancer makes fails
    LIVE_NOT_VERIFIED = "live-not-verified"  # --live: the served chain does not verify to what is pinned


SEVERITY: dict[Code, Severity] = {
    Code.VERIFY_NONE: Severity.CRITICAL,
    Code.NO_CA_FILE: Severity.CRITICAL,
    Code.NO_NAME_CHECK: Severity.CRITICAL,
    Code.LIVE_HANDSHAKE: Severity.CRITICAL,
    Code.LIVE_NOT_VERIFIED: Severity.CRITICAL,
    Code.NAME_NOT_COVERED: Severity.CRITICAL,
    Code.SYSTEM_CA: Severity.WARNING,
    Code.CA_FILE_UNREADABLE: Severity.WARNING,
    Code.CA_FILE_NOT_BUNDLE: Severity.WARNING,
    Code.NO_SNI: Severity.WARNING,
    Code.NO_SSL_NAME: Severity.WARNING,
    Code.PLAINTEXT_BACKEND: Severity.WARNING,
    Code.NO_CHECK: Severity.WARNING,
    Code.CHECK_NOT_TLS: Severity.WARNING,
    Code.CHECK_NO_SNI: Severity.WARNING,
    Code.CHECK_NOT_HTTP: Severity.WARNING,
    Code.TLS_BELOW_12: Severity.WARNING,
    Code.NO_HSTS: Severity.WARNING,
    Code.NO_FORWARDED_PROTO: Severity.WARNING,
    Code.NO_REQUEST_ID: Severity.WARNING,
    Code.TLS_MIN_IMPLICIT: Severity.OK,
    Code.CA_FILE_NOT_LIVE: Severity.OK,
}


@dataclass(frozen=True)
class Finding:
    """One pitfall at one line of the audited file. ``severity`` may be lowered (a name only a config vouches for)."""

    line: int
    code: Code
    message: str
    severity: Severity | None = None

    @property
    def level(self) -> Severity:
        return self.severity or SEVERITY[self.code]

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code.value, "severity": self.level.value, "message": self.message}


@dataclass(frozen=True)
class TlsBackend:
    """A backend the load balancer reaches over TLS, as configured: what ``--live`` repeats and names are checked for.

    ``sni`` is what the load balancer sends (None: no SNI); ``name`` what it
    checks the certificate against (None: no name check); ``ca_file`` what
    it verifies against (``SYSTEM_CA`` for the system store, None: nothing).
    """

    line: int
    label: str
    endpoints: tuple[str, ...]
    sni: str | None
    name: str | None
    ca_file: Path | str | None
    verify: bool
    client_crt: bool | None = None  # HAProxy: the server line has `crt` (None: not HAProxy, or not known)

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "label": self.label, "endpoints": list(self.endpoints), "sni": self.sni,
                "name": self.name, "ca_file": None if self.ca_file is None else str(self.ca_file),
                "verify": self.verify}


@dataclass(frozen=True)
class Audit:
    """The findings of one file, and the TLS backends it configures (for ``--live`` and the name checks)."""

    path: Path
    kind: str  # "haproxy" or "nginx"
    findings: list[Finding]
    backends: list[TlsBackend] = field(default_factory=list)

    @property
    def status(self) -> Severity:
        return max((f.level for f in self.findings), key=lambda s: s.rank, default=Severity.OK)


def count_certificates(path: Path) -> int:
    """PEM certificates in a CA file (or in the files of a CA directory); raises ``OSError`` or ``ValueError``.

    Counted, not parsed: a system store holds encodings ``cryptography`` warns about, and only the number
    matters. Read with bounds, since the path comes from a file under audit (``/dev/zero`` would never end).
    """
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return sum(read_bounded(f, CERT_LIMIT).count(b"-----BEGIN CERTIFICATE-----") for f in files)


def unreadable(exc: OSError | ValueError) -> str:
    """Why a file could not be read, without the traceback's noise."""
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def covers(pattern: str, name: str) -> bool:
    """Whether a certificate name (``*.example.com`` covers one label) covers ``name``; IPs compare as addresses."""
    if is_ip(pattern) or is_ip(name):
        return is_ip(pattern) and is_ip(name) and (
            ipaddress.ip_address(pattern.strip("[]")) == ipaddress.ip_address(name.strip("[]")))
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name
