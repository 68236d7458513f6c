"""The ``certd`` command: the group, and the commands that change things (renew, deploy, revoke, import, run).

Shared helpers and exit codes live in ``cli_base``; the reading commands in
``cli_inspect``; ``certd db`` in ``cli_db``.
"""

from __future__ import annotations

import errno
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from certd import __version__
from certd.cli.base import (
    EXIT_FAILED,
    EXIT_INVENTORY,
    EXIT_USAGE,
    State,
    die,
    duration_option,
    emit_json,
    err,
    exit_on_errors,
    out,
    output_failed,
    pass_state,
    print_results,
    read_input,
    run_many,
    select,
    stdout_closed,
)
from certd.cli.ca import ca_group
from certd.cli.db import db_group
from certd.cli.inspect import COMMANDS
from certd.cli.lb import COMMANDS as LB_COMMANDS
from certd.errors import CertdError
from certd.inputs import CERT_LIMIT, KEY_LIMIT, InputError, Part
from certd.logs import setup_logging
from certd.pki.revocation import RevocationReason

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns a closed stdout into a quiet exit before click reports it as a failure."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            stdout_closed()
        except Exception as exc:
            # A database fault after the inventory opened: one line, exit 3. SQLAlchemy is imported only by
            # commands that open the inventory, so an error cannot be one of its own before then.
            sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
            if sqlalchemy_exc is None or not isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
                raise
            from certd.inventory.faults import inventory_error

            config = ctx.obj._config if isinstance(ctx.obj, State) else None
            die(str(inventory_error(config.database.url if config else "<unknown>", exc)), EXIT_INVENTORY)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="Config file (default: $CERTD_CONFIG, then ./certd.toml).",
)
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log level (logs go to stderr; default: info for `run`, warning otherwise).")
@click.version_option(__version__, prog_name="certd")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Keep TLS certificates fresh on load balancers and backends.

    certd issues certificates (ACME, Vault PKI or its own local CA), writes
    them atomically, makes servers load them, and proves they are served.
    """
    from certd.config.load import default_config_path

    setup_logging(log_level or ("info" if ctx.invoked_subcommand == "run" else "warning"))
    # `main` hands in when the process started (see certd.entry); in-process callers get "now".
    invoked_at = ctx.obj if isinstance(ctx.obj, datetime) else datetime.now(UTC)
    ctx.obj = State(config_path or default_config_path(), invoked_at)
    ctx.call_on_close(lambda: ctx.obj._app.close() if ctx.obj._app else None)


@cli.command("check-config")
@click.option("--strict", is_flag=True, help="Treat referenced files that do not exist yet as errors.")
@pass_state
def check_config(state: State, strict: bool) -> None:
    """Validate the config; errors name the file, the key and the problem."""
    from certd.config.rules import check_files, check_secret_modes

    config = state.config
    missing = check_files(config)
    for line in missing:
        (err.print(f"[red]error:[/] {line}") if strict else err.print(f"[yellow]warning:[/] {line}"))
    for line in check_secret_modes(config):  # warnings even with --strict: a mode is the operator's call
        err.print(f"[yellow]warning:[/] {escape(line)}")
    if strict and missing:
        sys.exit(EXIT_USAGE)
    out.print(
        f"{config.path}: ok ({len(config.certificates)} certificates, {len(config.issuers)} issuers, "
        f"{len(config.deploy)} deploy targets)"
    )


@cli.command("renew")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every certificate in the config.")
@click.option("--force", is_flag=True, help="Renew even if not due.")
@click.option("--wait", default="5m", show_default=True, help="How long to wait for a renewal another process runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def renew_cmd(state: State, names: tuple[str, ...], all_: bool, force: bool, wait: str, as_json: bool) -> None:
    """Renew now through the full pipeline (only what is due, unless --force).

    Exit status 0 only if every certificate succeeded or was not due.
    """
    chosen = select(state, names, all_)
    wait_for = duration_option(wait)
    app = state.app()
    bulk = len(chosen) > 1 and err.is_terminal and not as_json
    results = run_many(chosen, lambda n: app.pipeline.renew(n, force=force, wait=wait_for,
                                                            requested_at=state.invoked_at),
                        app.config.daemon.workers, "renewing", bulk)
    print_results(results, as_json)


@cli.command("deploy")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every certificate in the config.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def deploy_cmd(state: State, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Re-run deploy and verify for the current version."""
    chosen = select(state, names, all_)
    app = state.app()
    if not all_:  # asked by name for what was never issued: a usage error, and nothing is recorded
        never = [n for n in chosen if app.inventory.current_version(n) is None]
        if never:
            die(f"nothing issued yet for {', '.join(never)}: `certd renew {' '.join(never)}` first", EXIT_USAGE)
    bulk = len(chosen) > 1 and err.is_terminal and not as_json
    results = run_many(chosen, app.pipeline.deploy, app.config.daemon.workers, "deploying", bulk)
    print_results(results, as_json)


@cli.command("revoke")
@click.argument("name")
@click.option("--reason", type=click.Choice([r.value for r in RevocationReason]), default="unspecified",
              show_default=True, help="RFC 5280 reason.")
@click.option("--no-replace", is_flag=True, help="Do not renew right after revoking.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def revoke_cmd(state: State, name: str, reason: str, no_replace: bool, as_json: bool) -> None:
    """Revoke the current version at its issuer, then renew so a valid certificate is served."""
    select(state, (name,), False)
    app = state.app()
    results = [app.pipeline.revoke(name, RevocationReason(reason))]
    if results[0].ok and not no_replace:
        results.append(app.pipeline.renew(name, force=True))
    print_results(results, as_json)


@cli.group("account")
def account_group() -> None:
    """ACME accounts."""


@account_group.command("rollover")
@click.argument("issuer")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def account_rollover(state: State, issuer: str, as_json: bool) -> None:
    """Replace an ACME issuer's account key (RFC 8555 key change); the account and its certificates stay."""
    config = state.config
    if issuer not in config.issuers or config.issuers[issuer].type != "acme":
        acme = [n for n, c in config.issuers.items() if c.type == "acme"]
        die(f"{config.path}: no ACME issuer named {issuer} (ACME issuers: {', '.join(acme) or 'none'})", EXIT_USAGE)
    with exit_on_errors():
        uri = state.app().pipeline.rollover(issuer)
    if as_json:
        emit_json({"issuer": issuer, "account": uri, "rolled_over": True})
    else:
        out.print(f"{issuer}: new account key in use for {uri}")


@cli.command("import")
@click.argument("name")
@click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--chain", "chain_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def import_cmd(state: State, name: str, cert_file: Path, key_file: Path, chain_file: Path | None,
               as_json: bool) -> None:
    """Adopt an existing certificate and key: checked like an issued one, then published.

    The chain is rebuilt by signature from the leaf out of every certificate
    given; any that does not belong is dropped with a warning naming it.
    """
    select(state, (name,), False)
    files: dict[Part, tuple[str, Path, int]] = {"cert": ("--cert", cert_file, CERT_LIMIT),
                                                "key": ("--key", key_file, KEY_LIMIT)}
    if chain_file is not None:
        files["chain"] = ("--chain", chain_file, CERT_LIMIT)
    data = {part: read_input(*spec) for part, spec in files.items()}
    app = state.app()
    try:
        result = app.pipeline.import_certificate(name, data["cert"], data["key"], data.get("chain"))
    except InputError as exc:
        option, path, _ = files[exc.part]
        die(f"{option} {path}: {exc}", EXIT_USAGE)
    except ValueError as exc:
        die(f"import {name}: {exc}", EXIT_USAGE)
    except CertdError as exc:
        die(f"import {name}: {exc}", EXIT_FAILED)
    print_results([result], as_json)


@cli.command("run")
@click.option("--agent", is_flag=True,
              help="Only install (publish + deploy) the newest versions on this host; never issue.")
@pass_state
def run_cmd(state: State, agent: bool) -> None:
    """The daemon: renews on schedule and serves the HTTP API until SIGTERM.

    SIGHUP reloads the config (an invalid one is logged and ignored). With
    --agent (or [daemon] role = "agent") it issues nothing and installs what
    the issuing replicas recorded in the shared inventory.
    """
    from certd.daemon import Daemon

    with exit_on_errors():
        daemon = Daemon(state.config_path, state.config, agent=agent)
    sys.exit(daemon.run())


for _command in (*COMMANDS, *LB_COMMANDS, db_group, ca_group):
    cli.add_command(_command)


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}  # stdout to /dev/full, a full disk, a dead tty


def main(invoked_at: float | None = None) -> None:
    """Console entry point; ``invoked_at`` is when the process started (a Unix time)."""
    try:
        cli(prog_name="certd", obj=None if invoked_at is None else datetime.fromtimestamp(invoked_at, UTC))
    except SystemExit:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            stdout_closed()
        raise
    except BrokenPipeError:
        stdout_closed()
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        output_failed(exc)
