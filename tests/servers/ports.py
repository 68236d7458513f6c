"""Loopback ports for test servers, and the owned subprocess that listens on them.

Ports are picked by binding and closing again, so another process could grab one in between; to keep two
fixtures of *this* session from colliding, every port handed out is remembered and never reused. Under
pytest-xdist each worker picks from its own block of ports below the kernel's ephemeral range, so two workers
never hand out the same port and no client's outgoing connection takes one in between (without xdist, or once
a block is used up, the kernel picks: port 0).
The process helper lives here too because every server module needs the same start / wait / stop logic, and so
does ``default_signals``, which every process a test later signals must start with.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_handed_out: set[int] = set()
_lock = threading.Lock()
_live: dict[int, Callable[[], None]] = {}


def stop_at_exit(owner: object, stop: Callable[[], None]) -> None:
    """Last line of defence when a fixture's teardown never runs (pytest crashes, a test calls os._exit aside)."""
    _live[id(owner)] = stop


def forget(owner: object) -> None:
    _live.pop(id(owner), None)


@atexit.register
def _stop_leftovers() -> None:
    for stop in reversed(list(_live.values())):
        with contextlib.suppress(Exception):
            stop()


def _bindable(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# Blocks for xdist workers: below Linux's default ephemeral range (32768-60999), above the well-known ports.
_BLOCKS_START, _BLOCKS_END = 10000, 32000


def _worker_block() -> range | None:
    """This xdist worker's own ports (``PYTEST_XDIST_WORKER=gw<i>`` of ``PYTEST_XDIST_WORKER_COUNT``), or None."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0):
        return None
    size = (_BLOCKS_END - _BLOCKS_START) // int(count)
    start = _BLOCKS_START + int(worker[2:]) * size
    return range(start, start + size) if size >= 100 else None


_block = _worker_block()
_next_in_block = random.randrange(len(_block)) if _block else 0  # another run of the suite starts elsewhere


def _from_block(udp_too: bool) -> int | None:
    global _next_in_block
    assert _block is not None
    for _ in range(len(_block)):
        port = _block[_next_in_block % len(_block)]
        _next_in_block += 1
        if port not in _handed_out and _bindable(socket.SOCK_STREAM, port) and (
                not udp_too or _bindable(socket.SOCK_DGRAM, port)):
            return port
    return None


def free_port(udp_too: bool = False) -> int:
    """A loopback TCP port (also free for UDP if asked: DNS servers need both on the same number)."""
    with _lock:
        if _block is not None and (port := _from_block(udp_too)) is not None:
            _handed_out.add(port)
            return port
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                port = s.getsockname()[1]
            if port in _handed_out or (udp_too and not _bindable(socket.SOCK_DGRAM, port)):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def free_ports(n: int, udp_too: bool = False) -> list[int]:
    return [free_port(udp_too) for _ in range(n)]


def tcp_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def make_workdir(name: str, owner: str | None = None) -> Path:
    """A fresh directory under /tmp (not pytest's 0700 tree, which a dropped-privilege server cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix=f"certd-{name}-"))
    if owner is not None and os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def default_signals() -> None:
    """``preexec_fn`` for every process a test signals or stops: the default action for the usual signals.

    An ignored signal stays ignored across fork and exec, and neither ``restore_signals`` (SIGPIPE, SIGXFSZ only)
    nor ``start_new_session`` changes that. A suite started under ``nohup`` ignores SIGHUP, and one started in the
    background of a non-interactive shell ignores SIGINT and SIGQUIT: their children would too, so a ``sleep``
    sent SIGHUP would never die, and "the process survived" would prove nothing.
    """
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


class ServerError(RuntimeError):
    """A server did not start or misbehaved; the message carries its log tail."""


class ServerProcess:
    """A subprocess in its own session, logging to a file, stopped by terminate-then-kill of its whole group.

    Its own session keeps Ctrl-C in the terminal from killing it behind the fixture's back, and lets stop()
    reach workers a master forked (nginx, named) even if the master is gone.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=default_signals,
        )
        stop_at_exit(self, self.stop)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fail(self, message: str) -> ServerError:
        return ServerError(f"{self.name}: {message}\n--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ready() until true; fail early if the process died, so the log tail shows the real cause."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with {self.proc.returncode} while waiting for {what}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise self.fail(f"not ready after {timeout:.0f}s: {what}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout)
            # Leftover workers of a master that died first.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self._log.close()
            forget(self)
