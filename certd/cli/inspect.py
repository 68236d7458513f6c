"""The ``certd`` commands that read: list, plan, history, probe, bundle, and ``check`` for monitoring.

None of them renews or contacts a CA. ``check`` follows the Nagios plugin
convention rather than certd's exit codes: 0 ok, 1 warning, 2 critical,
3 unknown (anything that stops it from judging: bad usage, an unusable
config or database).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from rich.markup import escape
from rich.table import Table

from certd.cli.base import (
    EXIT_FAILED,
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
    select,
    styled,
)
from certd.core.durations import parse_duration
from certd.core.status import Severity
from certd.errors import CertdError
from certd.inputs import read_file
from certd.pki.certs import certs_pem, load_pem_certs

__all__ = ["COMMANDS"]


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def list_cmd(state: State, as_json: bool) -> None:
    """Every certificate: name, issuer, names, status, serial, not_after, renew_at, last_error."""
    from certd.reports.views import list_doc


    doc = list_doc(state.app(sync=False))
    if as_json:
        emit_json(doc)
        return
    table = Table("name", "issuer", "names", "status", "serial", "not after", "renew at", "last error")
    for c in doc["certificates"]:
        table.add_row(
            c["name"], c["issuer"] or "-", ", ".join(c["names"]), styled(c["status"]),
            c["serial"] or "-", c["not_after"] or "-", c["renew_at"] or "-",
            f"[red]{escape(c['last_error'])}[/]" if c["last_error"] else "",
        )
    out.print(table)


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def plan_cmd(state: State, as_json: bool) -> None:
    """Dry run: what would renew, when and why. Changes nothing."""
    from certd.reports.views import plan_doc


    doc = plan_doc(state.app(sync=False))
    if as_json:
        emit_json(doc)
        return
    table = Table("name", "due", "renew at", "reason", "why")
    for p in doc["plan"]:
        table.add_row(p["name"], "[bold yellow]yes[/]" if p["due"] else "no", p["renew_at"], p["reason"], p["message"])
    out.print(table)


@click.command("history")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def history_cmd(state: State, name: str, as_json: bool) -> None:
    """Versions and events of one certificate, newest first."""
    from certd.reports.views import history_doc


    app = state.app(sync=False)
    if app.inventory.certificate(name) is None and name not in app.config.certificates:
        die(f"no certificate named {name}", EXIT_USAGE)
    doc = history_doc(app, name)
    if as_json:
        emit_json(doc)
        return
    versions = Table("serial", "state", "not before", "not after", "created", "failed step / error", title="versions")
    for v in doc["versions"]:
        versions.add_row(v["serial"], styled(v["state"]), v["not_before"], v["not_after"], v["created_at"],
                         escape(f"{v['failed_step']}: {v['error']}") if v["error"] else "")
    events = Table("at", "kind", "step", "message", "renewal", title="events")
    for e in doc["events"]:
        style = {"error": "red", "warning": "yellow"}.get(e["level"], "")
        events.add_row(e["at"], f"[{style}]{e['kind']}[/]" if style else e["kind"], e["step"] or "",
                       escape(e["message"]), e["renewal_id"] or "")
    out.print(versions)
    out.print(events)


@click.command("probe")
@click.argument("endpoint")
@click.option("--sni", help="Server name to send (default: the host part of ENDPOINT).")
@click.option("--ca-bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Verify against this bundle instead of the system store.")
@click.option("--timeout", default="5s", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def probe_cmd(endpoint: str, sni: str | None, ca_bundle: Path | None, timeout: str, as_json: bool) -> None:
    """What HOST:PORT serves: chain, SANs, serial, expiry, TLS version, verification."""
    from certd.pki.probe import probe

    roots = None
    if ca_bundle is not None:
        try:
            roots = tuple(load_pem_certs(read_file(ca_bundle)))
        except (OSError, ValueError) as exc:
            die(f"--ca-bundle {ca_bundle}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)
    host = endpoint.rpartition(":")[0].strip("[]")
    result = probe(endpoint, sni or host, roots, timeout=duration_option(timeout).total_seconds())
    doc = result.as_json()
    if as_json:
        emit_json(doc)
    else:
        verdict = "[green]verified[/]" if result.verified else f"[red]NOT verified[/]: {result.error}"
        out.print(f"{endpoint} (SNI {doc['sni']}): {doc['tls_version'] or '-'}, {verdict}")
        table = Table("#", "subject", "issuer", "serial", "not after", "SANs")
        for i, c in enumerate(doc["chain"]):
            table.add_row(str(i), c["subject"], c["issuer"], c["serial"], c["not_after"], ", ".join(c["sans"]))
        out.print(table)
    if not result.verified:
        sys.exit(EXIT_FAILED)


@click.command("bundle")
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), help="Write here, not stdout.")
@pass_state
def bundle_cmd(state: State, name: str, out_file: Path | None) -> None:
    """The minimal CA bundle a load balancer should pin for NAME's issuer (never the system store)."""
    from certd.deploy.publish import write_file_atomic

    select(state, (name,), False)
    app = state.app(sync=False)
    with exit_on_errors():
        pem = certs_pem(app.pipeline.trust_bundle(name))
    if out_file is None:
        click.echo(pem.decode(), nl=False)
        return
    with exit_on_errors():
        write_file_atomic(out_file, pem)
    err.print(f"wrote {out_file}")


def _unknown(message: str, as_json: bool) -> NoReturn:
    plugin_unknown("CERTD", message, as_json, {"certificates": []})


@click.command("check", cls=PluginCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--warn-within", metavar="DURATION", default=None,
              help="Also warn when a certificate expires within DURATION (e.g. 14d), even if nothing failed.")
@pass_state
def check_cmd(state: State, as_json: bool, warn_within: str | None) -> None:
    """Monitoring for cron and Nagios: one summary line (or --json), exit status by the worst certificate.

    \b
    0 OK        every certificate fine (pending, published, deployed, served)
    1 WARNING   expiring (past its renewal time), failing (time left), revoked
    2 CRITICAL  expired, or failing inside the hard deadline (critical)
    3 UNKNOWN   cannot judge: bad usage, config errors, no or unusable database

    Reads the inventory as it is: renews nothing, contacts no CA, migrates and creates nothing. Statuses
    are those of `certd list`; perfdata after "|" counts certificates by severity.
    """
    from certd.config.load import load_config
    from certd.reports.monitor import check_doc, check_summary, open_inventory

    within = None
    if warn_within is not None:
        try:
            within = parse_duration(warn_within)
        except ValueError as exc:
            _unknown(f"--warn-within: {exc}", as_json)
    try:
        app = open_inventory(load_config(state.config_path))
    except CertdError as exc:
        _unknown(str(exc), as_json)
    try:
        doc = check_doc(app, warn_within=within)
    except Exception as exc:  # a monitor must say UNKNOWN, never crash into exit 1 (WARNING to Nagios)
        _unknown(f"cannot read the inventory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                 as_json)
    finally:
        app.close()
    if as_json:
        emit_json(doc)
    else:
        click.echo(check_summary(doc))
    sys.exit(Severity(doc["status"]).rank)




COMMANDS = (list_cmd, plan_cmd, history_cmd, probe_cmd, bundle_cmd, check_cmd)
