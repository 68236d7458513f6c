"""A fault-injecting proxy in front of a real HAProxy runtime socket (a Unix socket of its own).

Each client connection is forwarded to HAProxy as it is, unless a rule matches the command's first line:
then the proxy answers with the rule's canned text (HAProxy's own wording, e.g. its "currently locked"
answer) or, for ``crash``, kills the real HAProxy and closes the connection without an answer, as HAProxy
2.6 was seen to do. Rules apply to the next ``times`` matching commands. HAProxy stays real behind it:
only what the test names is changed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOCKED = "Operations on certificates are currently locked!\n"


@dataclass
class _Rule:
    prefix: str
    answer: str | None  # None: kill HAProxy, answer nothing
    times: int
    end: float | None = None  # monotonic: the rule ends then, whatever ``times`` is left


class RuntimeProxy:
    def __init__(self, upstream: Path, path: Path, *, haproxy_pid: int | None = None) -> None:
        self.upstream = upstream
        self.path = path
        self.haproxy_pid = haproxy_pid
        self.commands: list[str] = []  # first line of every command seen, in order
        self.crashed_at: float | None = None  # when a crash rule killed HAProxy (monotonic)
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._closed = False
        self._listen()

    def _listen(self) -> None:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(16)
        self._thread = threading.Thread(target=self._serve, name="runtime-proxy", daemon=True)
        self._thread.start()

    def answer_until(self, prefix: str, answer: str, end: float) -> None:
        """Every matching command gets ``answer`` until ``end`` (monotonic), e.g. HAProxy's locked answer."""
        with self._lock:
            self._rules.append(_Rule(prefix, answer, 1 << 30, end))

    def down_until(self, end: float) -> None:
        """No runtime socket until ``end``: HAProxy stopped (certd finds no socket: the server is down)."""
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

        def back() -> None:
            if not self._closed:
                self._listen()

        timer = threading.Timer(max(0.0, end - time.monotonic()), back)
        timer.daemon = True
        timer.start()

    def answer_next(self, prefix: str, answer: str, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(prefix, answer, times))

    def crash_on(self, prefix: str) -> None:
        with self._lock:
            self._rules.append(_Rule(prefix, None, 1))

    def _match(self, first_line: str) -> _Rule | None:
        with self._lock:
            now = time.monotonic()
            for rule in self._rules:
                if rule.times > 0 and (rule.end is None or now < rule.end) and first_line.startswith(rule.prefix):
                    rule.times -= 1
                    return rule
        return None

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_command(self, conn: socket.socket) -> bytes:
        """Everything the client sends before it waits for the answer (a command, or one with a payload)."""
        data = b""
        conn.settimeout(5)
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        if b"<<" in data.split(b"\n", 1)[0]:  # a payload, ended by an empty line
            while not data.endswith(b"\n\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                command = self._read_command(conn)
            except OSError:
                return
            first = command.split(b"\n", 1)[0].decode("ascii", "replace")
            self.commands.append(first)
            rule = self._match(first)
            if rule is not None:
                if rule.answer is None:
                    self.crashed_at = time.monotonic()
                    if self.haproxy_pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.haproxy_pid, signal.SIGKILL)
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(rule.answer.encode())
                return
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                    up.settimeout(10)
                    up.connect(str(self.upstream))
                    up.sendall(command)
                    while chunk := up.recv(65536):
                        conn.sendall(chunk)
            except OSError:
                return  # HAProxy is gone: the client sees the connection close with no answer

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
