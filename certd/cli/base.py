"""What every ``certd`` command shares: consoles, exit codes, the lazily opened config and inventory.

Exit codes scripts can trust: 0 everything asked for succeeded (a renewal
that was not due counts as success), 1 at least one operation failed,
2 bad usage or configuration, 3 the inventory (database) is unusable.
``certd check`` alone speaks the Nagios plugin convention instead (see
``cli_inspect``). ``--json`` prints exactly one JSON document on stdout;
tables go to stdout; logs go to stderr. A closed stdout (``certd list |
head``) ends the command quietly with the shell's SIGPIPE status.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from certd.core.durations import parse_duration
from certd.engine.result import Result
from certd.errors import CertdError, ConfigError, InventoryError
from certd.inputs import read_bounded

if TYPE_CHECKING:  # the config and the engine are imported when a command needs them: `--help` stays fast
    from certd.config.model import Config
    from certd.engine.app import App

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVENTORY",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "PluginCommand",
    "State",
    "die",
    "duration_option",
    "emit_json",
    "err",
    "exit_on_errors",
    "out",
    "output_failed",
    "pass_state",
    "plugin_unknown",
    "print_results",
    "read_input",
    "run_many",
    "select",
    "stdout_closed",
    "styled",
]

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
        stdout_closed()


# Off a terminal, tables are for logs and grep: wide enough not to truncate.
out = _Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def die(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def styled(value: str | None) -> str:
    if value is None:
        return "-"
    style = _STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value


@contextmanager
def exit_on_errors() -> Iterator[None]:
    """Map certd's error tree onto exit codes; never print a traceback for a known error."""
    try:
        yield
    except ConfigError as exc:
        die(str(exc), EXIT_USAGE)
    except InventoryError as exc:
        die(str(exc), EXIT_INVENTORY)
    except CertdError as exc:
        die(str(exc), EXIT_FAILED)


class State:
    """The config and the inventory, opened on first use (``probe`` needs neither)."""

    def __init__(self, config_path: Path, invoked_at: datetime) -> None:
        self.config_path = config_path
        self.invoked_at = invoked_at  # a renewal of the same certificate finished after this answers the request
        self._config: Config | None = None
        self._app: App | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from certd.config.load import load_config

            with exit_on_errors():
                self._config = load_config(self.config_path)
        return self._config

    def app(self, *, sync: bool = True) -> App:
        if self._app is None:
            from certd.engine.app import App

            with exit_on_errors():
                self._app = App.open(self.config, sync=sync)
        return self._app


pass_state = click.make_pass_decorator(State)


_EXIT_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE


def stdout_closed() -> NoReturn:
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



def output_failed(exc: OSError) -> NoReturn:
    """stdout could not be written (``certd list > /dev/full``): one line on stderr, exit 1, no traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.stderr.write(f"error: cannot write the output: {exc.strerror or exc}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(EXIT_FAILED)


def run_many(
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


def print_results(results: list[Result], as_json: bool) -> None:
    if as_json:
        emit_json({"results": [r.as_json() for r in results]})
    else:
        table = Table("name", "outcome", "serial", "state", "detail")
        for r in results:
            detail = f"[red]{escape(f'{r.failed_step}: {r.error}')}[/]" if r.error else (r.reason or "")
            table.add_row(r.name, styled(r.outcome), r.serial or "-", styled(r.state), detail)
        out.print(table)
    if not all(r.ok for r in results):
        sys.exit(EXIT_FAILED)


def select(state: State, names: tuple[str, ...], all_: bool) -> list[str]:
    config = state.config
    if all_ and names:
        die("give certificate names or --all, not both", EXIT_USAGE)
    if not all_ and not names:
        die("give at least one certificate name, or --all", EXIT_USAGE)
    chosen = list(config.certificates) if all_ else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in config.certificates]
    if unknown:
        die(f"{config.path}: no certificate named {', '.join(unknown)} (known: "
             f"{', '.join(config.certificates) or 'none'})", EXIT_USAGE)
    return chosen


def duration_option(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def read_input(option: str, path: Path, limit: int) -> bytes:
    """One import input, bounded (no FIFOs, devices or huge files); exit 2 naming the option and file."""
    try:
        return read_bounded(path, limit)
    except OSError as exc:
        die(f"{option} {path}: cannot read: {exc.strerror}", EXIT_USAGE)
    except ValueError as exc:
        die(f"{option} {path}: {exc}", EXIT_USAGE)


EXIT_UNKNOWN = 3  # Nagios UNKNOWN; the same number as EXIT_INVENTORY, which is one cause of it


class _PluginUsageError(click.UsageError):
    exit_code = EXIT_UNKNOWN


class PluginCommand(click.Command):
    """A monitoring plugin's usage errors are UNKNOWN (3): click's 2 would read as CRITICAL to Nagios."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _PluginUsageError(exc.format_message(), exc.ctx) from exc


def plugin_unknown(label: str, message: str, as_json: bool, empty: dict[str, Any]) -> NoReturn:
    """End a plugin command with UNKNOWN: one line (``<label> UNKNOWN - why``) or a JSON document."""
    line = "; ".join(" ".join(part.split()) for part in message.splitlines() if part.strip())
    if as_json:
        emit_json({"status": "unknown", "error": line, **empty, "counts": {}})
    else:
        click.echo(f"{label} UNKNOWN - {line}")
    sys.exit(EXIT_UNKNOWN)
