"""Run the ``certd`` command from tests: in this process by default, as a real process when that is the point.

A real ``python -m certd`` costs 1-2 s of interpreter start-up and imports; click's ``CliRunner`` runs the same
command group (``certd.cli.main:cli``) in a few milliseconds. ``process=True`` keeps the real binary for what only
a process shows: the console entry point (``certd.entry:main``: output errors, closed pipes, the invocation
time), signals, kill -9, stdin, file modes under ``setpriv`` and concurrent processes.

Both ways return a ``subprocess.CompletedProcess[str]`` with the exit code, stdout and stderr. In-process runs are
isolated so that nothing leaks from one invocation into the next or into the test: they hold a lock (``sys.stdout``
and ``os.environ`` are process-wide), ``env`` replaces the environment as it would for a child process, ``cwd``
and ``umask`` are set and restored, the root logger's handlers and levels (``setup_logging`` replaces them) are put
back, the App the command opened is closed by the group (``ctx.call_on_close``). What the interpreter of a real
process would print on stderr is printed there too, so "one line on stderr" and ``"Traceback" not in stderr`` can
still fail: an unexpected exception's traceback, and warnings under Python's default filters (pytest would
otherwise record them out of sight). ``certd run`` is refused in-process: it installs signal handlers and blocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "certd", "certd_argv"]

_LOCK = threading.RLock()
_NOISY = ("urllib3", "alembic", "apscheduler", "hvac", "acme")  # the loggers setup_logging sets levels on


def certd_argv(*args: str, config: Path | None = None) -> list[str]:
    """The real command line (``python -m certd [-c CONFIG] ARGS``), for tests that start it themselves."""
    return [sys.executable, "-m", "certd", *(["-c", str(config)] if config is not None else []), *args]


def certd(*args: str, config: Path | None = None, check: bool = False, timeout: float = 120,
          process: bool = False, env: Mapping[str, str] | None = None, cwd: Path = REPO,
          input: str | None = None, umask: int | None = None,
          prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``certd [-c CONFIG] ARGS``; ``process=True`` runs the real binary (``prefix`` goes before it, e.g. setpriv).

    ``timeout`` ends either kind with ``subprocess.TimeoutExpired`` (in-process: by SIGALRM, main thread only).
    """
    if process:
        proc = subprocess.run([*prefix, *certd_argv(*args, config=config)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=None if env is None else dict(env), input=input,
                              umask=-1 if umask is None else umask)
    else:
        if prefix:
            raise ValueError("prefix needs a real process: pass process=True")
        proc = _in_process([*(["-c", str(config)] if config is not None else []), *args], env=env, cwd=cwd,
                           input=input, umask=umask, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"certd {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def _in_process(argv: list[str], *, env: Mapping[str, str] | None, cwd: Path, input: str | None,
                umask: int | None, timeout: float) -> subprocess.CompletedProcess[str]:
    from certd.cli.main import cli

    if _subcommand(argv) == "run":
        raise ValueError("certd run installs signal handlers and blocks until signalled: pass process=True")
    # A child process gets exactly `env`; CliRunner only overlays, so unset everything else for the call.
    overlay: dict[str, str | None] | None = None
    if env is not None:
        overlay = {key: None for key in os.environ if key not in env}
        overlay.update(env)
    with _LOCK, _logging_restored(), _interpreter_warnings(), contextlib.chdir(cwd), _umask(umask), \
            _deadline(["certd", *argv], timeout):
        result = CliRunner().invoke(cli, argv, input=input, env=overlay, prog_name="certd", obj=None)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # what the interpreter would print
    return subprocess.CompletedProcess(["certd", *argv], result.exit_code, result.stdout, stderr)


def _subcommand(argv: list[str]) -> str | None:
    """The first word that is not an option of the group (``-c PATH``, ``--log-level LEVEL``)."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config", "--log-level"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


@contextlib.contextmanager
def _interpreter_warnings() -> Iterator[None]:
    """Warnings as ``python -m certd`` shows them: Python's default filters, printed on the command's stderr."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """``setup_logging`` points the root logger at the command's stderr; give the test its own logging back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in _NOISY}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


class _TimedOut(BaseException):
    """Raised by the alarm; a BaseException, so neither certd's handlers nor CliRunner swallow it."""


@contextlib.contextmanager
def _deadline(cmd: list[str], timeout: float) -> Iterator[None]:
    """A command that blocks (a FIFO nobody writes to, a lock never released) fails the test, as with a process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    except _TimedOut:
        raise subprocess.TimeoutExpired(cmd, timeout) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _umask(mask: int | None) -> Iterator[None]:
    if mask is None:
        yield
        return
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
