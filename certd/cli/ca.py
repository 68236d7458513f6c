"""``certd ca``: moving an issuer to a new CA with a trust overlap (``ca_rotation``), and where a rotation stands.

Exit codes as everywhere: 0 the rotation finished (or the status was shown),
1 it stopped before the end (a sink refused the bundle, a re-issue failed:
what is done stays done, run it again to resume), 2 bad usage or an issuer
certd cannot rotate, 3 the inventory is unusable.
"""

from __future__ import annotations

import sys

import click
from rich.markup import escape
from rich.table import Table

from certd.cli.base import EXIT_FAILED, State, emit_json, err, exit_on_errors, out, pass_state, styled
from certd.engine.result import Result

__all__ = ["ca_group"]


@click.group("ca")
def ca_group() -> None:
    """CA rotation with a trust overlap: the local CA's, or following a Vault mount's new issuer."""


@ca_group.command("rotate")
@click.argument("issuer")
@click.option("--batch", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Certificates re-issued at a time; a batch with a failure stops the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the phases and renewals as JSON.")
@pass_state
def ca_rotate(state: State, issuer: str, batch: int, as_json: bool) -> None:
    """Move ISSUER to a new CA without a failed handshake, or resume a rotation that stopped.

    Local CA: stages a new CA, pins old and new in the issuer's bundle_file and pushes it to every
    load balancer that pins it (HAProxy ca_file; each must confirm), then lets the new CA sign,
    re-issues every certificate still served under the old CA in batches, and drops the old CA
    from the bundle only when no served certificate needs it. Vault: after the CA operator switched
    the mount's default issuer (and the new root is in `roots`), the same without stage and promote.
    Safe to run again after a failure.
    """
    from certd.engine.ca_rotation import rotate

    app = state.app()

    def progress(result: Result) -> None:
        if not as_json:
            detail = result.error or result.state or ""
            err.print(f"  {result.name}: {result.outcome} {result.serial or ''} {detail}".rstrip(), markup=False)

    with exit_on_errors():
        report = rotate(app.services, issuer, batch=batch, progress=progress)
    if as_json:
        emit_json(report.as_json())
    else:
        for phase, message in report.phases:
            out.print(f"[bold]{phase:8}[/] {escape(message)}")
        out.print(f"rotation of {escape(issuer)}: " + ("[green]done[/]" if report.ok else "[red]stopped[/]"))
    if not report.ok:
        sys.exit(EXIT_FAILED)


@ca_group.command("status")
@click.argument("issuer")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def ca_status(state: State, issuer: str, as_json: bool) -> None:
    """Which CA of ISSUER signs, whether one is staged or retired, and which certificates are still on the old one."""
    from certd.engine.ca_rotation import rotation_status

    app = state.app()
    with exit_on_errors():
        doc = rotation_status(app.services, issuer)
    if as_json:
        emit_json(doc)
        return
    table = Table("role", "CA certificate")
    for role in ("signing", "staged", "retired"):
        for line in doc[role]:
            table.add_row(styled(role), escape(line))
    out.print(table)
    on_old = doc["on_retired"]
    out.print(f"served under a retired CA: {escape(', '.join(on_old)) if on_old else 'none'}")
