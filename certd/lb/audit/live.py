"""What ``audit-lb`` adds beyond the file: names against certd's config, and ``--live`` handshakes.

Both start from the ``TlsBackend`` list a parser found, so HAProxy and nginx
are judged the same way. ``--live`` repeats the handshake the load balancer
makes (its SNI, its CA file) with ``certd.probe.probe``, the verifier of
certd's own ``verify`` step, and checks the served leaf against the name the
load balancer checks, which is not always the SNI (HAProxy ``verifyhost``,
nginx ``proxy_ssl_name`` without ``proxy_ssl_server_name``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from certd.config.model import Config, HaproxyDeployConfig
from certd.core.durations import rfc3339
from certd.errors import CheckFailed
from certd.inputs import CERT_LIMIT, read_bounded
from certd.lb.audit.findings import SYSTEM_CA, Audit, Code, Finding, Level, TlsBackend, covers, unreadable
from certd.pki.certs import cert_names, load_pem_certs, serial_hex
from certd.pki.probe import probe, system_roots
from certd.pki.x509check import verify_chain

__all__ = ["config_findings", "live_findings"]


def _of(b: TlsBackend, found: list[Finding]) -> list[Finding]:
    """Findings about backend ``b`` in its file, and as doubtful as its configuration (a server inside ``.if``)."""
    return [replace(f, file=b.file, doubt=f.doubt or b.doubt) for f in found]


def config_findings(audit: Audit, config: Config) -> list[Finding]:
    """Names no certificate of ``config`` has, and CA files that are not the covering issuer's ``bundle_file``.

    Only a warning for a name: the backend's certificate may come from elsewhere; ``--live`` tells for sure.
    """
    return [f for b in audit.backends for f in _of(b, _config_findings(b, config))]


def _config_findings(b: TlsBackend, config: Config) -> list[Finding]:
    found: list[Finding] = []
    covering = [(n, c) for n, c in config.certificates.items()
                if b.name is not None and any(covers(p, b.name) for p in c.names)]
    if b.name is not None and not covering:
        found.append(Finding(b.line, Code.NAME_NOT_COVERED, f"{b.label}: checks the name {b.name}, which no "
                             f"certificate in {config.path} has", Level.WARNING))
    bundles = {config.issuers[c.issuer].bundle_file for _, c in covering if c.issuer in config.issuers}
    if covering and isinstance(b.ca_file, Path) and None not in bundles and b.ca_file.resolve() not in {
            p.resolve() for p in bundles if p is not None}:
        names = ", ".join(n for n, _ in covering)
        found.append(Finding(b.line, Code.CA_FILE_NOT_BUNDLE, f"{b.label}: pins {b.ca_file}, but certd keeps "
                             f"the bundle of {names}'s issuer in {', '.join(str(p) for p in bundles)}: a copy "
                             "goes stale when the CA changes; point the CA file there"))
    pushed = {d.ca_file.resolve() for d in config.deploy.values() if isinstance(d, HaproxyDeployConfig) and d.ca_file}
    if b.client_crt is False and isinstance(b.ca_file, Path) and b.ca_file.resolve() in pushed:
        found.append(Finding(b.line, Code.CA_FILE_NOT_LIVE, f"{b.label}: certd pushes {b.ca_file} live, but this "
                             "server line has no client `crt`, and HAProxy applies a new ca-file only to server "
                             "lines with one: a CA rotation would need a reload here; add `crt <HAProxy's client "
                             "certificate>` (certd haproxy-config --client-cert NAME)"))
    return found


def _roots(b: TlsBackend) -> tuple[tuple[x509.Certificate, ...] | None, str | None]:
    """What the load balancer verifies against (None: the system store), or why it cannot be read here."""
    if b.ca_file is None or b.ca_file == SYSTEM_CA:
        return None, None
    try:
        return tuple(load_pem_certs(read_bounded(Path(b.ca_file), CERT_LIMIT))), None
    except (OSError, ValueError) as exc:
        return None, f"cannot read the CA file {b.ca_file}: {unreadable(exc)}"


def _one(b: TlsBackend, endpoint: str, now: datetime, timeout: float) -> tuple[list[Finding], dict[str, Any]]:
    roots, problem = _roots(b)
    result = probe(endpoint, b.sni, roots, timeout=timeout, now=now)
    doc: dict[str, Any] = {"line": b.line, "label": b.label, "name_checked": b.name, **result.as_json()}
    doc.update(serial=None, names=[], not_after=None, covered=None)
    if not result.chain:
        doc["verified"] = False
        return [Finding(b.line, Code.LIVE_HANDSHAKE, f"{b.label}: {endpoint} (SNI {b.sni or 'none'}): "
                        f"{result.error}")], doc
    leaf = result.chain[0]
    doc.update(serial=serial_hex(leaf), names=cert_names(leaf), not_after=rfc3339(leaf.not_valid_after_utc))
    verified, error = result.verified, result.error
    probed_name = b.sni or endpoint.rpartition(":")[0].strip("[]")
    checked = b.name or (cert_names(leaf) or [probed_name])[0]  # no name check: the chain alone
    if problem is not None:
        verified, error = False, problem
    elif checked != probed_name:
        try:
            verify_chain(leaf, tuple(result.chain[1:]), roots or system_roots(), (checked,), now)
            verified, error = True, None
        except CheckFailed as exc:
            verified, error = False, str(exc)
    doc.update(verified=verified, error=error)
    found: list[Finding] = []
    where = f"{b.label}: {endpoint} (SNI {b.sni or 'none'}) serves serial {serial_hex(leaf)}"
    if b.name is not None:
        doc["covered"] = any(covers(n, b.name) for n in cert_names(leaf))
        if not doc["covered"]:
            has = ", ".join(cert_names(leaf)) or "no names"
            found.append(Finding(b.line, Code.NAME_NOT_COVERED, f"{where} for {has}, which does not cover {b.name}: "
                                 "the load balancer refuses it"))
            return found, doc
    if not verified:
        found.append(Finding(b.line, Code.LIVE_NOT_VERIFIED, f"{where}, which does not verify: {error}"))
    return found, doc


def live_findings(audit: Audit, now: datetime, timeout: float = 5.0) -> tuple[list[Finding], list[dict[str, Any]]]:
    """A handshake to every endpoint of every TLS backend, as the load balancer makes it; what each serves."""
    found: list[Finding] = []
    report: list[dict[str, Any]] = []
    for b in audit.backends:
        for endpoint in b.endpoints:
            more, doc = _one(b, endpoint, now, timeout)
            found += _of(b, more)
            report.append(doc)
    return found, report
