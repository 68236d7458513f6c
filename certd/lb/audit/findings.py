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

A fourth level, ``unknown``, is not a ``Severity`` (that enum is certd's
certificate status, shared with ``certd check``): it is this audit's answer
for what it read but cannot judge (a value from the environment, a ``.if``
block, a file it did not see). A finding whose judgement rests on such a
line carries a ``doubt`` and is UNKNOWN whatever its code says, so the audit
never answers OK for what it did not understand. Overall, as a Nagios plugin
ranks them: critical, then unknown, then warning, then ok.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from certd.inputs import CERT_LIMIT, read_bounded

__all__ = [
    "MAX_PINNED",
    "OLD_TLS",
    "SEVERITY",
    "SYSTEM_CA",
    "Audit",
    "AuditError",
    "Code",
    "Doubt",
    "Finding",
    "Level",
    "TlsBackend",
    "count_certificates",
    "covers",
    "doubt_text",
    "is_ip",
    "settle",
    "unreadable",
    "worst",
]

MAX_PINNED = 10  # more CA certificates than this in a ca-file is a trust store, not a pinned bundle
SYSTEM_CA = "@system-ca"  # HAProxy's name for the system trust store; also what an unpinned nginx trusts
OLD_TLS = frozenset({"sslv3", "tlsv1", "tlsv1.0", "tlsv10", "tlsv1.1", "tlsv11"})


class Level(StrEnum):
    """How bad a finding is: ``Severity``'s three words plus ``unknown``; the exit code is a Nagios plugin's."""

    OK = "ok"
    WARNING = "warning"
    UNKNOWN = "unknown"
    CRITICAL = "critical"

    @property
    def exit_code(self) -> int:
        return _EXIT[self]


_EXIT = {Level.OK: 0, Level.WARNING: 1, Level.CRITICAL: 2, Level.UNKNOWN: 3}
_WORSE = (Level.OK, Level.WARNING, Level.UNKNOWN, Level.CRITICAL)  # a real critical outranks "cannot tell"


def worst(levels: Iterable[Level]) -> Level:
    """The overall level: critical, else unknown, else warning, else ok (Nagios' order, not the exit codes')."""
    return max(levels, key=_WORSE.index, default=Level.OK)


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
    CONFIG_REFUSED = "config-refused"  # the server refuses to load the file (NUL byte, bad quoting, bad value, ...)
    CONDITIONAL = "conditional"  # HAProxy .if/.elif/.else block whose condition is decided at start-up
    ENVIRONMENT = "environment"  # a value HAProxy takes from an environment variable
    UNSEEN = "unseen-context"  # rests on settings of a file not audited (-f before it, the nginx file including it)
    INCLUDE = "include-not-read"  # an nginx include the audit could not read: what it adds is not judged
    TOO_DEEP = "too-deep"  # blocks nested deeper than the audit follows
    NUL_BYTE = "nul-byte"  # nginx: a NUL byte in a word (C string functions stop there, nginx's length does not)
    AMBIGUOUS = "ambiguous-keyword"  # a keyword the audit does not know, before one it judges: is it its argument?
    NOT_AUDITED = "not-audited"  # a construct the audit does not model (nginx stream proxies)


SEVERITY: dict[Code, Level] = {
    Code.VERIFY_NONE: Level.CRITICAL,
    Code.NO_CA_FILE: Level.CRITICAL,
    Code.NO_NAME_CHECK: Level.CRITICAL,
    Code.LIVE_HANDSHAKE: Level.CRITICAL,
    Code.LIVE_NOT_VERIFIED: Level.CRITICAL,
    Code.NAME_NOT_COVERED: Level.CRITICAL,
    Code.CONFIG_REFUSED: Level.CRITICAL,
    Code.SYSTEM_CA: Level.WARNING,
    Code.CA_FILE_UNREADABLE: Level.WARNING,
    Code.CA_FILE_NOT_BUNDLE: Level.WARNING,
    Code.NO_SNI: Level.WARNING,
    Code.NO_SSL_NAME: Level.WARNING,
    Code.PLAINTEXT_BACKEND: Level.WARNING,
    Code.NO_CHECK: Level.WARNING,
    Code.CHECK_NOT_TLS: Level.WARNING,
    Code.CHECK_NO_SNI: Level.WARNING,
    Code.CHECK_NOT_HTTP: Level.WARNING,
    Code.TLS_BELOW_12: Level.WARNING,
    Code.NO_HSTS: Level.WARNING,
    Code.NO_FORWARDED_PROTO: Level.WARNING,
    Code.NO_REQUEST_ID: Level.WARNING,
    Code.TLS_MIN_IMPLICIT: Level.OK,
    Code.CA_FILE_NOT_LIVE: Level.OK,
    Code.CONDITIONAL: Level.UNKNOWN,
    Code.ENVIRONMENT: Level.UNKNOWN,
    Code.UNSEEN: Level.UNKNOWN,
    Code.INCLUDE: Level.UNKNOWN,
    Code.TOO_DEEP: Level.UNKNOWN,
    Code.NUL_BYTE: Level.UNKNOWN,
    Code.AMBIGUOUS: Level.UNKNOWN,
    Code.NOT_AUDITED: Level.UNKNOWN,
}


@dataclass(frozen=True)
class Finding:
    """One pitfall at one line of the audited file. ``severity`` may be lowered (a name only a config vouches for).

    ``doubt`` says why the audit cannot stand by it (a line it rests on is conditional, from the environment,
    or in a file it did not see): the finding is then UNKNOWN, whatever its code's level. ``file`` is set for
    a line of another file than the one audited (an nginx include).
    """

    line: int
    code: Code
    message: str
    severity: Level | None = None
    doubt: str | None = None
    file: Path | None = None

    @property
    def level(self) -> Level:
        return Level.UNKNOWN if self.doubt else (self.severity or SEVERITY[self.code])

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code.value, "severity": self.level.value, "message": self.message,
                "doubt": self.doubt, "file": None if self.file is None else str(self.file)}


@dataclass(frozen=True)
class Doubt:
    """Why one judgement cannot be made: the line it rests on (in ``file``, None: the audited one) and a sentence."""

    line: int
    code: Code
    why: str
    file: Path | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else f"line {self.line}"


def doubt_text(doubts: Iterable[Doubt]) -> str | None:
    """All the doubts as one sentence (None: there are none)."""
    unique = list(dict.fromkeys(doubts))
    return "; ".join(f"{d.where()}: {d.why}" for d in unique) or None


def settle(found: list[Finding], doubts: Iterable[Doubt], line: int, label: str,
           file: Path | None = None) -> list[Finding]:
    """The findings of one backend or edge, made UNKNOWN when a line they rest on cannot be judged.

    Without doubts they stand. With any, each finding carries the doubt (so a critical that an unseen line
    could undo is not claimed), and one UNKNOWN finding per doubt names the line and why, even when nothing
    was found: "no pitfall" is no more certain than a pitfall there.
    """
    unique = list(dict.fromkeys(doubts))
    why = doubt_text(unique)
    if why is None:
        return found
    return ([replace(f, doubt=why) for f in found]
            + [Finding(line, d.code, f"{label}: cannot be judged: {d.where()}: {d.why}", doubt=d.why, file=file)
               for d in unique])


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
    file: Path | None = None  # an nginx include the line is in (None: the audited file)
    doubt: str | None = None  # why its configuration is not certain: what is found about it is UNKNOWN

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
    def status(self) -> Level:
        return worst(f.level for f in self.findings)


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
