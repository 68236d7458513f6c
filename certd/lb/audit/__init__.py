"""``certd audit-lb``: a haproxy.cfg or nginx.conf checked against the re-encrypting setup's pitfalls, by line.

``findings`` holds the codes and levels (and the doubts that make a finding
UNKNOWN), ``haproxy*`` and ``nginx*`` a reader and an auditor each, modelled
on the server's own parsing, ``live`` the checks against certd's config and
real handshakes. Which parser runs is decided by content, not file name (a file
called ``lb.conf`` is either): nginx statements end in ``;`` or open ``{``,
HAProxy's section headers do neither.
"""

from __future__ import annotations

from pathlib import Path

from certd.inputs import read_bounded
from certd.lb.audit.findings import SEVERITY, Audit, AuditError, Code, Finding, Level, TlsBackend, unreadable, worst
from certd.lb.audit.haproxy import audit_haproxy, haproxy_score
from certd.lb.audit.live import config_findings, live_findings
from certd.lb.audit.nginx import audit_nginx, nginx_score

__all__ = [
    "SEVERITY",
    "Audit",
    "AuditError",
    "Code",
    "Finding",
    "Level",
    "TlsBackend",
    "audit_file",
    "audit_text",
    "config_findings",
    "detect",
    "live_findings",
    "worst",
]

_LIMIT = 4 * 1024 * 1024  # far above any real load balancer config; a mistaken path to a log stops here


def detect(text: str) -> str:
    """``"haproxy"`` or ``"nginx"``; ``AuditError`` when the text looks like neither."""
    haproxy, nginx = haproxy_score(text), nginx_score(text)
    if haproxy == nginx == 0:
        raise AuditError("neither a haproxy.cfg (no global/defaults/frontend/backend/listen section) nor an "
                         "nginx.conf (no statements ending in ';' or opening '{')")
    return "haproxy" if haproxy > nginx else "nginx"


def audit_text(path: Path, text: str) -> Audit:
    """Audit ``text`` as the content of ``path`` (which relative CA files resolve against)."""
    return audit_haproxy(path, text) if detect(text) == "haproxy" else audit_nginx(path, text)


def audit_file(path: Path) -> Audit:
    """Read (bounded) and audit one file; ``AuditError`` when it cannot be read or judged."""
    try:
        text = read_bounded(path, _LIMIT).decode("utf-8", errors="replace")
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read: {unreadable(exc)}") from exc
    try:
        return audit_text(path, text)
    except AuditError as exc:
        raise AuditError(f"{path}: {exc}") from exc
