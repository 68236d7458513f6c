"""The ``certd`` command.

Exit codes scripts can trust: 0 everything asked for succeeded (a renewal
that was not due counts as success), 1 at least one operation failed,
2 bad usage or configuration, 3 the inventory (database) is unusable.
``certd check`` alone speaks the Nagios plugin convention instead: 0 ok,
1 warning, 2 critical, 3 unknown (anything that stops it from judging,
bad usage and an unusable config included).
``--json`` prints exactly one JSON document on stdout; tables go to stdout;
logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from certd import __version__
from certd.app import App
from certd.certs import certs_pem, load_pem_certs
from certd.cli_db import db_group
from certd.config import Config, check_files, check_secret_modes, default_config_path, load_config
from certd.db_faults import inventory_error
from certd.durations import parse_duration
from certd.entry import INVOKED_AT
from certd.errors import CertdError, ConfigError, InventoryError
from certd.inputs import CERT_LIMIT, KEY_LIMIT, InputError, Part, read_bounded
from certd.issuers.base import RevocationReason
from certd.logs import setup_logging
from certd.monitor import check_doc, check_summary, open_inventory
from certd.pipeline import Result
from certd.status import Severity
from certd.views import history_doc, list_doc, plan_doc

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVENTORY = 0, 1, 2, 3
_STATE_STYLE = {
    "served": "green",
    "deployed": "green",
    "published": "green",
    "renewed": "green",
    "imported": "green",
    "skipped": "dim",
    "pending": "yellow",
    "expiring": "yellow",
    "failing": "red",
    "critical": "bold red",
    "expired": "bold red",
    "failed": "red",
    "revoked": "magenta",
    "retired": "dim",
}

class _Console(Console):
    """rich's console, with a closed stdout handled like the rest of the CLI."""

    def on_broken_pipe(self) -> None:
        _stdout_closed()


# Off a terminal, tables are for logs and grep: wide enough not to truncate.
out = _Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _die(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def _styled(value: str | None) -> str:
    if value is None:
        return "-"
    style = _STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value


@contextmanager
def _errors() -> Iterator[None]:
    """Map certd's error tree onto exit codes; never print a traceback for a known error."""
    try:
        yield
    except ConfigError as exc:
        _die(str(exc), EXIT_USAGE)
    except InventoryError as exc:
        _die(str(exc), EXIT_INVENTORY)
    except CertdError as exc:
        _die(str(exc), EXIT_FAILED)


class _State:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._app: App | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            with _errors():
                self._config = load_config(self.config_path)
        return self._config

    def app(self, *, sync: bool = True) -> App:
        if self._app is None:
            with _errors():
                self._app = App.open(self.config, sync=sync)
        return self._app


pass_state = click.make_pass_decorator(_State)


class _Group(click.Group):
    """Turns a closed stdout into a quiet exit before click reports it as a failure."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()
        except SQLAlchemyError as exc:  # a database fault after the inventory opened: one line, exit 3
            config = ctx.obj._config if isinstance(ctx.obj, _State) else None
            _die(str(inventory_error(config.database.url if config else "<unknown>", exc)), EXIT_INVENTORY)


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
    setup_logging(log_level or ("info" if ctx.invoked_subcommand == "run" else "warning"))
    ctx.obj = _State(config_path or default_config_path())
    ctx.call_on_close(lambda: ctx.obj._app.close() if ctx.obj._app else None)


@cli.command("check-config")
@click.option("--strict", is_flag=True, help="Treat referenced files that do not exist yet as errors.")
@pass_state
def check_config(state: _State, strict: bool) -> None:
    """Validate the config; errors name the file, the key and the problem."""
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


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def list_cmd(state: _State, as_json: bool) -> None:
    """Every certificate: name, issuer, names, status, serial, not_after, renew_at, last_error."""
    doc = list_doc(state.app(sync=False).pipeline)
    if as_json:
        _emit_json(doc)
        return
    table = Table("name", "issuer", "names", "status", "serial", "not after", "renew at", "last error")
    for c in doc["certificates"]:
        table.add_row(
            c["name"], c["issuer"] or "-", ", ".join(c["names"]), _styled(c["status"]),
            c["serial"] or "-", c["not_after"] or "-", c["renew_at"] or "-",
            f"[red]{escape(c['last_error'])}[/]" if c["last_error"] else "",
        )
    out.print(table)


@cli.command("plan")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def plan_cmd(state: _State, as_json: bool) -> None:
    """Dry run: what would renew, when and why. Changes nothing."""
    doc = plan_doc(state.app(sync=False).pipeline)
    if as_json:
        _emit_json(doc)
        return
    table = Table("name", "due", "renew at", "reason", "why")
    for p in doc["plan"]:
        table.add_row(p["name"], "[bold yellow]yes[/]" if p["due"] else "no", p["renew_at"], p["reason"], p["message"])
    out.print(table)


def _run_many(
    names: list[str], fn: Callable[[str], Result], workers: int, label: str, show_progress: bool
) -> list[Result]:
    results: dict[str, Result] = {}
    progress = Progress(
        TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
        disable=not show_progress,
    )
    with progress, ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        task = progress.add_task(label, total=len(names))
        futures = {pool.submit(fn, n): n for n in names}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            progress.advance(task)
    return [results[n] for n in names]


def _print_results(results: list[Result], as_json: bool) -> None:
    if as_json:
        _emit_json({"results": [r.as_json() for r in results]})
    else:
        table = Table("name", "outcome", "serial", "state", "detail")
        for r in results:
            detail = f"[red]{escape(f'{r.failed_step}: {r.error}')}[/]" if r.error else (r.reason or "")
            table.add_row(r.name, _styled(r.outcome), r.serial or "-", _styled(r.state), detail)
        out.print(table)
    if not all(r.ok for r in results):
        sys.exit(EXIT_FAILED)


def _select(state: _State, names: tuple[str, ...], all_: bool) -> list[str]:
    config = state.config
    if all_ and names:
        _die("give certificate names or --all, not both", EXIT_USAGE)
    if not all_ and not names:
        _die("give at least one certificate name, or --all", EXIT_USAGE)
    chosen = list(config.certificates) if all_ else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in config.certificates]
    if unknown:
        _die(f"{config.path}: no certificate named {', '.join(unknown)} (known: "
             f"{', '.join(config.certificates) or 'none'})", EXIT_USAGE)
    return chosen


def _duration_option(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command("renew")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every certificate in the config.")
@click.option("--force", is_flag=True, help="Renew even if not due.")
@click.option("--wait", default="5m", show_default=True, help="How long to wait for a renewal another process runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def renew_cmd(state: _State, names: tuple[str, ...], all_: bool, force: bool, wait: str, as_json: bool) -> None:
    """Renew now through the full pipeline (only what is due, unless --force).

    Exit status 0 only if every certificate succeeded or was not due.
    """
    chosen = _select(state, names, all_)
    wait_for = _duration_option(wait)
    app = state.app()
    bulk = len(chosen) > 1 and err.is_terminal and not as_json
    invoked = datetime.fromtimestamp(INVOKED_AT, UTC)
    results = _run_many(chosen, lambda n: app.pipeline.renew(n, force=force, wait=wait_for, requested_at=invoked),
                        app.config.daemon.workers, "renewing", bulk)
    _print_results(results, as_json)


@cli.command("deploy")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every certificate in the config.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def deploy_cmd(state: _State, names: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Re-run deploy and verify for the current version."""
    chosen = _select(state, names, all_)
    app = state.app()
    bulk = len(chosen) > 1 and err.is_terminal and not as_json
    results = _run_many(chosen, app.pipeline.deploy, app.config.daemon.workers, "deploying", bulk)
    _print_results(results, as_json)


@cli.command("revoke")
@click.argument("name")
@click.option("--reason", type=click.Choice([r.value for r in RevocationReason]), default="unspecified",
              show_default=True, help="RFC 5280 reason.")
@click.option("--no-replace", is_flag=True, help="Do not renew right after revoking.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def revoke_cmd(state: _State, name: str, reason: str, no_replace: bool, as_json: bool) -> None:
    """Revoke the current version at its issuer, then renew so a valid certificate is served."""
    _select(state, (name,), False)
    app = state.app()
    results = [app.pipeline.revoke(name, RevocationReason(reason))]
    if results[0].ok and not no_replace:
        results.append(app.pipeline.renew(name, force=True))
    _print_results(results, as_json)


@cli.group("account")
def account_group() -> None:
    """ACME accounts."""


@account_group.command("rollover")
@click.argument("issuer")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def account_rollover(state: _State, issuer: str, as_json: bool) -> None:
    """Replace an ACME issuer's account key (RFC 8555 key change); the account and its certificates stay."""
    config = state.config
    if issuer not in config.issuers or config.issuers[issuer].type != "acme":
        acme = [n for n, c in config.issuers.items() if c.type == "acme"]
        _die(f"{config.path}: no ACME issuer named {issuer} (ACME issuers: {', '.join(acme) or 'none'})", EXIT_USAGE)
    with _errors():
        uri = state.app().pipeline.rollover(issuer)
    if as_json:
        _emit_json({"issuer": issuer, "account": uri, "rolled_over": True})
    else:
        out.print(f"{issuer}: new account key in use for {uri}")


@cli.command("import")
@click.argument("name")
@click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--chain", "chain_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def import_cmd(state: _State, name: str, cert_file: Path, key_file: Path, chain_file: Path | None,
               as_json: bool) -> None:
    """Adopt an existing certificate and key: checked like an issued one, then published.

    The chain is rebuilt by signature from the leaf out of every certificate
    given; any that does not belong is dropped with a warning naming it.
    """
    _select(state, (name,), False)
    files: dict[Part, tuple[str, Path, int]] = {"cert": ("--cert", cert_file, CERT_LIMIT),
                                                "key": ("--key", key_file, KEY_LIMIT)}
    if chain_file is not None:
        files["chain"] = ("--chain", chain_file, CERT_LIMIT)
    data = {part: _read_input(*spec) for part, spec in files.items()}
    app = state.app()
    try:
        result = app.pipeline.import_certificate(name, data["cert"], data["key"], data.get("chain"))
    except InputError as exc:
        option, path, _ = files[exc.part]
        _die(f"{option} {path}: {exc}", EXIT_USAGE)
    except ValueError as exc:
        _die(f"import {name}: {exc}", EXIT_USAGE)
    except CertdError as exc:
        _die(f"import {name}: {exc}", EXIT_FAILED)
    _print_results([result], as_json)


def _read_input(option: str, path: Path, limit: int) -> bytes:
    """One import input, bounded (no FIFOs, devices or huge files); exit 2 naming the option and file."""
    try:
        return read_bounded(path, limit)
    except OSError as exc:
        _die(f"{option} {path}: cannot read: {exc.strerror}", EXIT_USAGE)
    except ValueError as exc:
        _die(f"{option} {path}: {exc}", EXIT_USAGE)


@cli.command("history")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_state
def history_cmd(state: _State, name: str, as_json: bool) -> None:
    """Versions and events of one certificate, newest first."""
    app = state.app(sync=False)
    if app.inventory.certificate(name) is None and name not in app.config.certificates:
        _die(f"no certificate named {name}", EXIT_USAGE)
    doc = history_doc(app.pipeline, name)
    if as_json:
        _emit_json(doc)
        return
    versions = Table("serial", "state", "not before", "not after", "created", "failed step / error", title="versions")
    for v in doc["versions"]:
        versions.add_row(v["serial"], _styled(v["state"]), v["not_before"], v["not_after"], v["created_at"],
                         escape(f"{v['failed_step']}: {v['error']}") if v["error"] else "")
    events = Table("at", "kind", "step", "message", "renewal", title="events")
    for e in doc["events"]:
        style = {"error": "red", "warning": "yellow"}.get(e["level"], "")
        events.add_row(e["at"], f"[{style}]{e['kind']}[/]" if style else e["kind"], e["step"] or "",
                       escape(e["message"]), e["renewal_id"] or "")
    out.print(versions)
    out.print(events)


@cli.command("probe")
@click.argument("endpoint")
@click.option("--sni", help="Server name to send (default: the host part of ENDPOINT).")
@click.option("--ca-bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Verify against this bundle instead of the system store.")
@click.option("--timeout", default="5s", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def probe_cmd(endpoint: str, sni: str | None, ca_bundle: Path | None, timeout: str, as_json: bool) -> None:
    """What HOST:PORT serves: chain, SANs, serial, expiry, TLS version, verification."""
    from certd.probe import probe

    roots = None
    if ca_bundle is not None:
        try:
            roots = tuple(load_pem_certs(ca_bundle.read_bytes()))
        except ValueError as exc:
            _die(f"--ca-bundle {ca_bundle}: {exc}", EXIT_USAGE)
    host = endpoint.rpartition(":")[0].strip("[]")
    result = probe(endpoint, sni or host, roots, timeout=_duration_option(timeout).total_seconds())
    doc = result.as_json()
    if as_json:
        _emit_json(doc)
    else:
        verdict = "[green]verified[/]" if result.verified else f"[red]NOT verified[/]: {result.error}"
        out.print(f"{endpoint} (SNI {doc['sni']}): {doc['tls_version'] or '-'}, {verdict}")
        table = Table("#", "subject", "issuer", "serial", "not after", "SANs")
        for i, c in enumerate(doc["chain"]):
            table.add_row(str(i), c["subject"], c["issuer"], c["serial"], c["not_after"], ", ".join(c["sans"]))
        out.print(table)
    if not result.verified:
        sys.exit(EXIT_FAILED)


@cli.command("bundle")
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), help="Write here, not stdout.")
@pass_state
def bundle_cmd(state: _State, name: str, out_file: Path | None) -> None:
    """The minimal CA bundle a load balancer should pin for NAME's issuer (never the system store)."""
    _select(state, (name,), False)
    app = state.app(sync=False)
    with _errors():
        pem = certs_pem(app.pipeline.trust_bundle(name))
    if out_file is None:
        click.echo(pem.decode(), nl=False)
        return
    tmp = out_file.with_name(out_file.name + ".tmp")
    tmp.write_bytes(pem)
    tmp.replace(out_file)
    err.print(f"wrote {out_file}")


EXIT_UNKNOWN = 3  # Nagios UNKNOWN; the same number as EXIT_INVENTORY, which is one cause of it


class _PluginUsageError(click.UsageError):
    exit_code = EXIT_UNKNOWN


class _PluginCommand(click.Command):
    """A monitoring plugin's usage errors are UNKNOWN (3): click's 2 would read as CRITICAL to Nagios."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _PluginUsageError(exc.format_message(), exc.ctx) from exc


def _unknown(message: str, as_json: bool) -> NoReturn:
    line = "; ".join(" ".join(part.split()) for part in message.splitlines() if part.strip())
    if as_json:
        _emit_json({"status": "unknown", "error": line, "certificates": [], "counts": {}})
    else:
        click.echo(f"CERTD UNKNOWN - {line}")
    sys.exit(EXIT_UNKNOWN)


@cli.command("check", cls=_PluginCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--warn-within", metavar="DURATION", default=None,
              help="Also warn when a certificate expires within DURATION (e.g. 14d), even if nothing failed.")
@pass_state
def check_cmd(state: _State, as_json: bool, warn_within: str | None) -> None:
    """Monitoring for cron and Nagios: one summary line (or --json), exit status by the worst certificate.

    \b
    0 OK        every certificate fine (pending, published, deployed, served)
    1 WARNING   expiring (past its renewal time), failing (time left), revoked
    2 CRITICAL  expired, or failing inside the hard deadline (critical)
    3 UNKNOWN   cannot judge: bad usage, config errors, no or unusable database

    Reads the inventory as it is: renews nothing, contacts no CA, migrates and creates nothing. Statuses
    are those of `certd list`; perfdata after "|" counts certificates by severity.
    """
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
        doc = check_doc(app.pipeline, warn_within=within)
    except Exception as exc:  # a monitor must say UNKNOWN, never crash into exit 1 (WARNING to Nagios)
        _unknown(f"cannot read the inventory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                 as_json)
    finally:
        app.close()
    if as_json:
        _emit_json(doc)
    else:
        click.echo(check_summary(doc))
    sys.exit(Severity(doc["status"]).rank)


@cli.command("run")
@click.option("--agent", is_flag=True,
              help="Only install (publish + deploy) the newest versions on this host; never issue.")
@pass_state
def run_cmd(state: _State, agent: bool) -> None:
    """The daemon: renews on schedule and serves the HTTP API until SIGTERM.

    SIGHUP reloads the config (an invalid one is logged and ignored). With
    --agent (or [daemon] role = "agent") it issues nothing and installs what
    the issuing replicas recorded in the shared inventory.
    """
    from certd.daemon import Daemon

    with _errors():
        daemon = Daemon(state.config_path, state.config, agent=agent)
    sys.exit(daemon.run())


_EXIT_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE


def _stdout_closed() -> NoReturn:
    """The reader went away (``certd list | head``): stop quietly, as a Unix tool does.

    SIGPIPE itself stays ignored (certd writes to sockets, where EPIPE must
    stay an error, not kill the process); stdout is pointed at /dev/null so
    the interpreter's final flush cannot complain either.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    os._exit(_EXIT_PIPE)


cli.add_command(db_group)


def main() -> None:
    """Console entry point."""
    try:
        cli(prog_name="certd")
    except SystemExit:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_closed()
        raise
    except BrokenPipeError:
        _stdout_closed()
