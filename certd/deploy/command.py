"""``command`` target: run a program (no shell) after the switch.

The program learns what changed from its environment (``CERTD_NAME``,
``CERTD_SERIAL``, ``CERTD_OUTPUT_DIR`` and the stable file paths), never
from its command line, so nothing secret shows in ``ps``.

A hook is somebody else's code running with certd's privileges, and what it
prints ends up in ``last_error`` (shown by the unauthenticated API), the
event log and the logs. So:

- its environment is built, not inherited: the ``CERTD_*`` variables,
  ``PATH``, ``LANG``/``LC_ALL``/``TZ``, the config's ``env`` and the names
  listed in ``pass_env`` — never certd's own environment, which may hold
  credentials the hook has no business seeing;
- it runs in a session (and process group) of its own, and at ``timeout``
  the whole group gets SIGTERM, then SIGKILL, so a hook that forked leaves
  nothing behind (a child that calls ``setsid`` itself has left the group on
  purpose and is not found: run such hooks as a systemd unit); a hook that
  exits on time is done, and whatever it started in the background is its
  own business;
- its output is read as bytes, at most the last ``_KEEP`` bytes of each
  stream are kept, decoded leniently (a hook printing Latin-1 still
  succeeds), and every value that came from ``env``/``pass_env`` is
  replaced by ``***`` before anything is kept (and the recorder replaces every
  secret certd holds, ``certd/scrub.py``); the full tail goes to the debug log
  only, and the error quotes at most one short line of stderr, after
  ``scrub.OUTPUT_MARK``, so reads without credentials never show it;
- exit 0 is not enough: the published files must still be there and hold
  what was published (a hook that deleted or rewrote them broke the server
  it was meant to reload).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from certd.config.model import CommandDeployConfig
from certd.deploy.base import DeployContext
from certd.errors import DeployError
from certd.scrub import OUTPUT_MARK

__all__ = ["CommandTarget"]

log = logging.getLogger("certd.deploy.command")

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INHERITED = ("LANG", "LC_ALL", "TZ")
_KEEP = 4096  # bytes of each stream kept for the debug log
_LINE = 200  # characters of one output line in an event or error
_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a hook's process group
_DRAIN = 0.5  # seconds to collect trailing output once the program itself has exited
_REDACTED = "***"


def _hook_environment(
    ctx: DeployContext, config: CommandDeployConfig, parent: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The hook's whole environment, and the values to redact from its output (from ``env`` and ``pass_env``)."""
    env = {"PATH": parent.get("PATH") or _DEFAULT_PATH}
    env.update({k: parent[k] for k in _INHERITED if k in parent})
    passed = {k: parent[k] for k in config.pass_env if k in parent}
    env.update(passed)
    env.update(config.env)
    env.update(
        {
            "CERTD_NAME": ctx.certificate,
            "CERTD_SERIAL": ctx.serial,
            "CERTD_NAMES": " ".join(ctx.names),
            "CERTD_OUTPUT_DIR": str(ctx.paths.output_dir),
            "CERTD_FULLCHAIN": str(ctx.paths.fullchain),
            "CERTD_PRIVKEY": str(ctx.paths.privkey),
            "CERTD_COMBINED": str(ctx.paths.combined),
        }
    )
    secrets = {v for v in (*passed.values(), *config.env.values()) if v}
    return env, tuple(sorted(secrets, key=len, reverse=True))


class _Tail:
    """The last ``limit`` bytes written to one stream."""

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        self.cut = False

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._limit:
            del self._buf[: len(self._buf) - self._limit]
            self.cut = True

    def text(self, secrets: tuple[str, ...]) -> str:
        buf = bytes(self._buf)
        if self.cut:  # the cut may fall inside a UTF-8 sequence: start at the next whole character
            buf = buf.lstrip(bytes(range(0x80, 0xC0)))
        text = buf.decode("utf-8", errors="replace")
        for secret in secrets:
            text = text.replace(secret, _REDACTED)
        if self.cut:  # ... or inside a secret, whose tail would survive the replace above
            for secret in secrets:
                k = next((k for k in range(len(secret) - 1, 0, -1) if text.startswith(secret[-k:])), 0)
                if k:
                    text = _REDACTED + text[k:]
            text = "…" + text
        return text


def _one_line(text: str) -> str:
    """The last non-empty line, printable and at most ``_LINE`` characters: safe for ``last_error``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = "".join(c if c.isprintable() else "?" for c in lines[-1])
    return line if len(line) <= _LINE else line[:_LINE] + "…"


@dataclass(frozen=True)
class _Outcome:
    returncode: int | None  # None: timed out, the group was killed
    stdout: _Tail
    stderr: _Tail


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the program exited? Without reaping it: an unreaped leader keeps its group id from being reused."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped behind our back: certainly exited
        return True


def _pump(sel: selectors.BaseSelector, tails: Mapping[int, _Tail], until: float) -> None:
    """Read whatever the streams have until ``until``, or until both are closed."""
    while sel.get_map() and (left := until - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=min(left, 0.1)):
            data = os.read(key.fd, 65536)
            if data:
                tails[key.fd].add(data)
            else:
                sel.unregister(key.fileobj)


def _run(argv: list[str], env: dict[str, str], timeout: float) -> _Outcome:
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    streams: list[IO[bytes]] = [s for s in (proc.stdout, proc.stderr) if s is not None]
    out, err = _Tail(_KEEP), _Tail(_KEEP)
    tails = dict(zip((s.fileno() for s in streams), (out, err), strict=True))
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for s in streams:
            sel.register(s, selectors.EVENT_READ)
        try:
            timed_out = not _wait(proc, sel, tails, deadline)
        except BaseException:  # interrupted ourselves: leave no hook running
            _kill_group(proc, sel, tails, grace=0)
            proc.wait()
            raise
        else:
            if timed_out:
                _kill_group(proc, sel, tails, grace=_GRACE)
        finally:
            for s in streams:
                s.close()
    returncode = proc.wait()
    return _Outcome(None if timed_out else returncode, out, err)


def _wait(proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, tails: Mapping[int, _Tail],
          deadline: float) -> bool:
    """Collect output until the program exits (True) or ``deadline`` passes (False)."""
    while not _exited(proc):
        now = time.monotonic()
        if now >= deadline:
            return False
        if sel.get_map():
            _pump(sel, tails, min(deadline, now + 0.1))
        else:
            time.sleep(min(0.05, deadline - now))
    # Trailing output; a background process that keeps the pipes open does not hold us up.
    _pump(sel, tails, min(deadline, time.monotonic() + _DRAIN))
    return True


def _kill_group(
    proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, tails: Mapping[int, _Tail], *, grace: float
) -> None:
    """SIGTERM the hook's whole group, SIGKILL whatever is left after ``grace`` seconds.

    The leader is not reaped before the SIGKILL, so its pid (the group id)
    cannot have been given to an unrelated process in the meantime.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    until = time.monotonic() + grace
    while time.monotonic() < until and not (_exited(proc) and not sel.get_map()):
        if sel.get_map():
            _pump(sel, tails, min(until, time.monotonic() + 0.1))
        else:
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class CommandTarget:
    """Run ``argv`` with a built environment, in its own process group, with a timeout."""

    def __init__(self, name: str, config: CommandDeployConfig) -> None:
        self.name = name
        self._config = config

    def deploy(self, ctx: DeployContext) -> str:
        env, own = _hook_environment(ctx, self._config, os.environ)
        secrets = tuple(sorted({*own, *ctx.secrets}, key=len, reverse=True))
        argv = self._config.argv
        cmd = _one_line(argv[0])
        timeout = self._config.timeout.total_seconds()
        try:
            outcome = _run(argv, env, timeout)
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: command {cmd} not found", retryable=False) from exc
        except PermissionError as exc:
            raise DeployError(f"deploy {self.name}: command {cmd} is not executable", retryable=False) from exc
        except OSError as exc:
            raise DeployError(f"deploy {self.name}: command {cmd} failed to run: {exc.strerror}") from exc
        stdout, stderr = outcome.stdout.text(secrets), outcome.stderr.text(secrets)
        log.debug("deploy %s: command %s returned %s\nstdout: %s\nstderr: %s", self.name, cmd,
                  "timeout" if outcome.returncode is None else outcome.returncode, stdout, stderr)
        said = _one_line(stderr)
        detail = f"{OUTPUT_MARK}{said}" if said else ""  # the mark keeps it out of unauthenticated reads
        if outcome.returncode is None:
            raise DeployError(
                f"deploy {self.name}: command {cmd} timed out after {timeout:g}s (its process group was killed)"
                + detail
            )
        if outcome.returncode < 0:
            raise DeployError(f"deploy {self.name}: command {cmd} was killed by {_signal_name(-outcome.returncode)}"
                              + detail)
        if outcome.returncode != 0:
            raise DeployError(f"deploy {self.name}: command {cmd} exited {outcome.returncode}" + detail)
        said = _one_line(stdout) or said
        return f"command {cmd} exited 0" + (f"{OUTPUT_MARK}{said}" if said else "")


def build(name: str, config: CommandDeployConfig) -> CommandTarget:
    return CommandTarget(name, config)
