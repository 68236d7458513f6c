"""The load balancer commands: ``certd haproxy-config`` writes the setup's lines, ``certd audit-lb`` checks one.

``haproxy-config`` reads only the config (no inventory, no CA) and uses
certd's exit codes (2 for anything wrong with what was asked). ``audit-lb``
is a monitoring plugin like ``certd check``: 0 ok, 1 warning, 2 critical,
3 unknown (the file cannot be read or judged, bad usage, a config that does
not load), so the same cron or Nagios wiring runs both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.markup import escape
from rich.table import Table

from certd.cli.base import (
    EXIT_USAGE,
    PluginCommand,
    State,
    die,
    duration_option,
    emit_json,
    err,
    exit_on_errors,
    out,
    pass_state,
    plugin_unknown,
)
from certd.core.clock import SystemClock
from certd.core.durations import rfc3339
from certd.errors import CertdError

if TYPE_CHECKING:
    from certd.lb.audit import Finding
    from certd.lb.audit.findings import Level

__all__ = ["COMMANDS"]

# audit-lb's levels are its own (certd.lb.audit.findings.Level, keyed here by value so the audit package loads
# only when audit-lb runs): Severity's three and "unknown", which a finding the audit cannot stand by has.
_STYLE = {"critical": "bold red", "unknown": "magenta", "warning": "yellow", "ok": "dim"}
_LABEL = {"critical": "critical", "unknown": "unknown", "warning": "warning", "ok": "note"}
_ORDER = ("critical", "unknown", "warning", "ok")  # the summary's order: as bad as the exit code says first
_PERF = ("ok", "warning", "critical", "unknown")  # the perfdata's and --json counts' order (new keys last)


def _backend(value: str) -> tuple[str, str]:
    name, sep, address = value.partition("=")
    if not sep or not name or not address:
        die(f"--backend {value}: expected NAME=HOST:PORT (a certificate name and the address its backend listens on)",
            EXIT_USAGE)
    return name, address


@click.command("haproxy-config")
@click.option("--edge", "edges", multiple=True, metavar="NAME",
              help="A certificate served to clients: its combined.pem goes on the bind line (repeatable).")
@click.option("--backend", "backends", multiple=True, metavar="NAME=HOST:PORT",
              help="A certificate a backend at HOST:PORT serves: one server line, pinned to its issuer's "
                   "bundle_file (repeatable).")
@click.option("--bind", default=":443", show_default=True, metavar="ADDR", help="Where the edge listens.")
@click.option("--client-cert", metavar="NAME",
              help="A certificate HAProxy presents to the backends (crt on each server line): backends can then "
                   "require mutual TLS, and HAProxy applies a pushed ca-file live (it does so only for server "
                   "lines with a client certificate).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def haproxy_config_cmd(state: State, edges: tuple[str, ...], backends: tuple[str, ...], bind: str,
                       client_cert: str | None, as_json: bool) -> None:
    """HAProxy lines for the re-encrypting setup: the edge's bind, a verified server line per backend.

    The edge bind serves each --edge certificate's combined.pem (TLS >= 1.2, HSTS, X-Forwarded-Proto,
    X-Request-ID). Each --backend becomes `server NAME HOST:PORT ssl verify required ca-file <its issuer's
    bundle_file>` with its first DNS name as sni, verifyhost and check-sni, health-checked with GET /healthz.
    Paste the output into haproxy.cfg, or load it as one more -f file.
    """
    from certd.lb.haproxy_config import haproxy_lines


    with exit_on_errors():
        lines = haproxy_lines(state.config, list(edges), [_backend(b) for b in backends], bind=bind,
                              client_cert=client_cert)
    for s in lines.servers:
        if not s.ca_file.exists():
            err.print(f"[yellow]warning:[/] {escape(str(s.ca_file))} (bundle_file of {escape(s.name)}'s issuer) "
                      f"does not exist yet: HAProxy will not start without it; `certd renew {escape(s.name)}` "
                      f"writes it, or `certd bundle {escape(s.name)} --out {escape(str(s.ca_file))}`")
    for crt in (*lines.crts, *{s.client_crt for s in lines.servers if s.client_crt}):
        if not crt.exists():
            err.print(f"[yellow]warning:[/] {escape(str(crt))} does not exist yet: issue it first "
                      "(`certd renew`), then start HAProxy (docs/deploy.md, \"First start\")")
    if as_json:
        emit_json(lines.as_json())
    else:
        click.echo(lines.text(), nl=False)


def _unknown(message: str, as_json: bool) -> NoReturn:
    plugin_unknown("CERTD AUDIT-LB", message, as_json, {"findings": []})


def _counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.level.value == s) for s in _PERF}


def _summary(file: Path, kind: str, status: Level, findings: list[Finding]) -> str:
    counts = _counts(findings)
    parts = [f"{counts[s]} {_LABEL[s]}{'s' if counts[s] != 1 and s not in ('critical', 'unknown') else ''}"
             for s in _ORDER if counts[s]]
    perf = " ".join(f"{s}={counts[s]}" for s in _PERF)
    found = ", ".join(parts) or "no pitfalls found"
    return f"CERTD AUDIT-LB {status.value.upper()} - {file} ({kind}): {found} | {perf}"


def _live_table(report: list[dict[str, Any]]) -> Table:
    table = Table("line", "backend", "endpoint", "sni", "serial", "names", "not after", "verified", title="served")
    for r in report:
        ok = "[green]yes[/]" if r["verified"] else f"[red]no[/]: {escape(r['error'] or '')}"
        table.add_row(str(r["line"]), escape(r["label"]), r["endpoint"], r["sni"] or "-", r["serial"] or "-",
                      ", ".join(r["names"]) or "-", r["not_after"] or "-", ok)
    return table


@click.command("audit-lb", cls=PluginCommand)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--live", is_flag=True,
              help="Also connect to every TLS backend as the load balancer does (its SNI, its CA file) and report "
                   "what is served.")
@click.option("--timeout", default="5s", show_default=True, help="Per handshake, with --live.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def audit_lb_cmd(state: State, file: Path, live: bool, timeout: str, as_json: bool) -> None:
    """Check a haproxy.cfg or nginx.conf against the re-encrypting setup's pitfalls, by line.

    \b
    0 OK        no pitfall (notes may be printed)
    1 WARNING   weaker than the setup should be (system store, no SNI, no HSTS, TLS < 1.2, ...)
    2 CRITICAL  a backend whose certificate is not verified or not name-checked, a config the server
                refuses, or (--live) a backend that fails the load balancer's handshake
    3 UNKNOWN   the file cannot be read or is neither HAProxy nor nginx, bad usage, a config that does not load,
                or (with no critical finding) something the audit cannot judge: a value from the environment,
                a .if block, an nginx include it cannot read, settings in a file it did not see

    The kind is detected from the content. With a certd config (-c, or ./certd.toml when it exists), the
    names the load balancer checks are looked up among its certificates, and CA files compared with the
    issuers' bundle_file. Every finding has a line and a code; see docs/load-balancer.md.
    """
    from certd.config.load import load_config
    from certd.lb.audit import AuditError, audit_file, config_findings, live_findings
    from certd.lb.audit.findings import worst


    try:
        per_handshake = duration_option(timeout).total_seconds()
    except click.BadParameter as exc:
        _unknown(f"--timeout: {exc.message}", as_json)
    try:
        audit = audit_file(file)
    except AuditError as exc:
        _unknown(str(exc), as_json)
    findings = list(audit.findings)
    explicit = click.get_current_context().find_root().params.get("config_path") is not None
    config = None
    if explicit or state.config_path.exists():
        try:
            config = load_config(state.config_path)
        except CertdError as exc:
            _unknown(str(exc), as_json)
        findings += config_findings(audit, config)
    now = SystemClock().now()
    report = None
    if live:
        more, report = live_findings(audit, now, per_handshake)
        findings += more
    findings.sort(key=lambda f: (f.line, f.code))
    status = worst(f.level for f in findings)
    if as_json:
        emit_json({
            "file": str(file), "kind": audit.kind, "status": status.value,
            "findings": [f.as_json() for f in findings],
            "counts": _counts(findings),
            "backends": [b.as_json() for b in audit.backends],
            "live": report, "config": str(config.path) if config else None, "checked_at": rfc3339(now),
        })
    else:
        for f in findings:
            style = _STYLE[f.level.value]
            doubt = f" [{style}](unknown: {escape(f.doubt)})[/]" if f.doubt and f.doubt not in f.message else ""
            out.print(f"{escape(str(f.file or file))}:{f.line}: [{style}]{_LABEL[f.level.value]}[/] {f.code.value}: "
                      f"{escape(f.message)}{doubt}", soft_wrap=True)
        if report is not None:
            out.print(_live_table(report))
        out.print(escape(_summary(file, audit.kind, status, findings)), soft_wrap=True)
    sys.exit(status.exit_code)


COMMANDS = (haproxy_config_cmd, audit_lb_cmd)
